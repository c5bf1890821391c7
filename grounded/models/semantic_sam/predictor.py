"""Clicks and boxes → Semantic-SAM masks at every granularity, as :class:`grounded.core.levels.Levels`.

Preprocessing follows the official demo: the image is resized (PIL bicubic) so its short side is 640 pixels,
normalised, zero-padded to a multiple of 32; a click is the box ``(x/W, y/H, 0.005, 0.005)``. The 6 granularity
queries are numbered here finest → coarsest (level 1 = finest), the reverse of the official prompt numbers
(official 1-2 "semantic", 3 "instance", 4-6 "part"): our level ``L`` is the official level ``7 - L``, i.e. mask
token ``(5, 1, 4, 0, 2, 3)[L - 1]`` (the official ``prompt_switch`` table read backwards).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from grounded.core.levels import Levels, LevelSelection, merge_levels
from grounded.models.semantic_sam.model import ImageFeatures, SemanticSamModel

__all__ = [
    "CLICK_SIZE",
    "TOKEN_FOR_LEVEL",
    "LabeledLevels",
    "Vocabulary",
    "build_levels",
    "label_levels",
    "level_tokens",
    "predict_levels",
    "prompt_anchors",
    "resize_short_side",
]

#: Width and height of the box a click becomes (relative to the image), as in the official demo.
CLICK_SIZE = 0.005
#: Mask-token index of each level, finest (level 1) first.
TOKEN_FOR_LEVEL: tuple[int, ...] = (5, 1, 4, 0, 2, 3)


@dataclass(frozen=True)
class LabeledLevels(Levels):
    """:class:`Levels` whose masks carry the top object label and the top part label of the class heads.

    Attributes:
        labels: the best object class of each mask (object head), ``label_scores`` its sigmoid probability.
        part_labels: the best part class of each mask (part head; empty strings without a part vocabulary).
    """

    labels: tuple[str, ...] = ()
    label_scores: tuple[float, ...] = ()
    part_labels: tuple[str, ...] = ()
    part_scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class Vocabulary:
    """Class names and their unit text embeddings ``(T, dim_proj)`` for the object and the part head."""

    objects: tuple[str, ...]
    object_embeddings: torch.Tensor
    parts: tuple[str, ...] = ()
    part_embeddings: torch.Tensor | None = None


def level_tokens(num_tokens: int) -> tuple[int, ...]:
    """The token of each level, finest first (``TOKEN_FOR_LEVEL`` for the official 6; identity otherwise)."""
    return TOKEN_FOR_LEVEL if num_tokens == len(TOKEN_FOR_LEVEL) else tuple(range(num_tokens))


def resize_short_side(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 so its short side is ``size`` (long side truncated, as torchvision's
    ``Resize(size)``), PIL bicubic; unchanged when the short side already is ``size``."""
    h, w = pixels.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    if short == size:
        return pixels
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    return np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.BICUBIC))


def prompt_anchors(
    points: torch.Tensor | None, boxes: torch.Tensor | None, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel clicks ``(N, 2)`` or xyxy boxes ``(N, 4)`` of an image ``(H, W)`` → relative cxcywh anchors
    ``(N, 4)`` and the box flags ``(N,)``."""
    height, width = image_size
    if (points is None) == (boxes is None):
        raise ValueError("give points or boxes (one of them)")
    if points is not None:
        p = torch.as_tensor(points, dtype=torch.float32).detach().cpu().reshape(-1, 2)
        rel = p / torch.tensor([width, height], dtype=torch.float32)
        size = torch.full_like(rel, CLICK_SIZE)
        return torch.cat([rel, size], -1), torch.zeros(len(p), dtype=torch.bool)
    b = torch.as_tensor(boxes, dtype=torch.float32).detach().cpu().reshape(-1, 4)
    if len(b) and bool((b[:, 2:] < b[:, :2]).any()):
        raise ValueError("boxes must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0")
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    rel = b / scale
    anchors = torch.cat([(rel[:, :2] + rel[:, 2:]) / 2, (rel[:, 2:] - rel[:, :2]).clamp(min=CLICK_SIZE)], -1)
    return anchors, torch.ones(len(b), dtype=torch.bool)


def _pick(which: LevelSelection, count: int) -> list[int]:
    """1-based levels asked for, validated."""
    if which == "all" or which == "part" or which == "whole":
        return list(range(1, count + 1))
    if isinstance(which, str):
        raise ValueError(f"levels must be 'all', 'part', 'whole' or a list of level numbers, got {which!r}")
    picked = [int(k) for k in which]
    bad = [k for k in picked if not 1 <= k <= count]
    if bad or not picked:
        raise ValueError(f"levels {bad or picked} do not exist: Semantic-SAM has levels 1..{count}")
    return sorted(set(picked))


def build_levels(
    masks: torch.Tensor,
    scores: torch.Tensor,
    level_numbers: Sequence[int],
    which: LevelSelection = "all",
    dedup_iou: float = 0.9,
    nest: float = 0.9,
) -> Levels:
    """Masks ``(K, H, W)`` bool of fixed granularity levels (finest first) → :class:`Levels`.

    Empty masks are dropped; a mask with IoU ≥ ``dedup_iou`` to the previous kept level is the same level (the
    better predicted of the two stays, under its own level number); containment of each kept level in the next
    is measured and violations (< ``nest``) reported. ``"part"`` / ``"whole"`` keep the finest / coarsest
    remaining level; a list keeps those level numbers (before merging).
    """
    merged = merge_levels(masks, scores, range(len(masks)), level_numbers, dedup_iou=dedup_iou, nest=nest)
    if which in ("part", "whole") and len(merged):
        keep = 0 if which == "part" else len(merged) - 1
        merged = Levels(
            masks=merged.masks[keep : keep + 1],
            scores=merged.scores[keep : keep + 1],
            areas=merged.areas[keep : keep + 1],
            levels=merged.levels[keep : keep + 1],
            containment=(),
            violations=(),
        )
    return merged


@torch.inference_mode()
def predict_levels(
    model: SemanticSamModel,
    features: ImageFeatures,
    image_size: tuple[int, int],
    points: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    levels: LevelSelection = "all",
    mask_threshold: float = 0.0,
    max_prompts: int = 64,
    group: Literal["click", "all"] = "click",
    vocabulary: Vocabulary | None = None,
) -> list[Levels]:
    """Every requested level for each prompt, finest first, masks at the original ``image_size`` (H, W).

    ``features`` is one encoded image (batch of 1). ``group="click"`` decodes each click independently;
    ``"all"`` lets the clicks of a call attend to each other, as the official demo code does. With a
    ``vocabulary`` the results are :class:`LabeledLevels` (top object and part label of every mask).
    """
    anchors, is_box = prompt_anchors(points, boxes, image_size)
    tokens = level_tokens(model.config.num_mask_tokens)
    wanted = _pick(levels, len(tokens))
    index = torch.tensor([tokens[k - 1] for k in wanted], device=model.device)
    out: list[Levels] = []
    k = model.config.num_mask_tokens
    for start in range(0, len(anchors), max_prompts):
        a = anchors[start : start + max_prompts].to(model.device)
        flags = is_box[start : start + max_prompts].to(model.device)
        decoded = model.decode(features, a[None], flags[None], group=k if group == "click" else k * len(a))
        logits = decoded["masks"][0][:, index]  # (n, levels, h, w) at the resized size
        iou = decoded["iou"][0][:, index]
        embeddings = decoded["embeddings"][0][:, index]
        for prompt_logits, prompt_iou, prompt_emb in zip(logits, iou, embeddings, strict=True):
            full = F.interpolate(
                prompt_logits[:, None], size=image_size, mode="bilinear", align_corners=False
            )
            masks = full[:, 0] > mask_threshold
            result = build_levels(masks, prompt_iou, wanted, levels)
            if vocabulary is not None:
                kept = [wanted.index(level) for level in result.levels]
                result = label_levels(model, result, prompt_emb[kept], vocabulary)
            out.append(result)
    return out


def _top(
    model: SemanticSamModel, emb: torch.Tensor, names: tuple[str, ...], text: torch.Tensor | None, part: bool
):
    if not names or text is None or len(emb) == 0:
        return ("",) * len(emb), (0.0,) * len(emb)
    probs = model.class_logits(emb, text, part=part).sigmoid()
    best, which = probs.max(-1)
    return tuple(names[i] for i in which.tolist()), tuple(float(p) for p in best.tolist())


def label_levels(
    model: SemanticSamModel, levels: Levels, embeddings: torch.Tensor, vocabulary: Vocabulary
) -> LabeledLevels:
    """Attach the object head's and the part head's best class to each mask (``embeddings``: one per mask)."""
    labels, scores = _top(model, embeddings, vocabulary.objects, vocabulary.object_embeddings, False)
    parts, part_scores = _top(model, embeddings, vocabulary.parts, vocabulary.part_embeddings, True)
    return LabeledLevels(
        **{
            f: getattr(levels, f) for f in ("masks", "scores", "areas", "levels", "containment", "violations")
        },
        labels=labels,
        label_scores=scores,
        part_labels=parts,
        part_scores=part_scores,
    )
