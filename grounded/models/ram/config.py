"""Sizes of a Recognize Anything model: the Swin image encoder, the label embeddings and the tagging head."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["VARIANTS", "RamConfig"]

#: ``ram``: one label embedding per tag (RAM). ``ram_plus``: several description embeddings per tag, mixed per
#: image by their similarity to the image's global embedding (RAM++).
VARIANTS = ("ram", "ram_plus")


@dataclass
class RamConfig:
    """Architecture of RAM / RAM++ (defaults: the released Swin-L 384 models, 4585 tags).

    Attributes:
        variant: ``"ram"`` or ``"ram_plus"``.
        image_size: square input side (the image is resized to it, aspect ratio not kept, as the original does).
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio: the Swin encoder.
        text_dim: width of the label embeddings and of the projected image tokens (CLIP's text width, 512).
        head_hidden_size, head_layers, head_heads, head_intermediate_size, head_layer_norm_eps: the tagging
            head (cross-attention only layers, BERT-style post-norm, as the original's ``q2l_config.json``).
        num_classes: number of tags.
        descriptions_per_class: label embeddings per tag (1 for RAM, 51 for the released RAM++).
        threshold: the tag threshold of classes that have no per-class one.
    """

    variant: str = "ram"
    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    text_dim: int = 512
    head_hidden_size: int = 768
    head_layers: int = 2
    head_heads: int = 4
    head_intermediate_size: int = 3072
    head_layer_norm_eps: float = 1e-12
    num_classes: int = 4585
    descriptions_per_class: int = 1
    threshold: float = 0.68

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must have the same length")
        if self.variant == "ram" and self.descriptions_per_class != 1:
            raise ValueError("RAM has one label embedding per class (descriptions_per_class=1)")
        if self.head_hidden_size % self.head_heads:
            raise ValueError(
                f"head_hidden_size {self.head_hidden_size} is not a multiple of {self.head_heads}"
            )
        if min(self.num_classes, self.descriptions_per_class, self.image_size) < 1:
            raise ValueError("num_classes, descriptions_per_class and image_size must be at least 1")

    @property
    def vision_width(self) -> int:
        """Channels of the encoder's last stage."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @classmethod
    def swin_large(cls, variant: str = "ram", **changes: Any) -> RamConfig:
        """The released models (``ram_swin_large_14m.pth``, ``ram_plus_swin_large_14m.pth``)."""
        base: dict[str, Any] = {
            "variant": variant,
            "descriptions_per_class": 51 if variant == "ram_plus" else 1,
        }
        return cls(**{**base, **changes})

    @classmethod
    def tiny(cls, variant: str = "ram", num_classes: int = 20, **changes: Any) -> RamConfig:
        """A few-hundred-KB random model for tests: Swin at 224 px with a 7-token window, 16-wide head.

        The text width stays 512: the original code hard-codes it, and the parity reference is built with it.
        """
        base: dict[str, Any] = {
            "variant": variant,
            "image_size": 224,
            "embed_dim": 4,
            "depths": (1, 2, 2, 1),
            "num_heads": (1, 1, 2, 2),
            "window_size": 7,
            "head_hidden_size": 16,
            "head_intermediate_size": 32,
            "num_classes": num_classes,
            "descriptions_per_class": 3 if variant == "ram_plus" else 1,
        }
        return cls(**{**base, **changes})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["depths"], out["num_heads"] = list(self.depths), list(self.num_heads)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RamConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"model_type"})
        if unknown:
            raise ValueError(f"unknown RAM config entries: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in names})
