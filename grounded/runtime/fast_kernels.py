"""Faster CPU/GPU kernels swapped into transformers' Grounding DINO and SAM, and content-keyed feature caches.

None of these change what the models compute, only how (in inference; the fusion rewrite defers to the
original when the module is training):

- :func:`deformable_attention`: multi-scale deformable attention as one ``embedding_bag`` (a weighted sum of
  gathered rows) over zero-bordered value maps, instead of one ``grid_sample`` per level, a stack of every
  sampled value and a multiply-sum. Same bilinear sampling with zero padding; differs from the
  ``grid_sample`` path only by float rounding (about 1e-6 relative).
- :func:`fused_bi_attention_forward`: Grounding DINO's image↔text fusion attention with its three
  image-side 256→1024→256 projections folded through the short text side (a quarter of the multiply-adds
  at the usual prompt lengths); the same products, associated differently.
- :func:`rel_pos_attention_forward`: SAM's ViT attention with its decomposed relative-position bias added
  for a block of queries at a time inside a reused buffer, instead of materialising (and copying) the full
  ``(heads, HW, HW)`` bias of a global-attention layer. Bit-identical to transformers' SDPA attention.
- :class:`ContentCache`: a module wrapper that remembers outputs keyed by the bytes of its tensor inputs
  (Grounding DINO's image backbone and text encoder), so a new prompt on the same image skips the backbone
  and the same prompt on a new image skips BERT.
"""

from __future__ import annotations

import hashlib
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grounded.core.lru import LruCache

__all__ = [
    "ContentCache",
    "FastDeformableAttention",
    "accelerate_grounding_dino",
    "accelerate_sam",
    "compile_modules",
    "deformable_attention",
    "fused_bi_attention_forward",
    "rel_pos_attention_forward",
    "tensor_digest",
]

# bytes of relative-position bias built at once by rel_pos_attention_forward
_BIAS_BLOCK_BYTES = 64 * 1024 * 1024
# what fused_bi_attention_forward uses of transformers' GroundingDinoBiMultiHeadAttention
_BI_ATTENTION_PARTS = (
    "vision_proj",
    "text_proj",
    "values_vision_proj",
    "values_text_proj",
    "out_vision_proj",
    "out_text_proj",
    "num_heads",
    "head_dim",
    "scale",
)
# rows of the value table deformable_attention numbers in float32 (integers are exact below 2**24)
_MAX_TABLE_ROWS = 2**24
# the text-encoder cache keeps this many prompts per cached image
TEXT_CACHE_FACTOR = 8


# ---------------------------------------------------------------------------- deformable attention
def deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention: ``(B, Q, heads * head_dim)``.

    Args:
        value: ``(B, S, heads, head_dim)``, the levels' ``H*W`` positions one after the other.
        spatial_shapes: ``(H, W)`` of each level.
        sampling_locations: ``(B, Q, heads, levels, points, 2)`` normalised ``(x, y)``; as
            ``grid_sample(align_corners=False)``, pixel centres at ``(i + 0.5) / size``, zeros outside.
        attention_weights: ``(B, Q, heads, levels, points)``.
    """
    b, s, heads, head_dim = value.shape
    padded_rows = sum((h + 3) * (w + 3) for h, w in spatial_shapes) * heads
    if b > 1 and b * padded_rows >= _MAX_TABLE_ROWS:  # float row numbers must stay exact: split the batch
        half = b // 2
        parts = [(value[:half], sampling_locations[:half], attention_weights[:half])]
        parts.append((value[half:], sampling_locations[half:], attention_weights[half:]))
        return torch.cat([deformable_attention(v, spatial_shapes, loc, w) for v, loc, w in parts])
    q, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    dev, dt = value.device, torch.float32  # float32: the row arithmetic must be exact
    # each level padded with one zero row/column before and two after: every bilinear corner of a clamped
    # location is inside the table, and corners outside the map read zeros
    tables, starts, start = [], [], 0
    levels_values = value.split([h * w for h, w in spatial_shapes], dim=1)
    for (h, w), level in zip(spatial_shapes, levels_values, strict=True):
        padded = F.pad(level.reshape(b, h, w, heads * head_dim), (0, 0, 1, 2, 1, 2))
        tables.append(padded.reshape(b, -1, heads, head_dim))
        starts.append(start)
        start += (h + 3) * (w + 3)
    table = torch.cat(tables, 1).to(dt)  # (B, S_pad, heads, head_dim)
    if b * start * heads >= _MAX_TABLE_ROWS:
        raise ValueError(f"deformable_attention: {s} positions x {heads} heads is too large")

    # Per-(level, point) constants, so that every elementwise step below runs on contiguous
    # (B, Q, heads, levels * points) tensors with a contiguous innermost operand.
    def per_sample(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=dt, device=dev).repeat_interleave(points)

    width, height = per_sample([w for _, w in spatial_shapes]), per_sample([h for h, _ in spatial_shapes])
    row = (width + 3) * heads  # table rows per padded image row
    origin = per_sample([first * heads for first in starts]) + row + heads  # pixel (0, 0), head 0
    base = (
        torch.arange(b, device=dev, dtype=dt)[:, None, None, None] * (start * heads)
        + torch.arange(heads, device=dev, dtype=dt)[None, None, :, None]
    )  # (B, 1, heads, 1): image and head offsets in the table
    loc = sampling_locations.to(dt).reshape(b, q, heads, levels * points, 2)
    minus_half, minus_one = torch.tensor(-0.5, dtype=dt, device=dev), torch.tensor(-1.0, dtype=dt, device=dev)
    # pixel coordinates; clamping to [-1, size] keeps every sample that can touch the map exact and sends
    # the rest to zeros
    x = torch.maximum(torch.minimum(torch.addcmul(minus_half, loc[..., 0], width), width), minus_one)
    y = torch.maximum(torch.minimum(torch.addcmul(minus_half, loc[..., 1], height), height), minus_one)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x.sub_(x0), y.sub_(y0)
    top_left = torch.addcmul(x0.mul_(heads).add_(origin).add_(base), y0, row).to(torch.int32)
    attention = attention_weights.to(dt).reshape(b, q, heads, levels * points)
    bottom = attention * fy
    top = attention - bottom
    top_right, bottom_right = top * fx, bottom * fx
    step = row.to(torch.int32)
    # one bag per (image, query, head) holding its 4 corners x levels x points samples (order is free)
    rows = torch.cat([top_left, top_left + heads, top_left + step, top_left + (step + heads)], -1)
    weights = torch.cat([top - top_right, top_right, bottom - bottom_right, bottom_right], -1)
    out = F.embedding_bag(
        rows.view(b * q * heads, -1),
        table.view(-1, head_dim),
        per_sample_weights=weights.view(b * q * heads, -1),
        mode="sum",
    )
    return out.view(b, q, heads * head_dim).to(value.dtype)


class FastDeformableAttention(nn.Module):
    """Drop-in for transformers' ``MultiScaleDeformableAttention`` (the kernel inside the attention layer)."""

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        shapes = [(int(h), int(w)) for h, w in value_spatial_shapes_list]
        return deformable_attention(value, shapes, sampling_locations, attention_weights)


# ---------------------------------------------------------------------------- image-text fusion
def fused_bi_attention_forward(
    self: Any,
    vision_features: torch.Tensor,
    text_features: torch.Tensor,
    vision_attention_mask: torch.Tensor | None = None,
    text_attention_mask: torch.Tensor | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Grounding DINO's image↔text cross-attention with the projections folded through the short text side.

    Bound as ``forward`` of transformers' ``GroundingDinoBiMultiHeadAttention``. The original projects all N
    image tokens three times to the 1024-wide attention space (queries, values, and back from the outputs);
    with L ≤ 256 text tokens the same products are cheaper through the text side (matrix products are
    associative): logits ``V (Wq^T K^T)``, text-side outputs ``(P^T V) Wv^T``, image-side outputs
    ``P (T_v Wo^T)``: N×256×4L instead of N×256×1024 multiply-adds each. The max-subtraction, ±50000 clamps,
    masks and softmaxes are the original's, in the same order.
    """
    if self.training:  # dropout on the attention probabilities: the original
        return type(self).forward(
            self, vision_features, text_features, vision_attention_mask, text_attention_mask
        )
    batch, tokens, _ = vision_features.shape
    heads, head_dim = self.num_heads, self.head_dim
    length = text_features.shape[1]
    keys = self.text_proj(text_features).view(batch, length, heads, head_dim)
    weight_q = self.vision_proj.weight.view(heads, head_dim, -1)  # (H, D, C)
    query_keys = torch.einsum("hdc,blhd->bchl", weight_q, keys) * self.scale  # (B, C, H, L)
    query_bias = torch.einsum("hd,blhd->bhl", self.vision_proj.bias.view(heads, head_dim), keys) * self.scale
    logits = torch.baddbmm(
        query_bias.reshape(batch, 1, heads * length),
        vision_features,
        query_keys.reshape(batch, -1, heads * length),
    ).view(batch, tokens, heads, length)
    logits = (logits - logits.max()).clamp(min=-50000, max=50000)
    text_logits = (logits - logits.amax(dim=1, keepdim=True)).clamp(min=-50000, max=50000)
    if vision_attention_mask is not None:
        text_logits = text_logits.masked_fill(vision_attention_mask[:, :, None, None], float("-inf"))
    text_probs = text_logits.softmax(dim=1)  # over the image tokens
    if text_attention_mask is not None:
        logits = logits.masked_fill(text_attention_mask[:, None, None, :], float("-inf"))
    vision_probs = logits.softmax(dim=-1)  # over the text tokens
    # image side: P (T_v Wo^T) + bo
    text_values = self.values_text_proj(text_features).view(batch, length, heads, head_dim)
    weight_o = self.out_vision_proj.weight.view(-1, heads, head_dim)  # (C, H, D)
    values_out = torch.einsum("blhd,chd->bhlc", text_values, weight_o).reshape(batch, heads * length, -1)
    vision_out = torch.baddbmm(
        self.out_vision_proj.bias.view(1, 1, -1), vision_probs.view(batch, tokens, -1), values_out
    )
    # text side: (P^T V) Wv^T + rowsum(P) bv, then the output projection
    pooled = torch.bmm(text_probs.view(batch, tokens, -1).transpose(1, 2), vision_features)  # (B, H*L, C)
    weight_v = self.values_vision_proj.weight.view(heads, head_dim, -1)  # (H, D, C)
    text_out = torch.einsum("bhlc,hdc->blhd", pooled.view(batch, heads, length, -1), weight_v)
    bias_v = self.values_vision_proj.bias.view(heads, head_dim)
    text_out = text_out + text_probs.sum(dim=1).transpose(1, 2)[..., None] * bias_v
    text_out = self.out_text_proj(text_out.reshape(batch, length, heads * head_dim))
    vision_weights = vision_probs.permute(0, 2, 1, 3).reshape(batch * heads, tokens, length)
    text_weights = text_probs.permute(0, 2, 3, 1).reshape(batch * heads, length, tokens)
    return (vision_out, vision_weights), (text_out, text_weights)


# ---------------------------------------------------------------------------- SAM ViT attention
def rel_pos_attention_forward(
    self: Any, hidden_states: torch.Tensor, output_attentions: bool = False
) -> tuple[torch.Tensor, None]:
    """SAM ViT attention with decomposed relative positions, the bias built a block of queries at a time.

    Bound as ``forward`` of transformers' ``SamVisionAttention`` / ``SamHQVisionAttention`` (uses their
    ``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w`` and ``get_rel_pos``).
    """
    batch, height, width, _ = hidden_states.shape
    heads, tokens = self.num_attention_heads, height * width
    qkv = self.qkv(hidden_states).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)  # (B, heads, HW, C), strided views
    head_dim = query.shape[-1]
    key, value = key.contiguous(), value.contiguous()
    out = torch.empty((batch, heads, tokens, head_dim), dtype=value.dtype, device=value.device)
    if self.use_rel_pos:
        rel_h = self.get_rel_pos(height, height, self.rel_pos_h).to(query.dtype)  # (H, H, C)
        rel_w = self.get_rel_pos(width, width, self.rel_pos_w).to(query.dtype)
        grid = query.reshape(batch * heads, height, width, head_dim)
        bias_h = torch.einsum("bhwc,hkc->bhwk", grid, rel_h).reshape(batch, heads, tokens, height, 1)
        bias_w = torch.einsum("bhwc,wkc->bhwk", grid, rel_w).reshape(batch, heads, tokens, 1, width)
        row_bytes = heads * tokens * query.element_size()
        rows = max(1, _BIAS_BLOCK_BYTES // row_bytes)  # (batch * query) rows of bias per block
        per_image = min(tokens, rows)
        images = max(1, rows // tokens) if per_image == tokens else 1
        buffer = torch.empty(
            (images, heads, per_image, height, width), dtype=query.dtype, device=query.device
        )
        for b0 in range(0, batch, images):
            b1 = min(batch, b0 + images)
            for q0 in range(0, tokens, per_image):
                q1 = min(tokens, q0 + per_image)
                bias = buffer[: b1 - b0, :, : q1 - q0]
                torch.add(bias_h[b0:b1, :, q0:q1], bias_w[b0:b1, :, q0:q1], out=bias)
                out[b0:b1, :, q0:q1] = F.scaled_dot_product_attention(
                    query[b0:b1, :, q0:q1],
                    key[b0:b1],
                    value[b0:b1],
                    attn_mask=bias.view(b1 - b0, heads, q1 - q0, tokens),
                )
    else:
        out = F.scaled_dot_product_attention(query, key, value)
    merged = out.view(batch, heads, height, width, head_dim).permute(0, 2, 3, 1, 4)
    return self.proj(merged.reshape(batch, height, width, heads * head_dim)), None


# ---------------------------------------------------------------------------- content caches
def tensor_digest(value: Any, hasher: Any = None) -> str:
    """A digest of every tensor's dtype, shape and bytes (and of other values' ``repr``) in a nested value."""
    hasher = hasher or hashlib.blake2b(digest_size=20)
    if isinstance(value, torch.Tensor):
        hasher.update(f"{value.dtype}{tuple(value.shape)}".encode())
        data = value.detach().contiguous().cpu()
        if data.dtype == torch.bfloat16 or data.dtype == torch.bool:
            data = data.view(torch.uint8) if data.dtype == torch.bool else data.view(torch.int16)
        hasher.update(data.numpy().tobytes())
    elif isinstance(value, list | tuple):
        hasher.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            tensor_digest(item, hasher)
    elif isinstance(value, dict):
        for key in sorted(value):
            hasher.update(str(key).encode())
            tensor_digest(value[key], hasher)
    else:
        hasher.update(repr(value).encode())
    return str(hasher.hexdigest())


def _autocast_state() -> tuple[Any, ...]:
    """Whether (and to what) autocast is on: outputs computed under another precision are other entries."""
    return tuple(
        (device, torch.is_autocast_enabled(device), str(torch.get_autocast_dtype(device)))
        for device in ("cpu", "cuda")
    )


def _fresh_containers(value: Any) -> Any:
    """The same tensors in new lists/tuples/dicts (callers may append to what a module returned)."""
    if isinstance(value, list):
        return [_fresh_containers(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_fresh_containers(v) for v in value)
    return value


class ContentCache(nn.Module):
    """Wraps a module; returns its remembered output when called again with inputs of the same content.

    At most ``size`` outputs are kept, least recently used first out; ``size=0`` calls the module every time.
    Outputs are shared between hits, so the caller must not modify them in place (containers are copied).
    ``hits`` and ``misses`` count calls.
    """

    def __init__(self, module: nn.Module, size: int) -> None:
        super().__init__()
        self.module = module
        self._outputs: LruCache[str, Any] = LruCache(max(size, 0))
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        """How many outputs are kept (set it to resize; 0 turns the cache off)."""
        return self._outputs.size

    @size.setter
    def size(self, size: int) -> None:
        self._outputs.size = max(size, 0)
        if not self._outputs.size:
            self._outputs.clear()

    def __getattr__(self, name: str) -> Any:
        """Attributes of the wrapped module (callers reach into it, e.g. ``backbone.position_embedding``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)

    def clear(self) -> None:
        """Forget every remembered output."""
        self._outputs.clear()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.size <= 0:
            return self.module(*args, **kwargs)
        key = tensor_digest((args, kwargs, _autocast_state()))
        if key in self._outputs:
            self.hits += 1
            return _fresh_containers(self._outputs.get(key))
        self.misses += 1
        output = self.module(*args, **kwargs)
        self._outputs.put(key, output)
        return _fresh_containers(output)


# ---------------------------------------------------------------------------- installing
def accelerate_grounding_dino(model: nn.Module, fast_kernels: bool = True, cache_size: int = 0) -> nn.Module:
    """Swap the deformable-attention kernel and cache the image backbone and text encoder, in place.

    ``model`` is a transformers ``GroundingDinoForObjectDetection`` (or MM-Grounding-DINO). The backbone cache
    keeps ``cache_size`` image batches (about 40 MB per 800x1200 image), the text cache
    ``TEXT_CACHE_FACTOR`` times as many prompts. Returns the model.
    """
    inner: Any = getattr(model, "model", model)
    if fast_kernels:
        for module in inner.modules():
            if hasattr(module, "attn") and type(module.attn).__name__ == "MultiScaleDeformableAttention":
                module.attn = FastDeformableAttention()
            if all(hasattr(module, name) for name in _BI_ATTENTION_PARTS):
                module.forward = types.MethodType(fused_bi_attention_forward, module)
    if cache_size > 0:
        if not isinstance(inner.backbone, ContentCache):
            inner.backbone = ContentCache(inner.backbone, cache_size)
        if not isinstance(inner.text_backbone, ContentCache):  # text features are small: keep more
            inner.text_backbone = ContentCache(inner.text_backbone, TEXT_CACHE_FACTOR * cache_size)
    return model


def accelerate_sam(model: nn.Module) -> nn.Module:
    """Bind :func:`rel_pos_attention_forward` to every ViT attention of a SAM / HQ-SAM vision encoder."""
    encoder = getattr(model, "vision_encoder", None)
    if encoder is None:
        return model
    for module in encoder.modules():
        if all(hasattr(module, name) for name in ("qkv", "proj", "use_rel_pos", "get_rel_pos")):
            module.forward = types.MethodType(rel_pos_attention_forward, module)
    return model


def compile_modules(*modules: nn.Module) -> None:
    """``torch.compile`` each module in place (inductor; shapes may change between calls)."""
    for module in modules:
        module.compile()
