"""Sizes of a Semantic-SAM model, with presets mirroring the official configs.

``swin_t`` / ``swin_l`` follow ``configs/semantic_sam_only_sa-1b_swin{T,L}.yaml`` of UX-Decoder/Semantic-SAM (the
configs of the released ``swint_only_sam_many2many.pth`` / ``swinl_only_sam_many2many.pth``); ``tiny`` is a
few-hundred-KB model of the same structure for tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["PRESETS", "SemanticSamConfig", "TextEncoderConfig", "preset"]


@dataclass
class TextEncoderConfig:
    """The optional language encoder (X-Decoder's CLIP-style text transformer) behind the class heads."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8


@dataclass
class SemanticSamConfig:
    """Every size the model's weights depend on (plus preprocessing constants)."""

    # Swin backbone
    embed_dim: int = 96
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    # pixel decoder (multi-scale deformable-attention encoder + one FPN level)
    conv_dim: int = 256  # a multiple of 32: the official GroupNorm layers have 32 groups
    mask_dim: int = 256
    encoder_layers: int = 6
    num_feature_levels: int = 4  # res3, res4, res5 and one extra stride-64 level
    # interactive decoder
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    decoder_layers: int = 9
    n_points: int = 4  # sampling points per head and level (fixed at 4 in the official code)
    num_mask_tokens: int = 6  # granularity queries per click
    dim_proj: int = 512  # class-embedding space of the object / part heads
    text_encoder: TextEncoderConfig | None = None
    # preprocessing (pixel values in 0..255)
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.280, 103.530])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.120, 57.375])
    size_divisibility: int = 32

    @property
    def stage_dims(self) -> list[int]:
        """Channels of the four backbone stages (res2 .. res5)."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticSamConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"model_type"})
        if unknown:
            raise ValueError(f"unknown Semantic-SAM config entries: {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        if values.get("text_encoder") is not None:
            values["text_encoder"] = TextEncoderConfig(**values["text_encoder"])
        return cls(**values)


PRESETS: dict[str, dict[str, Any]] = {
    "swin_t": {},
    "swin_l": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48], "window_size": 12},
    "tiny": {
        "embed_dim": 16,
        "depths": [1, 1, 2, 1],
        "num_heads": [1, 2, 2, 4],
        "window_size": 4,
        "conv_dim": 32,
        "mask_dim": 32,
        "encoder_layers": 1,
        "hidden_dim": 32,
        "nheads": 8,
        "dim_feedforward": 64,
        "decoder_layers": 2,
        "dim_proj": 24,
    },
}


def preset(name: str, **overrides: Any) -> SemanticSamConfig:
    """The ``swin_t``, ``swin_l`` or ``tiny`` config, with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown Semantic-SAM preset {name!r}; known: {', '.join(PRESETS)}")
    return SemanticSamConfig(**{**PRESETS[name], **overrides})
