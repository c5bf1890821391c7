"""OWLv2 open-vocabulary detector on ``transformers`` (``Owlv2ForObjectDetection``): one text query per class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torchvision.ops import batched_nms

from grounded.adapters.common import PromptedDetector
from grounded.core.boxes import clip_xyxy
from grounded.core.checks import at_least, batches, in_unit_interval, optional_in_unit_interval
from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt, PromptError
from grounded.engine import register_adapter
from grounded.runtime.device import autocast

__all__ = ["OWLv2"]


@register_adapter("owlv2")
class OWLv2(PromptedDetector):
    """Text → boxes with OWLv2: each prompt class is one query, so a detection's class is its query's index.

    The processor pads every image to a square and resizes it to the model's size, so all images batch
    together; ``post_process_grounded_object_detection`` maps the boxes back to the original image.

    Args:
        model: hub id or local transformers-format folder.
        box_threshold: keep boxes whose best class score exceeds this.
        top_k: at most this many detections per image (after NMS).
        nms_threshold: IoU for class-aware NMS; ``None`` disables it.
        batch_size, device, precision: as for Grounding DINO.
    """

    model_types: ClassVar[tuple[str, ...]] = ("owlv2",)
    model_class: ClassVar[str] = "AutoModelForZeroShotObjectDetection"

    def __init__(
        self,
        model: str = "google/owlv2-base-patch16-ensemble",
        box_threshold: float = 0.1,
        top_k: int = 100,
        nms_threshold: float | None = 0.3,
        batch_size: int = 4,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        in_unit_interval(box_threshold=box_threshold)
        optional_in_unit_interval(nms_threshold=nms_threshold)
        at_least(1, top_k=top_k, batch_size=batch_size)
        super().__init__()

    def _check_lengths(self, classes: Sequence[str]) -> None:
        """OWLv2's text encoder reads 16 tokens: refuse longer queries instead of truncating them silently."""
        limit = int(self._model.config.text_config.max_position_embeddings)
        for name in classes:
            n = len(self._processor.tokenizer(name)["input_ids"])
            if n > limit:
                raise PromptError(f"class {name!r} is {n} tokens; OWLv2 reads at most {limit} per class")

    @torch.inference_mode()
    def detect(self, images: Sequence[LoadedImage], prompt: Prompt | str | Sequence[str]) -> list[Detections]:
        """Detect the prompt's classes in each image (all images share the prompt)."""
        self.warm_up()
        prompt = Prompt.of(prompt)
        self._check_lengths(prompt.classes)
        results: list[Detections] = []
        for batch in batches(images, self.batch_size):
            inputs = self._processor(
                text=[list(prompt.classes)] * len(batch),
                images=[im.pixels for im in batch],
                return_tensors="pt",
                images_kwargs={"input_data_format": "channels_last"},
            ).to(self.device)
            with autocast(self.device, self.precision):
                outputs = self._model(**inputs)
            outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
            found = self._processor.post_process_grounded_object_detection(
                outputs, threshold=self.box_threshold, target_sizes=[im.size for im in batch]
            )
            results.extend(self._finish(im, prompt, r) for im, r in zip(batch, found, strict=True))
        return results

    def _finish(self, image: LoadedImage, prompt: Prompt, found: dict[str, torch.Tensor]) -> Detections:
        boxes = clip_xyxy(found["boxes"], image.size)
        scores, labels = found["scores"], found["labels"].long()
        if self.nms_threshold is not None and len(scores):
            order = batched_nms(boxes, scores, labels, self.nms_threshold)
        else:
            order = torch.argsort(scores, descending=True, stable=True)
        order = order[: self.top_k]
        return Detections(
            boxes=boxes[order],
            scores=scores[order],
            class_ids=labels[order],
            classes=prompt.classes,
            phrases=tuple(prompt.classes[i] for i in labels[order].tolist()),  # a query matches as a whole
            image_size=image.size,
        )
