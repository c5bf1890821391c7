"""Multi-granularity masks: several nested masks per prompt, ordered from finest to coarsest.

SAM-family decoders return 3 candidate masks per prompt (roughly subpart, part, whole) in no fixed order.
:func:`order_levels` sorts them by area, merges near-duplicates (IoU ≥ ``dedup_iou``, keeping the better
predicted one) and checks nesting: a finer mask should lie inside the next coarser one (containment
``|finer ∩ coarser| / |finer| ≥ nest``); violations are reported, not hidden.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["LevelSelection", "Levels", "merge_levels", "order_levels", "select_levels"]

LevelSelection = Literal["all", "part", "whole"] | Sequence[int]


@dataclass(frozen=True)
class Levels:
    """The masks of one prompt at every level, finest first.

    Attributes:
        masks: ``(K, H, W)`` bool.
        scores: ``(K,)`` predicted mask quality (IoU prediction).
        areas: pixel count of each mask.
        levels: the 1-based level of each mask (1 = finest).
        containment: for each level but the last, the fraction of it inside the next coarser level.
        violations: levels whose containment in the next one is below the nesting threshold.
    """

    masks: torch.Tensor
    scores: torch.Tensor
    areas: tuple[int, ...]
    levels: tuple[int, ...]
    containment: tuple[float, ...]
    violations: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.levels)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def merge_levels(
    masks: torch.Tensor,
    scores: torch.Tensor,
    order: Sequence[int],
    numbers: Sequence[int] | None = None,
    dedup_iou: float = 0.9,
    nest: float = 0.9,
) -> Levels:
    """Visit ``(K, H, W)`` bool masks in ``order`` (finest first), merge duplicates, measure nesting.

    Empty masks are dropped; a mask with IoU ≥ ``dedup_iou`` to the previous kept one is the same level (the
    better predicted of the two stays). ``numbers`` gives each mask's own level number (a model with fixed
    levels); by default the kept masks are numbered 1, 2, ... in order.
    """
    areas = masks.flatten(1).sum(-1)
    kept: list[int] = []
    for i in order:
        if int(areas[i]) == 0:
            continue  # an empty mask is no level
        if kept and _iou(masks[kept[-1]], masks[i]) >= dedup_iou:
            if float(scores[i]) > float(scores[kept[-1]]):
                kept[-1] = i  # the same level: keep the better predicted mask
            continue
        kept.append(i)
    containment = []
    for finer, coarser in itertools.pairwise(kept):
        inside = int((masks[finer] & masks[coarser]).sum())
        containment.append(inside / max(int(areas[finer]), 1))
    level_of = tuple(range(1, len(kept) + 1)) if numbers is None else tuple(int(numbers[i]) for i in kept)
    index = torch.tensor(kept, dtype=torch.long, device=masks.device)
    return Levels(
        masks=masks[index],
        scores=scores[index],
        areas=tuple(int(areas[i]) for i in kept),
        levels=level_of,
        containment=tuple(containment),
        violations=tuple(level_of[k] for k, c in enumerate(containment) if c < nest),
    )


def order_levels(
    masks: torch.Tensor, scores: torch.Tensor, dedup_iou: float = 0.9, nest: float = 0.9
) -> Levels:
    """Sort ``(K, H, W)`` candidate masks finest → coarsest (by area), merge duplicates, measure nesting."""
    if masks.ndim != 3 or masks.dtype != torch.bool or scores.shape != (len(masks),):
        raise ValueError("masks must be (K, H, W) bool and scores (K,)")
    areas = masks.flatten(1).sum(-1)
    order = sorted(range(len(masks)), key=lambda i: (int(areas[i]), -float(scores[i])))
    return merge_levels(masks, scores, order, dedup_iou=dedup_iou, nest=nest)


def select_levels(levels: Levels, which: LevelSelection = "all") -> Levels:
    """``"all"``, ``"part"`` (the finest), ``"whole"`` (the coarsest) or a list of 1-based levels."""
    if which == "all" or len(levels) == 0:
        return levels
    if which == "part":
        picked = [0]
    elif which == "whole":
        picked = [len(levels) - 1]
    elif isinstance(which, str):
        raise ValueError(f"levels must be 'all', 'part', 'whole' or a list of level numbers, got {which!r}")
    else:
        bad = [k for k in which if not 1 <= k <= len(levels)]
        if bad:
            raise ValueError(f"levels {bad} do not exist: this prompt has levels 1..{len(levels)}")
        picked = [k - 1 for k in which]
    index = torch.tensor(picked, dtype=torch.long, device=levels.masks.device)
    return Levels(
        masks=levels.masks[index],
        scores=levels.scores[index],
        areas=tuple(levels.areas[i] for i in picked),
        levels=tuple(levels.levels[i] for i in picked),
        containment=tuple(levels.containment[i] for i in picked if i < len(levels.containment)),
        violations=tuple(v for v in levels.violations if v - 1 in picked),
    )
