"""Semantic-SAM segmenter (our pure-PyTorch port, :mod:`grounded.models.semantic_sam`): boxes → masks at a granularity,
clicks / boxes → all 6 granularity levels, optional object / part labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from grounded.adapters.common import ModelAdapter
from grounded.core.checks import one_of
from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.levels import Levels, LevelSelection
from grounded.core.lru import LruCache
from grounded.engine import register_adapter
from grounded.models.checkpoints import CheckpointError
from grounded.models.semantic_sam.model import ImageFeatures, SemanticSamModel
from grounded.models.semantic_sam.predictor import Vocabulary, predict_levels, resize_short_side
from grounded.models.sources import ModelSourceError
from grounded.runtime.device import autocast

__all__ = ["SemanticSAM"]


def _box_iou(masks: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of each mask's bounding box ``(K, H, W)`` with one xyxy box."""
    out = torch.zeros(len(masks), device=masks.device)
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs) == 0:
            continue
        mb = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        b = box.to(mb)
        inter = (torch.minimum(mb[2:], b[2:]) - torch.maximum(mb[:2], b[:2])).clamp(min=0).prod()
        union = (mb[2:] - mb[:2]).prod() + (b[2:] - b[:2]).clamp(min=0).prod() - inter
        out[i] = inter / union.clamp(min=1e-6)
    return out


@register_adapter("semantic_sam")
class SemanticSAM(ModelAdapter):
    """Semantic-SAM: each box (or click) is decoded into 6 granularity levels, finest to coarsest.

    Args:
        model: an official checkpoint (``swint_only_sam_many2many.pth``, ``swinl_only_sam_many2many.pth``) or a
            folder in our format (``config.json`` + ``model.safetensors``).
        granularity: the level a detection's box keeps: ``"best"`` (the level whose mask's bounding box fits
            the detection box best), ``"part"`` (the finest) or ``"whole"`` (the coarsest).
        image_size: the short side the image is resized to (640 in the official demo).
        mask_threshold: logit threshold for binarising masks.
        max_prompts_per_call: prompts decoded together.
        cache_size: encoded images kept, keyed on image content.
        labels, part_labels: class names for the object / part heads (needs a checkpoint with a text encoder
            and ``tokenizer``, a CLIP tokenizer hub id or folder); each mask then carries its top label.
        device, precision: as for the other adapters (the pixel decoder and decoder always run in fp32).
    """

    outputs: ClassVar[dict[str, Any]] = {"detections": list[Detections]}
    what: ClassVar[str] = "segmenter"

    def __init__(
        self,
        model: str,
        granularity: str = "best",
        image_size: int = 640,
        mask_threshold: float = 0.0,
        max_prompts_per_call: int = 64,
        cache_size: int = 4,
        labels: Sequence[str] | None = None,
        part_labels: Sequence[str] | None = None,
        tokenizer: str | None = None,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        one_of("granularity", granularity, ("best", "part", "whole"))
        if image_size < 32 or max_prompts_per_call < 1 or cache_size < 0:
            raise ValueError(
                "image_size must be at least 32, max_prompts_per_call at least 1, cache_size >= 0"
            )
        super().__init__()
        self._vocabulary: Vocabulary | None = None
        self._cache: LruCache[str, ImageFeatures] = LruCache(cache_size)

    def load(self) -> tuple[Any, Any]:
        """``(None, network)``: our Semantic-SAM port from an official checkpoint or a folder."""
        from grounded.models.semantic_sam.checkpoints import load_semantic_sam

        try:
            return None, load_semantic_sam(self._params["model"])
        except CheckpointError as exc:
            raise ModelSourceError(f"segmenter: {exc}") from None

    def prepare(self) -> None:
        if self._params["labels"] or self._params["part_labels"]:
            self._vocabulary = self._build_vocabulary()

    @property
    def fixed_levels(self) -> int:
        """Semantic-SAM's levels are fixed granularity prompts (1..6, finest first), the same for every click."""
        return self.model.config.num_mask_tokens

    @property
    def model(self) -> SemanticSamModel:
        """The loaded network (loads it on first use)."""
        self.warm_up()
        assert self._model is not None
        return self._model

    def _build_vocabulary(self) -> Vocabulary:
        model = self.model
        if model.text is None:
            raise ModelSourceError(
                f"segmenter {self._params['model']!r} has no text encoder (the released Semantic-SAM "
                "checkpoints are trained on SA-1B only): labels need a checkpoint with one"
            )
        if not self._params["tokenizer"]:
            raise ValueError("labels need tokenizer=: a CLIP tokenizer hub id or folder")
        from transformers import CLIPTokenizer

        from grounded.models.sources import load_from_source

        tokenizer = load_from_source(CLIPTokenizer.from_pretrained, self._params["tokenizer"], "tokenizer")
        objects = tuple(self._params["labels"] or ())
        parts = tuple(self._params["part_labels"] or ())
        return Vocabulary(
            objects,
            model.text.embed_names(objects, tokenizer),
            parts,
            model.text.embed_names(parts, tokenizer),
        )

    # ------------------------------------------------------------------ encoder
    @torch.inference_mode()
    def encode(self, image: LoadedImage) -> ImageFeatures:
        """Backbone + pixel decoder features of one image (cached by content)."""
        model = self.model
        cached = self._cache.get(image.key)
        if cached is not None:
            return cached
        resized = resize_short_side(np.ascontiguousarray(image.pixels), self.image_size)
        pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].to(self.device)
        with autocast(self.device, self.precision):
            features = model.encode(pixels)
        self._cache.put(image.key, features)
        return features

    # ------------------------------------------------------------------ prompts
    def predict(
        self,
        image: LoadedImage,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        levels: LevelSelection = "all",
    ) -> list[Levels]:
        """Every requested level for each click ``(N, 2)`` or xyxy box ``(N, 4)`` (pixels), finest first.

        ``levels``: ``"all"``, ``"part"`` (finest kept), ``"whole"`` (coarsest kept) or level numbers 1..6.
        Masks are at the original image size; near-duplicate levels (IoU ≥ 0.9) are merged.
        """
        features = self.encode(image)
        return predict_levels(
            self.model,
            features,
            image.size,
            points=points,
            boxes=boxes,
            levels=levels,
            mask_threshold=self.mask_threshold,
            max_prompts=self.max_prompts_per_call,
            vocabulary=self._vocabulary,
        )

    def predict_levels(
        self,
        image: LoadedImage,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        levels: LevelSelection = "all",
    ) -> list[Levels]:
        """The same as :meth:`predict` (the name the SAM adapters use)."""
        return self.predict(image, points=points, boxes=boxes, levels=levels)

    # ------------------------------------------------------------------ pipeline port
    def segment(self, images: Sequence[LoadedImage], detections: Sequence[Detections]) -> list[Detections]:
        """Attach one mask (at ``granularity``) and its predicted IoU to every detection's box."""
        if len(images) != len(detections):
            raise ValueError(f"got {len(detections)} detection sets for {len(images)} images")
        out = []
        for image, det in zip(images, detections, strict=True):
            if det.image_size != image.size:
                raise ValueError(
                    f"detections for size {det.image_size} do not match image {image.name} {image.size}"
                )
            height, width = det.image_size
            if len(det) == 0:
                empty = torch.zeros((0, height, width), dtype=torch.bool, device=det.device)
                out.append(det.with_masks(empty, torch.zeros((0,), device=det.device)))
                continue
            which: LevelSelection = "all" if self.granularity == "best" else self.granularity
            masks, scores = [], []
            for box, levels in zip(
                det.boxes, self.predict(image, boxes=det.boxes.cpu(), levels=which), strict=True
            ):
                if len(levels) == 0:  # every level empty
                    masks.append(torch.zeros((height, width), dtype=torch.bool, device=levels.masks.device))
                    scores.append(torch.zeros((), device=levels.masks.device))
                    continue
                pick = int(_box_iou(levels.masks, box).argmax()) if self.granularity == "best" else 0
                masks.append(levels.masks[pick])
                scores.append(levels.scores[pick])
            out.append(
                det.with_masks(torch.stack(masks).to(det.device), torch.stack(scores).float().to(det.device))
            )
        return out

    def run(self, images: list[LoadedImage], detections: list[Detections]) -> dict[str, Any]:
        """Port entry: segment every detection's box."""
        return {"detections": self.segment(images, detections)}
