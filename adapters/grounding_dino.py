"""Grounding DINO open-set detector on ``transformers`` (``GroundingDinoForObjectDetection``)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torchvision.ops import batched_nms

from grounded.adapters.common import PromptedDetector
from grounded.core.boxes import clip_xyxy, cxcywh_to_xyxy, normalized_to_pixels
from grounded.core.checks import at_least, batches, in_unit_interval, one_of, optional_in_unit_interval
from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.phrases import Reduction, class_scores, matched_phrase, positive_map
from grounded.core.prompts import Caption, Prompt, PromptError, build_caption, chunk_classes
from grounded.engine import register_adapter
from grounded.runtime.device import autocast
from grounded.runtime.fast_kernels import ContentCache, accelerate_grounding_dino, compile_modules

__all__ = ["GroundingDINO", "MMGroundingDINO"]


@dataclass(frozen=True)
class _EncodedCaption:
    caption: Caption
    input_ids: torch.Tensor  # (1, T)
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    offsets: tuple[tuple[int, int], ...]
    pos_map: torch.Tensor  # (C_chunk, T) bool


@dataclass
class _Candidates:
    """Per-image candidate detections from every caption chunk, before NMS and top-k."""

    boxes: list[torch.Tensor]
    scores: list[torch.Tensor]
    class_ids: list[torch.Tensor]
    chunk_ids: list[torch.Tensor]
    token_probs: list[torch.Tensor]


@register_adapter("grounding_dino")
class GroundingDINO(PromptedDetector):
    """Text → boxes with Grounding DINO.

    Each detection's class comes from the positive map of the prompt's classes (the tokens inside each class's
    span of the caption). Prompts over the text encoder's limit are split into several captions whose results
    are merged before class-aware NMS and top-k.

    Args:
        model: hub id or local transformers-format folder.
        box_threshold: keep a (query, class) pair when its class score exceeds this.
        text_threshold: tokens above this delimit the matched phrase inside the class.
        top_k: at most this many detections per image (after NMS).
        nms_threshold: IoU for class-aware NMS; ``None`` disables NMS.
        multi_label: score every (query, class) pair instead of each query's best class only.
        class_reduction: ``"max"`` or ``"mean"`` over a class's tokens.
        clip_boxes: clip boxes to the image. ``False`` keeps the model's boxes as predicted (they may reach a
            little past the border), as Grounding DINO's own evaluation post-processing does.
        image_backend: transformers' image-processor backend: ``None`` (its default, torchvision), ``"pil"``
            (resizes exactly as the official ``T.RandomResize`` on a PIL image does) or ``"torchvision"``.
        batch_size: images per forward pass.
        pad_batches: batch images of different sizes together, padded to a common size (more throughput on
            mixed sizes; padding changes the features slightly). By default only images of the same
            preprocessed size share a batch, so batched results equal one-by-one results.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast), or ``"auto"`` (see
            :func:`grounded.runtime.device.resolve_precision`).
        fast_kernels: run deformable attention as one gather-and-sum (:mod:`grounded.runtime.fast_kernels`) instead of
            transformers' ``grid_sample`` loop; same results up to float rounding.
        cache_size: image-backbone outputs kept (about 40 MB per image), keyed by the preprocessed pixels:
            a new prompt on a cached image skips the Swin backbone; text-encoder outputs of 8 times as many
            prompts are kept too (a cached prompt skips BERT). 0 disables both.
        compile: ``torch.compile`` the encoder and decoder (the first calls per input size are slow).
    """

    model_types: ClassVar[tuple[str, ...]] = ("grounding-dino", "mm-grounding-dino")
    model_class: ClassVar[str] = "AutoModelForZeroShotObjectDetection"
    class_reduction: Reduction

    def __init__(
        self,
        model: str = "IDEA-Research/grounding-dino-tiny",
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        top_k: int = 100,
        nms_threshold: float | None = 0.8,
        multi_label: bool = False,
        class_reduction: Reduction = "max",
        clip_boxes: bool = True,
        image_backend: str | None = None,
        batch_size: int = 4,
        pad_batches: bool = False,
        device: str = "auto",
        precision: str = "fp32",
        fast_kernels: bool = True,
        cache_size: int = 2,
        compile: bool = False,
    ) -> None:
        at_least(0, cache_size=cache_size)
        in_unit_interval(box_threshold=box_threshold, text_threshold=text_threshold)
        optional_in_unit_interval(nms_threshold=nms_threshold)
        at_least(1, top_k=top_k, batch_size=batch_size)
        one_of("class_reduction", class_reduction, ("max", "mean"))
        one_of("image_backend", image_backend, (None, "pil", "torchvision"))
        super().__init__()
        self._captions: dict[tuple[str, ...], list[_EncodedCaption]] = {}

    # ------------------------------------------------------------------ loading
    def processor_options(self) -> dict[str, Any] | None:
        return {"backend": self.image_backend} if self.image_backend else None

    def prepare(self) -> None:
        self._model = accelerate_grounding_dino(self._model, self.fast_kernels, self.cache_size)
        if self.compile:
            compile_modules(self._model.model.encoder, self._model.model.decoder)

    def clear_cache(self) -> None:
        """Forget cached backbone and text-encoder outputs."""
        for module in (self._model.model.backbone, self._model.model.text_backbone) if self._model else ():
            if isinstance(module, ContentCache):
                module.clear()

    @property
    def max_text_len(self) -> int:
        self.warm_up()
        return int(self._model.config.max_text_len)

    # ------------------------------------------------------------------ text
    def encode_prompt(self, prompt: Prompt) -> list[_EncodedCaption]:
        """Tokenise the prompt into one or more captions that fit the text encoder (cached per prompt)."""
        self.warm_up()
        cached = self._captions.get(prompt.classes)
        if cached is not None:
            return cached
        tokenizer = self._processor.tokenizer

        def count(text: str) -> int:
            return len(tokenizer(text.lower(), add_special_tokens=False)["input_ids"])

        encoded = []
        for ids in chunk_classes(prompt.classes, count, self.max_text_len):
            caption = build_caption(prompt.classes, ids)
            text = caption.text.lower() if len(caption.text.lower()) == len(caption.text) else caption.text
            tokens = tokenizer(
                text, return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt"
            )
            offsets = tuple((int(a), int(b)) for a, b in tokens["offset_mapping"][0].tolist())
            if len(offsets) > self.max_text_len:  # the per-class estimate was off: never truncate silently
                raise PromptError(
                    f"caption of {len(offsets)} tokens exceeds {self.max_text_len}: {caption.text!r}"
                )
            encoded.append(
                _EncodedCaption(
                    caption=caption,
                    input_ids=tokens["input_ids"],
                    attention_mask=tokens["attention_mask"],
                    token_type_ids=tokens["token_type_ids"],
                    offsets=offsets,
                    pos_map=positive_map(offsets, caption.spans),
                )
            )
        if len(self._captions) > 256:
            self._captions.clear()
        self._captions[prompt.classes] = encoded
        return encoded

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def _forward(
        self, pixels: dict[str, torch.Tensor], text: _EncodedCaption
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token probabilities ``(B, Q, T)`` and normalised xyxy boxes ``(B, Q, 4)``."""
        batch = pixels["pixel_values"].shape[0]
        inputs = {
            "pixel_values": pixels["pixel_values"],
            "pixel_mask": pixels["pixel_mask"],
            "input_ids": text.input_ids.expand(batch, -1),
            "attention_mask": text.attention_mask.expand(batch, -1),
            "token_type_ids": text.token_type_ids.expand(batch, -1),
        }
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with autocast(self.device, self.precision):
            out = self._model(**inputs)
        num_tokens = text.input_ids.shape[1]
        probs = out.logits[..., :num_tokens].float().sigmoid()
        return probs, cxcywh_to_xyxy(out.pred_boxes.float())

    def _collect(
        self,
        cands: _Candidates,
        chunk_index: int,
        text: _EncodedCaption,
        probs: torch.Tensor,
        boxes: torch.Tensor,
    ) -> None:
        scores_qc = class_scores(probs, text.pos_map, self.class_reduction)  # (Q, C_chunk)
        if self.multi_label:
            queries, local = (scores_qc > self.box_threshold).nonzero(as_tuple=True)
            scores = scores_qc[queries, local]
        else:
            scores, local = scores_qc.max(dim=-1)
            queries = (scores > self.box_threshold).nonzero().flatten()
            scores, local = scores[queries], local[queries]
        global_ids = torch.as_tensor(text.caption.class_ids, device=probs.device)[local]
        cands.boxes.append(boxes[queries])
        cands.scores.append(scores)
        cands.class_ids.append(global_ids)
        cands.chunk_ids.append(torch.full_like(global_ids, chunk_index))
        cands.token_probs.append(probs[queries])

    def _finish(
        self, image: LoadedImage, prompt: Prompt, texts: Sequence[_EncodedCaption], cands: _Candidates
    ) -> Detections:
        boxes = normalized_to_pixels(torch.cat(cands.boxes), image.size)
        if self.clip_boxes:
            boxes = clip_xyxy(boxes, image.size)
        scores = torch.cat(cands.scores)
        class_ids = torch.cat(cands.class_ids).long()
        if self.nms_threshold is not None and len(scores):
            order = batched_nms(boxes, scores, class_ids, self.nms_threshold)
        else:
            order = torch.argsort(scores, descending=True, stable=True)
        order = order[: self.top_k]
        # token probabilities have one width per caption chunk: find each kept row in its own part
        starts = list(itertools.accumulate((len(p) for p in cands.token_probs), initial=0))
        phrases = []
        for i, class_id in zip(order.tolist(), class_ids[order].tolist(), strict=True):
            part = bisect.bisect_right(starts, i) - 1
            text = texts[int(cands.chunk_ids[part][0])]
            local = text.caption.class_ids.index(class_id)
            row = cands.token_probs[part][i - starts[part]]
            phrases.append(
                matched_phrase(text.caption.text, text.offsets, row, text.pos_map[local], self.text_threshold)
            )
        return Detections(
            boxes=boxes[order],
            scores=scores[order],
            class_ids=class_ids[order],
            classes=prompt.classes,
            phrases=tuple(phrases),
            image_size=image.size,
        )

    def detect(self, images: Sequence[LoadedImage], prompt: Prompt | str | Sequence[str]) -> list[Detections]:
        """Detect the prompt's classes in each image (all images share the prompt).

        Unless ``pad_batches`` is set, images are batched only with images of the same preprocessed size, so
        no image is padded and batched results equal one-by-one results.
        """
        self.warm_up()
        prompt = Prompt.of(prompt)
        texts = self.encode_prompt(prompt)
        results: list[Detections | None] = [None] * len(images)
        for idxs, pixels in self._batches(images):
            cands = [_Candidates([], [], [], [], []) for _ in idxs]
            for chunk_index, text in enumerate(texts):
                probs, boxes = self._forward(pixels, text)
                for b in range(len(idxs)):
                    self._collect(cands[b], chunk_index, text, probs[b], boxes[b])
            for i, c in zip(idxs, cands, strict=True):
                results[i] = self._finish(images[i], prompt, texts, c)
        return [r for r in results if r is not None]

    def _batches(self, images: Sequence[LoadedImage]) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """Image indices and their preprocessed pixels (``pixel_values``, ``pixel_mask``), batch by batch."""
        if self.pad_batches:
            groups = [list(range(len(images)))]
        else:  # images of the same size resize to the same shape: batching them needs no padding
            buckets: dict[tuple[int, int], list[int]] = {}
            for i, im in enumerate(images):
                buckets.setdefault(im.size, []).append(i)
            groups = list(buckets.values())
        processor = self._processor.image_processor
        for members in groups:
            for idxs in batches(members, self.batch_size):
                pixels = [images[i].pixels for i in idxs]
                yield (
                    list(idxs),
                    dict(processor(pixels, return_tensors="pt", input_data_format="channels_last")),
                )


@register_adapter("mm_grounding_dino")
class MMGroundingDINO(GroundingDINO):
    """MM-Grounding-DINO (and LLMDet checkpoints, which load as it): the same adapter with its default model."""

    def __init__(
        self, model: str = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det", **kwargs: Any
    ) -> None:
        super().__init__(model=model, **kwargs)
