"""Random-weight Semantic-SAM models for tests and benchmarks, in our folder format or the official ``.pth`` one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from grounded.models.semantic_sam.checkpoints import save_semantic_sam, to_official_state_dict
from grounded.models.semantic_sam.config import TextEncoderConfig, preset
from grounded.models.semantic_sam.model import SemanticSamModel

__all__ = ["TINY_TEXT", "make_official_checkpoint", "make_semantic_sam", "random_model"]

#: A tiny language encoder (for the classification-head tests); its vocabulary is the tiny CLIP tokenizer's.
TINY_TEXT = TextEncoderConfig(vocab_size=514, context_length=16, width=16, layers=1, heads=2)


def random_model(size: str = "tiny", seed: int = 0, **overrides: Any) -> SemanticSamModel:
    """A model of a preset with seeded random weights on the scale trained weights have (unit-ish norms,
    fan-in-scaled matrices, small biases), so that every parameter, zero-initialised ones included, matters."""
    model = SemanticSamModel(preset(size, **overrides)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.copy_(0.02 * noise)
            elif "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight")):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim >= 2 and leaf == "weight" and "embed" not in name and "tokens" not in name:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)
            elif name.endswith("logit_scale"):
                param.copy_(torch.tensor(2.0))
            else:  # embeddings, tables, level embeddings, class projections
                param.copy_(0.5 * noise)
    return model


def make_semantic_sam(path: str | Path, size: str = "tiny", seed: int = 0, **overrides: Any) -> Path:
    """Write a random model in our folder format (``config.json`` + ``model.safetensors``)."""
    return save_semantic_sam(random_model(size, seed, **overrides), path)


def make_official_checkpoint(
    path: str | Path, size: str = "tiny", seed: int = 0, wrapped: bool = False, **overrides: Any
) -> Path:
    """Write a random model as the official code saves it: ``{"model.<official key>": tensor}`` (inside
    ``{"model": ...}`` when ``wrapped``), shared copies and Swin index buffers included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = to_official_state_dict(random_model(size, seed, **overrides))
    torch.save({"model": state} if wrapped else state, path)
    return path
