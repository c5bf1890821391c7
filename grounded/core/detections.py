"""The one detections type every stage reads and writes.

A :class:`Detections` holds the results for **one image** as parallel arrays that stay on the device where
they were computed (boxes, scores, class ids, optional masks and mask scores), plus the prompt's class
vocabulary and the exact text span (phrase) each detection matched. It converts to and from
``supervision.Detections`` for drawing and interop, and to COCO RLE for export.

Masks are held one of two ways: ``masks``, a dense ``(N, H, W)`` bool tensor, or, where that would take more
than :data:`DENSE_MASK_BYTES` (many detections on a very large image), ``mask_rles``, one COCO RLE per
detection (a few KB each). Readers that work one mask at a time (:meth:`Detections.mask_array`,
:meth:`Detections.rles`, :meth:`Detections.mask_areas`) accept both; :meth:`Detections.dense_masks` decodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from grounded.core.rle import decode_rle, encode_masks, rle_area

__all__ = ["DENSE_MASK_BYTES", "Detections", "fits_dense"]

#: the most bytes of dense bool masks one image's detections hold; beyond it masks are held as RLE
DENSE_MASK_BYTES = 512 * 1024 * 1024


def fits_dense(count: int, image_size: tuple[int, int]) -> bool:
    """Whether ``count`` dense bool masks of ``image_size`` fit :data:`DENSE_MASK_BYTES`."""
    return count * image_size[0] * image_size[1] <= DENSE_MASK_BYTES


Index = int | slice | Sequence[int] | torch.Tensor | np.ndarray


@dataclass(frozen=True)
class Detections:
    """Detections of one image.

    Attributes:
        boxes: ``(N, 4)`` float boxes, ``x0, y0, x1, y1`` in pixels of the original image.
        scores: ``(N,)`` detector confidence in ``[0, 1]``.
        class_ids: ``(N,)`` int64 indices into ``classes``; always a real class (never a fallback).
        classes: the prompt's class vocabulary, shared by all detections.
        phrases: ``N`` strings, the exact text span of the prompt each detection matched.
        image_size: ``(height, width)`` of the original image.
        masks: optional ``(N, H, W)`` bool masks at the original image size.
        mask_scores: optional ``(N,)`` predicted mask quality (SAM's IoU prediction).
        mask_rles: the same masks as ``N`` COCO RLE dicts (``size`` ``[H, W]``, ``counts`` str), in place of
            ``masks`` (never both) where dense masks would not fit :data:`DENSE_MASK_BYTES`.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    classes: tuple[str, ...]
    phrases: tuple[str, ...]
    image_size: tuple[int, int]
    masks: torch.Tensor | None = None
    mask_scores: torch.Tensor | None = None
    mask_rles: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {tuple(self.boxes.shape)}")
        for name in ("scores", "class_ids"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(value.shape)}")
        if len(self.phrases) != n:
            raise ValueError(f"phrases must have {n} entries, got {len(self.phrases)}")
        if self.class_ids.dtype != torch.int64:
            raise TypeError(f"class_ids must be int64, got {self.class_ids.dtype}")
        if n and (int(self.class_ids.min()) < 0 or int(self.class_ids.max()) >= len(self.classes)):
            raise ValueError(f"class_ids must index the {len(self.classes)} classes {self.classes!r}")
        if self.masks is not None:
            expected = (n, *self.image_size)
            if tuple(self.masks.shape) != expected or self.masks.dtype != torch.bool:
                raise ValueError(
                    f"masks must be bool of shape {expected}, got {self.masks.dtype} {tuple(self.masks.shape)}"
                )
        if self.mask_rles is not None:
            if self.masks is not None:
                raise ValueError("give masks or mask_rles, not both")
            if len(self.mask_rles) != n or any(
                tuple(r["size"]) != tuple(self.image_size) for r in self.mask_rles
            ):
                raise ValueError(f"mask_rles must be {n} RLEs of size {list(self.image_size)}")
        if self.mask_scores is not None and self.mask_scores.shape != (n,):
            raise ValueError(f"mask_scores must have shape ({n},), got {tuple(self.mask_scores.shape)}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(
        cls, image_size: tuple[int, int], classes: Sequence[str] = (), device: torch.device | str = "cpu"
    ) -> Detections:
        """No detections for an image of ``(height, width)``."""
        return cls(
            boxes=torch.zeros((0, 4), device=device),
            scores=torch.zeros((0,), device=device),
            class_ids=torch.zeros((0,), dtype=torch.int64, device=device),
            classes=tuple(classes),
            phrases=(),
            image_size=tuple(image_size),  # type: ignore[arg-type]
        )

    @classmethod
    def cat(cls, parts: Sequence[Detections]) -> Detections:
        """Concatenate detections of the same image that share one class vocabulary."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of Detections")
        first = parts[0]
        for p in parts[1:]:
            if p.classes != first.classes or p.image_size != first.image_size:
                raise ValueError("Detections.cat needs the same classes and image size in every part")
        with_masks = [p.has_masks for p in parts]
        if any(with_masks) and not all(with_masks):
            raise ValueError("Detections.cat needs masks in all parts or in none")
        dense = all(p.masks is not None for p in parts)
        return cls(
            boxes=torch.cat([p.boxes for p in parts]),
            scores=torch.cat([p.scores for p in parts]),
            class_ids=torch.cat([p.class_ids for p in parts]),
            classes=first.classes,
            phrases=tuple(ph for p in parts for ph in p.phrases),
            image_size=first.image_size,
            masks=torch.cat([p.masks for p in parts]) if dense else None,  # type: ignore[misc]
            mask_scores=(
                torch.cat([p.mask_scores for p in parts])  # type: ignore[misc]
                if all(p.mask_scores is not None for p in parts)
                else None
            ),
            mask_rles=tuple(r for p in parts for r in p.rles()) if all(with_masks) and not dense else None,
        )

    def with_masks(self, masks: torch.Tensor, mask_scores: torch.Tensor | None = None) -> Detections:
        """A copy with masks (``(N, H, W)`` bool) and their predicted quality attached."""
        return replace(self, masks=masks, mask_scores=mask_scores, mask_rles=None)

    def with_mask_rles(
        self, rles: Sequence[dict[str, Any]], mask_scores: torch.Tensor | None = None
    ) -> Detections:
        """A copy with masks given as one COCO RLE per detection (the compact form) and their quality."""
        return replace(self, masks=None, mask_scores=mask_scores, mask_rles=tuple(rles))

    # ------------------------------------------------------------------ masks, one at a time
    @property
    def has_masks(self) -> bool:
        """Whether masks are attached (dense or as RLE)."""
        return self.masks is not None or self.mask_rles is not None

    def _need_masks(self) -> None:
        if not self.has_masks:
            raise ValueError("these detections have no masks")

    def mask_array(self, i: int) -> np.ndarray:
        """Detection ``i``'s mask as a ``(H, W)`` bool numpy array on the host."""
        self._need_masks()
        if self.masks is not None:
            return np.asarray(self.masks[i].detach().cpu().numpy(), dtype=bool)
        return decode_rle(self.mask_rles[i])  # type: ignore[index]

    def rles(self) -> list[dict[str, Any]]:
        """One COCO RLE per detection (encoded one mask at a time from dense masks)."""
        self._need_masks()
        if self.mask_rles is not None:
            return list(self.mask_rles)
        return [encode_masks(self.masks[i : i + 1])[0] for i in range(len(self))]  # type: ignore[index]

    def mask_areas(self) -> list[int]:
        """Foreground pixels of each mask."""
        self._need_masks()
        if self.mask_rles is not None:
            return [rle_area(r) for r in self.mask_rles]
        return [int(v) for v in torch.count_nonzero(self.masks.flatten(1), dim=1).tolist()]  # type: ignore[union-attr]

    def dense_masks(self) -> torch.Tensor:
        """All masks as ``(N, H, W)`` bool (decodes RLE masks: ``N x H x W`` bytes)."""
        self._need_masks()
        if self.masks is not None:
            return self.masks
        stack = torch.zeros((len(self), *self.image_size), dtype=torch.bool, device=self.device)
        for i in range(len(self)):
            stack[i] = torch.from_numpy(self.mask_array(i))
        return stack

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    @property
    def class_names(self) -> list[str]:
        """The class name of each detection."""
        return [self.classes[i] for i in self.class_ids.tolist()]

    def __getitem__(self, index: Index) -> Detections:
        """Select detections by int, slice, list of ints, bool mask or index tensor."""
        idx = self._normalize_index(index)
        positions = idx.tolist()
        return replace(
            self,
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            phrases=tuple(self.phrases[i] for i in positions),
            masks=None if self.masks is None else self.masks[idx],
            mask_scores=None if self.mask_scores is None else self.mask_scores[idx],
            mask_rles=None if self.mask_rles is None else tuple(self.mask_rles[i] for i in positions),
        )

    def _normalize_index(self, index: Index) -> torch.Tensor:
        n = len(self)
        if isinstance(index, (bool, np.bool_)):
            raise IndexError("index detections with a boolean array of one value per detection, not a bool")
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} detections")
            return torch.tensor([i % n], dtype=torch.int64, device=self.device)
        if isinstance(index, slice):
            return torch.tensor(range(n)[index], dtype=torch.int64, device=self.device)
        tensor = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
        if tensor.dtype == torch.bool:
            if tensor.shape != (n,):
                raise IndexError(f"boolean index must have shape ({n},), got {tuple(tensor.shape)}")
            return tensor.to(self.device).nonzero().flatten()
        if tensor.numel() == 0:
            return torch.zeros((0,), dtype=torch.int64, device=self.device)
        if tensor.is_floating_point():
            raise IndexError("index tensors must be integer or bool")
        tensor = tensor.to(device=self.device, dtype=torch.int64).flatten()
        if int(tensor.min()) < -n or int(tensor.max()) >= n:
            raise IndexError(f"index out of range for {n} detections")
        return tensor % max(n, 1)

    def to(self, device: torch.device | str) -> Detections:
        """Move all tensors to ``device``."""
        return replace(
            self,
            boxes=self.boxes.to(device),
            scores=self.scores.to(device),
            class_ids=self.class_ids.to(device),
            masks=None if self.masks is None else self.masks.to(device),
            mask_scores=None if self.mask_scores is None else self.mask_scores.to(device),
        )

    def sorted_by_score(self) -> Detections:
        """Detections in descending score order."""
        return self[torch.argsort(self.scores, descending=True, stable=True)]

    # ------------------------------------------------------------------ interop
    def to_supervision(self) -> Any:
        """Convert to ``supervision.Detections`` (numpy arrays on the host)."""
        import supervision as sv

        data: dict[str, Any] = {
            "class_name": np.array(self.class_names, dtype=object),
            "phrase": np.array(self.phrases, dtype=object),
        }
        if self.mask_scores is not None:
            data["mask_score"] = self.mask_scores.detach().float().cpu().numpy()
        return sv.Detections(
            metadata={"classes": list(self.classes), "image_size": self.image_size},
            xyxy=self.boxes.detach().float().cpu().numpy().astype(np.float32).reshape(-1, 4),
            mask=self.dense_masks().detach().cpu().numpy() if self.has_masks else None,
            confidence=self.scores.detach().float().cpu().numpy(),
            class_id=self.class_ids.detach().cpu().numpy(),
            data=data,
        )

    @classmethod
    def from_supervision(
        cls,
        detections: Any,
        image_size: tuple[int, int],
        classes: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
    ) -> Detections:
        """Build from ``supervision.Detections``.

        The class vocabulary is ``classes`` when given, else the one :meth:`to_supervision` stored in
        ``metadata["classes"]``, else the sorted distinct ``data["class_name"]`` values; ``class_id`` is used
        when present and no names are available.
        """
        n = len(detections)
        if classes is None:
            classes = (getattr(detections, "metadata", None) or {}).get("classes")
        names = detections.data.get("class_name") if detections.data else None
        if classes is None:
            if names is not None:
                classes = sorted({str(x) for x in names})
            elif detections.class_id is not None:
                classes = [str(i) for i in range(int(detections.class_id.max()) + 1 if n else 0)]
            else:
                raise ValueError("supervision detections carry no class_id or class_name; pass classes=")
        classes = tuple(classes)
        if names is not None:
            lookup = {c: i for i, c in enumerate(classes)}
            missing = sorted({str(x) for x in names} - set(lookup))
            if missing:
                raise ValueError(f"class names {missing} are not in classes {classes!r}")
            class_ids = [lookup[str(x)] for x in names]
        elif detections.class_id is not None:
            class_ids = [int(c) for c in detections.class_id]
        else:
            raise ValueError("supervision detections carry no class_id or class_name")
        phrases = detections.data.get("phrase") if detections.data else None
        confidence = detections.confidence if detections.confidence is not None else np.ones(n, np.float32)
        mask_score = detections.data.get("mask_score") if detections.data else None
        return cls(
            boxes=torch.as_tensor(np.asarray(detections.xyxy, dtype=np.float32), device=device).reshape(
                -1, 4
            ),
            scores=torch.as_tensor(np.asarray(confidence, dtype=np.float32), device=device),
            class_ids=torch.as_tensor(class_ids, dtype=torch.int64, device=device).reshape(-1),
            classes=classes,
            phrases=tuple(str(p) for p in phrases)
            if phrases is not None
            else tuple(classes[i] for i in class_ids),
            image_size=(int(image_size[0]), int(image_size[1])),
            masks=None if detections.mask is None else torch.as_tensor(detections.mask, device=device).bool(),
            mask_scores=None
            if mask_score is None
            else torch.as_tensor(np.asarray(mask_score, dtype=np.float32), device=device),
        )

    def to_coco_records(self, image_id: int | str | None = None) -> list[dict[str, Any]]:
        """COCO-style records: ``bbox`` xywh pixels, ``segmentation`` RLE, scores, category and phrase."""
        from grounded.core.boxes import xyxy_to_xywh

        xywh = xyxy_to_xywh(self.boxes.detach().float().cpu()).tolist()
        rles: list[Any] = self.rles() if self.has_masks else [None] * len(self)
        areas: list[Any] = self.mask_areas() if self.has_masks else [None] * len(self)
        mask_scores = (
            self.mask_scores.detach().float().cpu().tolist() if self.mask_scores is not None else None
        )
        records = []
        for i, (box, score, cid) in enumerate(
            zip(xywh, self.scores.detach().float().cpu().tolist(), self.class_ids.tolist(), strict=True)
        ):
            record: dict[str, Any] = {}
            if image_id is not None:
                record["image_id"] = image_id
            record.update(
                {
                    "bbox": [round(v, 3) for v in box],
                    "score": round(score, 6),
                    "category_id": cid,
                    "category": self.classes[cid],
                    "phrase": self.phrases[i],
                }
            )
            if rles[i] is not None:
                record["segmentation"] = rles[i]
                record["area"] = areas[i]
            if mask_scores is not None:
                record["mask_score"] = round(mask_scores[i], 6)
            records.append(record)
        return records
