"""Semantic-SAM's interactive decoder: K granularity queries per click, refined by deformable cross-attention.

Each click (or box) becomes K content queries ``label_enc(0) + pb_embedding(point|box) + mask_tokens[k]`` that
share one anchor box (a click is a tiny box around the point). Nine DINO-style decoder layers refine them
(self-attention, deformable cross-attention into the pixel decoder's 4 levels, FFN; the anchor is updated by the
shared box head after every layer). The last layer's queries give a mask (``mask_embed`` · mask features), a
predicted IoU (``iou_prediction_head``) and, for the decoupled object / part classification heads, embeddings
(``class_embed`` / ``class_embed_part``) compared with text embeddings. Inference only; the denoising and
training branches of the official decoder are left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grounded.models.semantic_sam.pixel_decoder import MSDeformAttn

__all__ = ["MLP", "InteractiveDecoder", "inverse_sigmoid", "sine_box_embedding"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (keys ``layers.{i}``)."""

    def __init__(self, din: int, hidden: int, dout: int, num_layers: int) -> None:
        super().__init__()
        dims = [din] + [hidden] * (num_layers - 1)
        outs = [hidden] * (num_layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_box_embedding(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """``(..., 4)`` cx, cy, w, h in [0, 1] → ``(..., 4 * dim)`` sine embedding in the order y, x, w, h."""
    scale = 2 * math.pi
    dim_t = torch.arange(dim, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / dim)

    def embed(v: torch.Tensor) -> torch.Tensor:
        p = (v * scale)[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    x, y, w, h = boxes.unbind(-1)
    return torch.cat((embed(y), embed(x), embed(w), embed(h)), dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, ffn: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        tgt: torch.Tensor,  # (B, Q, C)
        pos: torch.Tensor,  # (B, Q, C)
        reference: torch.Tensor,  # (B, Q, levels, 4)
        memory: torch.Tensor,  # (B, S, C)
        shapes: list[tuple[int, int]],
        group: int,
    ) -> torch.Tensor:
        b, q, c = tgt.shape
        qk = (tgt + pos).reshape(b * q // group, group, c)  # self-attention within each group of queries
        v = tgt.reshape(b * q // group, group, c)
        tgt = self.norm2(tgt + self.self_attn(qk, qk, v, need_weights=False)[0].reshape(b, q, c))
        tgt = self.norm1(tgt + self.cross_attn(tgt + pos, reference, memory, shapes))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Decoder(nn.Module):
    """``decoder.layers`` and ``decoder.ref_point_head`` of the official module tree."""

    def __init__(self, layers: int, dim: int, ffn: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, ffn, levels, heads, points) for _ in range(layers))
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)


class InteractiveDecoder(nn.Module):
    """Prompts (anchor boxes) + multi-scale features → per-query masks, IoU predictions and class embeddings."""

    def __init__(
        self,
        dim: int,
        mask_dim: int,
        ffn: int,
        layers: int,
        heads: int,
        points: int,
        num_mask_tokens: int,
        dim_proj: int,
        levels: int = 4,
    ) -> None:
        super().__init__()
        self.num_mask_tokens = num_mask_tokens
        self.decoder = Decoder(layers, dim, ffn, levels, heads, points)
        self.decoder_norm = nn.LayerNorm(dim)
        self.bbox_embed = MLP(dim, dim, 4, 3)  # one box head shared by every layer
        self.mask_embed = MLP(dim, dim, mask_dim, 3)
        self.iou_prediction_head = MLP(dim, dim, 1, 3)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.pb_embedding = nn.Embedding(2, dim)  # 0: point, 1: box
        self.label_enc = nn.Embedding(2, dim)
        self.class_embed = nn.Parameter(torch.zeros(dim, dim_proj))  # object ("whole") head
        self.class_embed_part = nn.Parameter(torch.zeros(dim, dim_proj))  # part head
        self.lang_mapper = nn.Parameter(torch.zeros(dim_proj, dim))  # in the checkpoints; unused at inference

    def queries(self, anchors: torch.Tensor, is_box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Content queries ``(B, N*K, C)`` and unsigmoided anchors ``(B, N*K, 4)`` for ``(B, N, 4)`` cxcywh anchors."""
        k = self.num_mask_tokens
        content = self.label_enc(torch.zeros_like(is_box, dtype=torch.long)) + self.pb_embedding(
            is_box.long()
        )
        content = content.repeat_interleave(k, 1) + self.mask_tokens.weight.repeat(1, is_box.shape[1], 1)
        return content, inverse_sigmoid(anchors).repeat_interleave(k, 1)

    def forward(
        self,
        maps: list[torch.Tensor],  # the pixel decoder's 4 levels, finest first
        mask_features: torch.Tensor,  # (B, mask_dim, H/4, W/4)
        anchors: torch.Tensor,  # (B, N, 4) cx, cy, w, h normalised to the padded image
        is_box: torch.Tensor,  # (B, N) bool
        group: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``masks`` ``(B, N, K, h, w)`` logits, ``iou`` ``(B, N, K)``, ``embeddings`` ``(B, N, K, C)``
        (normalised decoder outputs for the class heads).

        ``group`` is how many queries see each other in self-attention: ``K`` (default) keeps every click
        independent, as in training; ``N*K`` lets all clicks of the call attend to each other, as the official
        demo and automatic generator do (their output then depends on which clicks share a call).
        """
        b, n = is_box.shape
        k = self.num_mask_tokens
        group = k if group is None else group
        if (n * k) % group:
            raise ValueError(f"group {group} does not divide the {n * k} queries")
        levels = maps[::-1]  # coarsest first, as the official decoder flattens them
        shapes = [(int(m.shape[2]), int(m.shape[3])) for m in levels]
        memory = torch.cat([m.flatten(2).transpose(1, 2) for m in levels], 1)
        tgt, ref_unsig = self.queries(anchors, is_box)
        reference = ref_unsig.sigmoid()
        dim = tgt.shape[-1]
        for layer in self.decoder.layers:
            pos = self.decoder.ref_point_head(sine_box_embedding(reference, dim // 2))
            ref_levels = reference[:, :, None].expand(-1, -1, len(shapes), -1)
            tgt = layer(tgt, pos, ref_levels, memory, shapes, group)
            reference = (self.bbox_embed(tgt) + inverse_sigmoid(reference)).sigmoid()
        hidden = self.decoder_norm(self.decoder_norm(tgt))  # the decoder's output norm, then the heads' norm
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(hidden), mask_features)
        iou = self.iou_prediction_head(hidden).squeeze(-1)
        return {
            "masks": masks.view(b, n, k, *masks.shape[-2:]),
            "iou": iou.view(b, n, k),
            "embeddings": hidden.view(b, n, k, -1),
        }

    def class_logits(
        self, embeddings: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, part: bool = False
    ) -> torch.Tensor:
        """Object (or part) logits ``(..., T)`` of decoder embeddings against ``(T, dim_proj)`` unit text embeddings."""
        v = embeddings @ (self.class_embed_part if part else self.class_embed)
        v = v / (v.norm(dim=-1, keepdim=True) + 1e-7)
        return logit_scale.exp() * v @ text.t()
