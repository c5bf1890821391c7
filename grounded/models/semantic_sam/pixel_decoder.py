"""Semantic-SAM's pixel decoder (MaskDINO's encoder): multi-scale deformable attention over res3..res5 plus one
extra stride-64 level, then one FPN step down to stride 4 for the mask features. Inference only, pure PyTorch.

The deformable sampling itself is transformers' pure-PyTorch ``multi_scale_deformable_attention`` (the same
``grid_sample`` formulation as the official CPU fallback); the projections around it keep the official names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

__all__ = ["MSDeformAttn", "PixelDecoder", "sine_position_embedding"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), reference points of 2 (points) or 4 (boxes) values."""

    def __init__(self, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,  # (B, Q, C)
        reference: torch.Tensor,  # (B, Q, levels, 2 or 4), normalised to [0, 1]
        value: torch.Tensor,  # (B, S, C)
        shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        b, q, _ = query.shape
        v = self.value_proj(value).view(b, value.shape[1], self.heads, self.dim // self.heads)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        if reference.shape[-1] == 2:
            normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        else:
            locations = (
                reference[:, :, None, :, None, :2]
                + offsets / self.points * reference[:, :, None, :, None, 2:] * 0.5
            )
        out = multi_scale_deformable_attention(v, shapes, locations, weights)
        return self.output_proj(out)


def sine_position_embedding(
    batch: int, h: int, w: int, feats: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """DETR's normalised sine embedding of a ``(h, w)`` grid: ``(batch, 2 * feats, h, w)``, y half first."""
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, device=device, dtype=dtype)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, device=device, dtype=dtype)[None, :].expand(h, w)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    dim_t = torch.arange(feats, device=device, dtype=dtype)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)

    def embed(v: torch.Tensor) -> torch.Tensor:
        p = v[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    pos = torch.cat((embed(y), embed(x)), dim=-1).permute(2, 0, 1)
    return pos[None].expand(batch, -1, -1, -1)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, ffn: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x + pos, reference, x, shapes))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class Encoder(nn.Module):
    def __init__(self, layers: int, dim: int, ffn: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, ffn, levels, heads, points) for _ in range(layers))


class DeformableTransformer(nn.Module):
    """The encoder-only deformable transformer (``transformer.level_embed`` + ``transformer.encoder.layers``)."""

    def __init__(self, dim: int, layers: int, ffn: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(levels, dim))
        self.encoder = Encoder(layers, dim, ffn, levels, heads, points)

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor]) -> torch.Tensor:
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        p = torch.cat(
            [q.flatten(2).transpose(1, 2) + self.level_embed[i][None, None] for i, q in enumerate(pos)], 1
        )
        refs = []
        for h, w in shapes:  # every pixel centre of every level (no padding mask: valid ratios are 1)
            ry, rx = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, device=x.device, dtype=torch.float32) / h,
                torch.linspace(0.5, w - 0.5, w, device=x.device, dtype=torch.float32) / w,
                indexing="ij",
            )
            refs.append(torch.stack((rx.reshape(-1), ry.reshape(-1)), -1))
        reference = torch.cat(refs, 0)[None, :, None, :].expand(x.shape[0], -1, len(shapes), -1).to(x.dtype)
        for layer in self.encoder.layers:
            x = layer(x, p, reference, shapes)
        return x


class ConvNorm(nn.Module):
    """A convolution followed by GroupNorm(32) (detectron2's ``Conv2d(..., norm=...)``: keys ``weight``,
    ``norm.weight``, ``norm.bias``)."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, kernel, kernel))
        self.norm = nn.GroupNorm(32, cout)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.conv2d(x, self.weight, None, 1, self.padding))


class PixelDecoder(nn.Module):
    """Backbone features → ``(mask_features at stride 4, [4 multi-scale maps at strides 8, 16, 32, 64])``."""

    def __init__(
        self,
        in_dims: list[int],  # channels of res2..res5
        conv_dim: int,
        mask_dim: int,
        layers: int,
        ffn: int,
        heads: int,
        levels: int = 4,
        points: int = 4,
    ) -> None:
        super().__init__()
        if levels != 4:
            raise ValueError(
                "the Semantic-SAM pixel decoder has 4 levels (res3, res4, res5 and a stride-64 one)"
            )
        proj: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(32, conv_dim)) for c in in_dims[1:]
        ]
        proj.append(nn.Sequential(nn.Conv2d(in_dims[3], conv_dim, 3, 2, 1), nn.GroupNorm(32, conv_dim)))
        self.input_proj = nn.ModuleList(proj)
        self.transformer = DeformableTransformer(conv_dim, layers, ffn, levels, heads, points)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.adapter_1 = ConvNorm(in_dims[0], conv_dim, 1)
        self.layer_1 = ConvNorm(conv_dim, conv_dim, 3)
        self.conv_dim = conv_dim

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = [features[k].float() for k in ("res3", "res4", "res5")]
        srcs = [proj(f) for proj, f in zip(self.input_proj, feats, strict=False)]
        srcs.append(self.input_proj[3](feats[2]))  # extra stride-64 level from res5
        pos = [
            sine_position_embedding(s.shape[0], s.shape[2], s.shape[3], self.conv_dim // 2, s.device, s.dtype)
            for s in srcs
        ]
        memory = self.transformer(srcs, pos)
        sizes = [s.shape[2] * s.shape[3] for s in srcs]
        maps = [
            m.transpose(1, 2).reshape(m.shape[0], self.conv_dim, s.shape[2], s.shape[3])
            for m, s in zip(memory.split(sizes, 1), srcs, strict=True)
        ]
        lateral = self.adapter_1(features["res2"].float())
        fpn = lateral + F.interpolate(maps[0], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        fpn = F.relu(self.layer_1(fpn))
        return self.mask_features(fpn), maps
