"""The optional language encoder behind Semantic-SAM's object / part classification heads.

Semantic-SAM models trained with labelled data (not the released SA-1B-only checkpoints, whose config says
``TEXT.ARCH: noencoder``) carry X-Decoder's CLIP-style text transformer: token + position embeddings, pre-norm
residual blocks with causal self-attention and QuickGELU MLPs, a final norm; the end-of-text token's state goes
through ``lang_proj`` and is normalised. Class names become the mean of their prompt-template embeddings.
Parameter names follow the official ``lang_encoder.*`` keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grounded.models.semantic_sam.config import TextEncoderConfig

__all__ = ["TEMPLATES", "TextEncoder"]

#: Prompt templates averaged per class name (a short list; the official evaluation averages a longer one).
TEMPLATES = ("{}.", "a photo of a {}.", "a photo of the {}.", "a photo of one {}.")


class TFLayerNorm(nn.Module):
    """LayerNorm with epsilon inside the square root (eps 1e-12), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype) + self.bias


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_1 = TFLayerNorm(dim)
        self.mlp = _Mlp(dim)
        self.ln_2 = TFLayerNorm(dim)

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.resblocks = nn.ModuleList(_Block(config.width, config.heads) for _ in range(config.layers))
        self.ln_final = TFLayerNorm(config.width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        causal = torch.full((n, n), float("-inf"), device=input_ids.device).triu(1)
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]
        for block in self.resblocks:
            x = block(x, causal)
        return self.ln_final(x)


class TextEncoder(nn.Module):
    """Class names → unit embeddings in the class heads' space (``dim_proj``)."""

    def __init__(self, config: TextEncoderConfig, dim_proj: int) -> None:
        super().__init__()
        self.config = config
        self.lang_encoder = _Transformer(config)
        self.lang_proj = nn.Parameter(torch.zeros(config.width, dim_proj))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``(T, dim_proj)`` of tokenised texts ``(T, L)`` (CLIP ids: end-of-text is the largest)."""
        states = self.lang_encoder(input_ids)
        x = (
            states[torch.arange(len(input_ids), device=input_ids.device), input_ids.argmax(-1)]
            @ self.lang_proj
        )
        return x / (x.norm(dim=-1, keepdim=True) + 1e-7)

    @torch.inference_mode()
    def embed_names(self, names: Sequence[str], tokenizer: Any) -> torch.Tensor:
        """``(len(names), dim_proj)``: each name's embedding averaged over :data:`TEMPLATES`, renormalised."""
        device = self.lang_proj.device
        out = []
        for name in names:
            tokens = tokenizer(
                [t.format(name) for t in TEMPLATES],
                padding="max_length",
                truncation=True,
                max_length=self.config.context_length,
                return_tensors="pt",
            )
            mean = self(tokens["input_ids"].to(device)).mean(0)
            out.append(F.normalize(mean, dim=-1))
        return torch.stack(out) if out else torch.zeros((0, self.lang_proj.shape[1]), device=device)
