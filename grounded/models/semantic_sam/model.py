"""The Semantic-SAM network: Swin backbone → deformable pixel decoder → interactive multi-granularity decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grounded.models.semantic_sam.config import SemanticSamConfig
from grounded.models.semantic_sam.decoder import InteractiveDecoder
from grounded.models.semantic_sam.pixel_decoder import PixelDecoder
from grounded.models.semantic_sam.swin import SwinBackbone
from grounded.models.semantic_sam.text import TextEncoder

__all__ = ["ImageFeatures", "SemanticSamModel"]


@dataclass(frozen=True)
class ImageFeatures:
    """One batch of images through the backbone and pixel decoder (what the interactive decoder needs)."""

    mask_features: torch.Tensor  # (B, mask_dim, Hp/4, Wp/4)
    maps: tuple[torch.Tensor, ...]  # 4 levels, strides 8, 16, 32, 64
    image_size: tuple[int, int]  # (h, w) of the resized image inside the padding
    padded_size: tuple[int, int]  # (Hp, Wp), multiples of size_divisibility

    def select(self, index: int) -> ImageFeatures:
        """The features of one image of the batch (batch of 1)."""
        return ImageFeatures(
            self.mask_features[index : index + 1],
            tuple(m[index : index + 1] for m in self.maps),
            self.image_size,
            self.padded_size,
        )


class SemanticSamModel(nn.Module):
    """Semantic-SAM (Li et al., 2023) for inference: ``encode`` images once, ``decode`` clicks / boxes many times."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: SemanticSamConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.backbone = SwinBackbone(
            c.embed_dim, c.depths, c.num_heads, c.window_size, c.patch_size, c.mlp_ratio
        )
        self.pixel_decoder = PixelDecoder(
            c.stage_dims,
            c.conv_dim,
            c.mask_dim,
            c.encoder_layers,
            c.dim_feedforward,
            c.nheads,
            c.num_feature_levels,
            c.n_points,
        )
        self.predictor = InteractiveDecoder(
            c.hidden_dim,
            c.mask_dim,
            c.dim_feedforward,
            c.decoder_layers,
            c.nheads,
            c.n_points,
            c.num_mask_tokens,
            c.dim_proj,
            c.num_feature_levels,
        )
        self.text = TextEncoder(c.text_encoder, c.dim_proj) if c.text_encoder is not None else None
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` RGB in 0..255 → normalised, zero-padded at the bottom / right to the size divisibility."""
        x = (pixels.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
        d = self.config.size_divisibility
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % d, 0, (-h) % d))

    def encode(self, pixels: torch.Tensor) -> ImageFeatures:
        """Backbone + pixel decoder for ``(B, 3, h, w)`` RGB images in 0..255 (already resized)."""
        x = self.preprocess(pixels)
        features = self.backbone(x)
        with torch.autocast(device_type=x.device.type, enabled=False):  # fp32, as the official code forces
            mask_features, maps = self.pixel_decoder({k: v.float() for k, v in features.items()})
        return ImageFeatures(
            mask_features,
            tuple(maps),
            (int(pixels.shape[-2]), int(pixels.shape[-1])),
            (int(x.shape[-2]), int(x.shape[-1])),
        )

    def decode(
        self,
        features: ImageFeatures,
        anchors: torch.Tensor,
        is_box: torch.Tensor | None = None,
        group: int | None = None,
        upsample: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Mask logits ``(B, N, K, h, w)`` at the resized image size (``upsample=False``: at stride 4 of the
        padded image), IoU predictions ``(B, N, K)`` and the normalised query embeddings ``(B, N, K, C)``.

        ``anchors`` are ``(B, N, 4)`` cx, cy, w, h normalised to the resized image (a click: a 0.005-wide box).
        """
        h, w = features.image_size
        ph, pw = features.padded_size
        scale = torch.tensor([w / pw, h / ph, w / pw, h / ph], device=anchors.device, dtype=torch.float32)
        anchors = anchors.float() * scale  # relative to the padded image, as the official decoder sees them
        if is_box is None:
            is_box = torch.zeros(anchors.shape[:2], dtype=torch.bool, device=anchors.device)
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            out = self.predictor(
                [m.float() for m in features.maps], features.mask_features.float(), anchors, is_box, group
            )
        if upsample:
            out["masks"] = self.upsample(out["masks"], features)
        return out

    @staticmethod
    def upsample(low_res: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
        """Stride-4 logits ``(..., h4, w4)`` → ``(..., h, w)`` at the resized image size (bilinear to the padded
        size, then the padding cropped off, as the official post-processing)."""
        h, w = features.image_size
        ph, pw = features.padded_size
        lead = low_res.shape[:-2]
        flat = low_res.reshape(-1, 1, *low_res.shape[-2:])
        up = F.interpolate(flat, size=(ph, pw), mode="bilinear", align_corners=False)
        return up[:, 0, :h, :w].reshape(*lead, h, w)

    def class_logits(self, embeddings: torch.Tensor, text: torch.Tensor, part: bool = False) -> torch.Tensor:
        """Object (``part=False``) or part logits of decoder embeddings against unit text embeddings ``(T, P)``."""
        scale = self.text.logit_scale if self.text is not None else torch.zeros((), device=embeddings.device)
        return self.predictor.class_logits(embeddings, text.to(embeddings), scale, part=part)
