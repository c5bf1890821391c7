"""SAM 3 on ``transformers`` (``Sam3Model``): text → instance masks in one stage, behind the detector ports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from grounded.adapters.common import PromptedDetector
from grounded.core.boxes import clip_xyxy
from grounded.core.checks import at_least, in_unit_interval
from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt, PromptError
from grounded.engine import register_adapter
from grounded.runtime.device import autocast

__all__ = ["SAM3"]


def _expand(value: Any, n: int) -> Any:
    """Repeat batch-1 tensors (nested in tuples/lists) along the batch dimension, without copying."""
    if isinstance(value, torch.Tensor):
        return value.expand(n, *value.shape[1:])
    if isinstance(value, (tuple, list)):
        return type(value)(_expand(v, n) for v in value)
    return value


@register_adapter("sam3")
class SAM3(PromptedDetector):
    """Text → boxes and masks with SAM 3 (promptable concept segmentation): a detector and segmenter in one.

    Each image is encoded once; the prompt's classes are decoded together against that encoding (one
    concept per batch row). Results go through ``Sam3Processor.post_process_instance_segmentation``; the
    detections carry masks already, so a pipeline can use SAM 3 alone in place of detector + segmenter.

    Args:
        model: hub id or local transformers-format folder.
        box_threshold: keep instances whose score (query × presence) exceeds this.
        mask_threshold: probability threshold for binarising masks.
        top_k: at most this many detections per image, over all classes.
        batch_size: classes decoded per pass.
        device, precision: as for the other adapters.
    """

    #: ``sam3_video``: the released ``facebook/sam3`` folder holds the video model, whose detector transformers'
    #: ``Sam3Model`` loads (its tracker's weights are left unused)
    model_types: ClassVar[tuple[str, ...]] = ("sam3", "sam3_video")
    model_class: ClassVar[str] = "Sam3Model"
    what: ClassVar[str] = "SAM 3 model"

    def __init__(
        self,
        model: str = "facebook/sam3",
        box_threshold: float = 0.3,
        mask_threshold: float = 0.5,
        top_k: int = 100,
        batch_size: int = 8,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        in_unit_interval(box_threshold=box_threshold, mask_threshold=mask_threshold)
        at_least(1, top_k=top_k, batch_size=batch_size)
        super().__init__()

    def load(self) -> tuple[Any, Any]:
        """As for the others; a video folder's ``Sam3VideoProcessor`` gives its image processor and tokenizer
        to the image ``Sam3Processor`` (the same preprocessing and post-processing)."""
        processor, model = super().load()
        if type(processor).__name__ == "Sam3VideoProcessor":
            from transformers import Sam3Processor

            processor = Sam3Processor(
                image_processor=processor.image_processor,
                tokenizer=processor.tokenizer,
                target_size=getattr(processor, "target_size", None),
            )
        return processor, model

    def _tokenize(self, classes: Sequence[str]) -> dict[str, torch.Tensor]:
        limit = int(self._model.config.text_config.max_position_embeddings)
        for name in classes:
            n = len(self._processor.tokenizer(name)["input_ids"])
            if n > limit:
                raise PromptError(f"class {name!r} is {n} tokens; SAM 3 reads at most {limit} per class")
        text = self._processor(text=list(classes), return_tensors="pt")
        return {k: text[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.inference_mode()
    def detect(self, images: Sequence[LoadedImage], prompt: Prompt | str | Sequence[str]) -> list[Detections]:
        """Boxes and masks of the prompt's classes in each image."""
        self.warm_up()
        prompt = Prompt.of(prompt)
        text = self._tokenize(prompt.classes)
        return [self._detect_one(image, prompt, text) for image in images]

    def _detect_one(self, image: LoadedImage, prompt: Prompt, text: dict[str, torch.Tensor]) -> Detections:
        pixels = self._processor(images=[image.pixels], return_tensors="pt")["pixel_values"].to(self.device)
        with autocast(self.device, self.precision):
            vision = self._model.get_vision_features(pixel_values=pixels)
        boxes, scores, class_ids, masks = [], [], [], []
        for start in range(0, len(prompt.classes), self.batch_size):
            ids = list(range(start, min(start + self.batch_size, len(prompt.classes))))
            expanded = type(vision)(**{k: _expand(v, len(ids)) for k, v in vision.items()})
            with autocast(self.device, self.precision):
                out = self._model(
                    vision_embeds=expanded,
                    input_ids=text["input_ids"][ids],
                    attention_mask=text["attention_mask"][ids],
                )
            for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
                if getattr(out, name, None) is not None:
                    setattr(out, name, getattr(out, name).float())
            found = self._processor.post_process_instance_segmentation(
                out,
                threshold=self.box_threshold,
                mask_threshold=self.mask_threshold,
                target_sizes=[image.size] * len(ids),
            )
            for class_id, result in zip(ids, found, strict=True):
                boxes.append(result["boxes"])
                scores.append(result["scores"])
                masks.append(result["masks"].bool())
                class_ids.append(torch.full((len(result["scores"]),), class_id, dtype=torch.int64))
        all_scores = torch.cat(scores)
        order = torch.argsort(all_scores, descending=True, stable=True)[: self.top_k]
        ids_kept = torch.cat(class_ids).to(all_scores.device)[order]
        return Detections(
            boxes=clip_xyxy(torch.cat(boxes)[order].float(), image.size),
            scores=all_scores[order],
            class_ids=ids_kept,
            classes=prompt.classes,
            phrases=tuple(prompt.classes[i] for i in ids_kept.tolist()),
            image_size=image.size,
            masks=torch.cat(masks)[order].reshape(-1, *image.size),
        )
