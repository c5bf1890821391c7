"""RAM / RAM++ inference: Swin image tokens → one query per tag attends to them → one logit per tag.

* Image encoder: transformers' ``SwinModel``; its tokens, prefixed by their average (the "CLS" token the
  original builds the same way), are projected to ``text_dim`` (``image_proj``).
* Label queries: RAM uses one learned embedding per tag; RAM++ has several per tag (embeddings of LLM-written
  descriptions) and mixes them per image with a softmax over their cosine-like similarity to the image's
  CLS embedding, scaled by ``exp(reweight_scale)``. Either way they go through ``label_proj`` and a ReLU.
* Tagging head: layers of cross-attention (tag queries → image tokens) and a feed-forward block, each with a
  residual and a post-LayerNorm; no self-attention between the queries (Query2Label's design, as the original).
* ``classifier``: one shared linear unit per query → the tag's logit; sigmoid > per-class threshold = tag.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grounded.models.ram.config import RamConfig

__all__ = ["RamModel", "TaggingHead", "TaggingLayer"]


class TaggingLayer(nn.Module):
    """Cross-attention from the tag queries to the image tokens, then a GELU feed-forward block (post-norm)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, memory_dim: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(memory_dim, hidden)
        self.v_proj = nn.Linear(memory_dim, hidden)
        self.o_proj = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._split(self.q_proj(queries)),
            self._split(self.k_proj(memory)),
            self._split(self.v_proj(memory)),
        )
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = self.attn_norm(self.o_proj(attended) + queries)
        return self.ffn_norm(self.fc2(F.gelu(self.fc1(x))) + x)


class TaggingHead(nn.Module):
    """A stack of :class:`TaggingLayer`."""

    def __init__(self, config: RamConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TaggingLayer(
                config.head_hidden_size,
                config.head_heads,
                config.head_intermediate_size,
                config.text_dim,
                config.head_layer_norm_eps,
            )
            for _ in range(config.head_layers)
        )

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, memory)
        return queries


def _swin(config: RamConfig) -> nn.Module:
    from transformers import SwinConfig, SwinModel

    swin = SwinConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=3,
        embed_dim=config.embed_dim,
        depths=list(config.depths),
        num_heads=list(config.num_heads),
        window_size=config.window_size,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        hidden_act="gelu",
        use_absolute_embeddings=False,
        layer_norm_eps=1e-5,
    )
    return SwinModel(swin, add_pooling_layer=True)


class RamModel(nn.Module):
    """RAM or RAM++ (``config.variant``): ``forward(pixel_values)`` → tag logits ``(batch, num_classes)``.

    ``pixel_values`` are ``(batch, 3, image_size, image_size)`` ImageNet-normalised images
    (:func:`grounded.models.ram.transform.preprocess`).
    """

    def __init__(self, config: RamConfig) -> None:
        super().__init__()
        self.config = config
        self.vision: Any = _swin(config)
        self.image_proj = nn.Linear(config.vision_width, config.text_dim)
        rows = config.num_classes * config.descriptions_per_class
        self.label_embed = nn.Parameter(torch.zeros(rows, config.text_dim))
        self.label_proj: nn.Module = (
            nn.Identity()
            if config.text_dim == config.head_hidden_size
            else nn.Linear(config.text_dim, config.head_hidden_size)
        )
        self.head = TaggingHead(config)
        self.classifier = nn.Linear(config.head_hidden_size, 1)
        if config.variant == "ram_plus":
            self.reweight_scale = nn.Parameter(torch.tensor(0.0))

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(batch, 1 + tokens, text_dim)``: the projected average token, then the projected tokens."""
        out = self.vision(pixel_values=pixel_values)
        tokens = torch.cat([out.pooler_output.unsqueeze(1), out.last_hidden_state], dim=1)
        return self.image_proj(tokens)

    def label_queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``(batch, num_classes, head_hidden_size)``: one query per tag (per image for RAM++)."""
        batch = image_embeds.shape[0]
        if self.config.variant == "ram":
            labels = self.label_embed.unsqueeze(0).expand(batch, -1, -1)
        else:
            n, d = self.config.num_classes, self.config.descriptions_per_class
            cls = image_embeds[:, 0]
            cls = cls / cls.norm(dim=-1, keepdim=True)
            similarity = self.reweight_scale.exp() * cls @ self.label_embed.t()  # (batch, n * d)
            weights = similarity.view(batch, n, d).softmax(dim=-1)
            descriptions = self.label_embed.view(n, d, -1)
            labels = torch.einsum("bnd,ndk->bnk", weights, descriptions).to(image_embeds.dtype)
        return F.relu(self.label_proj(labels))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image_embeds = self.image_embeds(pixel_values)
        queries = self.label_queries(image_embeds)
        return self.classifier(self.head(queries, image_embeds)).squeeze(-1)
