"""Phrase → class mapping from token spans (the positive map), never from substring matching.

The detector scores every (query, token) pair. A class owns the tokens whose character offsets fall in its
span of the caption; a query's score for a class reduces the token probabilities over that class's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from grounded.core.prompts import PromptError

__all__ = ["class_scores", "matched_phrase", "positive_map"]

Reduction = Literal["max", "mean"]


def positive_map(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], num_tokens: int | None = None
) -> torch.Tensor:
    """``(C, T)`` bool: token ``t`` belongs to class ``c`` when its character range overlaps the class span.

    ``offsets`` are the tokenizer's ``(start, end)`` character offsets (``(0, 0)`` for special tokens, which
    belong to no class); ``num_tokens`` pads the map to the model's text length.
    """
    width = len(offsets) if num_tokens is None else num_tokens
    out = torch.zeros((len(spans), width), dtype=torch.bool)
    for t, (start, end) in enumerate(offsets[:width]):
        if end <= start:
            continue
        for c, (s0, s1) in enumerate(spans):
            if start < s1 and end > s0:
                out[c, t] = True
    empty = [c for c in range(len(spans)) if not out[c].any()]
    if empty:
        raise PromptError(f"classes {empty} own no tokens: they hold nothing the text encoder can read")
    return out


def class_scores(
    token_probs: torch.Tensor, pos_map: torch.Tensor, reduction: Reduction = "max"
) -> torch.Tensor:
    """``(Q, T)`` token probabilities and a ``(C, T)`` positive map → ``(Q, C)`` class scores.

    ``"max"``: the best token of the class (what the detector's box score is built from);
    ``"mean"``: the average over the class's tokens (Grounding DINO's evaluation post-processing).
    """
    pos = pos_map.to(device=token_probs.device)
    width = pos.shape[1]
    probs = token_probs[:, :width]
    if reduction == "max":
        masked = probs[:, None, :].masked_fill(~pos[None], float("-inf"))
        return masked.amax(dim=-1)
    if reduction == "mean":
        weights = pos.to(probs.dtype)
        return probs @ (weights / weights.sum(dim=-1, keepdim=True)).T
    raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")


def matched_phrase(
    caption: str,
    offsets: Sequence[tuple[int, int]],
    token_probs: torch.Tensor,
    class_tokens: torch.Tensor,
    text_threshold: float,
) -> str:
    """The exact caption span a query matched inside its class.

    The span runs from the first to the last token of the class whose probability exceeds
    ``text_threshold``; when none does, it is the whole class span.
    """
    idx = class_tokens.nonzero().flatten().tolist()
    if not idx:
        raise ValueError("the class owns no tokens")
    probs = token_probs.detach().float().cpu()
    hot = [t for t in idx if float(probs[t]) > text_threshold] or idx
    return caption[offsets[hot[0]][0] : offsets[hot[-1]][1]]
