"""SAM's mask decoder for many prompts on one image: what does not depend on the prompt is computed once.

transformers' ``SamMaskDecoder`` repeats the ``(C, 64, 64)`` image embedding (and its positional encoding) for
every prompt and runs the two-way transformer's image side per prompt. :func:`decode_many` computes the same
masks and IoU predictions (float rounding only) with

- the image side of the first two-way layer computed once: its image-side keys are the image embedding
  itself for every prompt, so the key / value projections of the token→image attention and the query
  projection of the image→token attention are image-only;
- every image-side projection of the later attentions folded through the short token side (``heads × T``
  columns, ``T`` = 5 output tokens + the prompt's points, instead of the projection width), as
  ``fast_kernels.fused_bi_attention_forward`` does for Grounding DINO: the token→image logits are
  ``(q W_k) xᵀ`` and its values ``(P x) W_vᵀ`` (the key bias adds a per-query constant, which the softmax
  drops); the image→token logits are ``x (W_qᵀ kᵀ)`` and its output ``P (v W_oᵀ)``;
- the two transposed convolutions of the upscaler as matrix products in a sub-pixel layout (no per-prompt
  ``(C, 64, 64)`` transposes), and only the mask tokens the caller keeps multiplied out;
- prompts in chunks, so a chunk's per-prompt image tensors (about 30 MB a prompt) stay bounded, and the
  upscaler one prompt at a time.

:func:`decoder_flops` counts the multiply-adds of both formulations from the shapes (the benchmark's floor).

:func:`decode_many_hq` does the same for HQ-SAM (``SamHQModel``, its official decoder: see
:mod:`grounded.runtime.compat`): the same two-way transformer with the HQ token, HQ-SAM's image features
(the encoded embedding plus the compressed early ViT features) computed once, its two 3x3 mask-feature
convolutions per prompt in channels-last layout (most of its work: about 5 GFLOP a prompt at ViT-B).
:func:`decode_many_sam2` does it for SAM 2's image decoder (``Sam2Model``): the object-score token, the two
high-resolution feature maps added in the upscaler (laid out once in its sub-pixel order), the decoder's own
choice of the single mask by stability.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from grounded.runtime.compat import sam_hq_decoder_is_buggy

__all__ = [
    "DecoderFlops",
    "decode_many",
    "decode_many_hq",
    "decode_many_sam2",
    "decoder_flops",
    "supports_decode_many",
    "supports_decode_many_hq",
    "supports_decode_many_sam2",
]

#: prompts decoded together (their image-side tensors are about 30 MB a prompt in float32)
CHUNK = 16
#: image positions of one prompt upscaled at a time (a whole 64x64 prompt: 12 MB of intermediates, in L3)
BLOCK = 4096


def supports_decode_many(model: Any) -> bool:
    """Whether ``model`` has transformers' plain SAM mask decoder (SamModel; not HQ-SAM or SAM 2)."""
    decoder = getattr(model, "mask_decoder", None)
    return type(decoder).__name__ == "SamMaskDecoder" and hasattr(
        model, "get_image_wide_positional_embeddings"
    )


@dataclass(frozen=True)
class _Image:
    """The prompt-independent side of one image: embedding + dense prompt, positional encoding, layer-0
    projections (image-major: ``(S, C)``, heads ``(heads, S, head_dim)``)."""

    src: torch.Tensor  # (S, C)
    pos: torch.Tensor  # (S, C)
    keys0: torch.Tensor  # (heads, S, d): first token→image attention's keys
    values0: torch.Tensor  # (heads, S, d)
    queries0: torch.Tensor  # (heads, S, d): first image→token attention's queries


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(S, heads * d)`` → ``(heads, S, d)``."""
    return x.view(x.shape[0], heads, -1).transpose(0, 1)


def _prepare(decoder: Any, embedding: torch.Tensor, pos: torch.Tensor, dense: torch.Tensor) -> _Image:
    channels = embedding.shape[1]
    src = (embedding + dense)[0].reshape(channels, -1).t()  # (S, C)
    pos = pos[0].reshape(channels, -1).t().to(src.dtype)
    layer = decoder.transformer.layers[0]
    to_image, to_token = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    src_pos = src + pos
    return _Image(
        src=src,
        pos=pos,
        keys0=_split_heads(to_image.k_proj(src_pos), to_image.num_attention_heads),
        values0=_split_heads(to_image.v_proj(src), to_image.num_attention_heads),
        queries0=_split_heads(to_token.q_proj(src_pos), to_token.num_attention_heads),
    )


def _one_image(
    name: str,
    model: Any,
    image_embeddings: torch.Tensor,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
) -> tuple[Any, _Image, tuple[int, int], torch.Tensor]:
    """What every ``decode_many*`` checks and shares: one image, one dense embedding for every prompt; the
    decoder, the image side prepared once (:func:`_prepare`), the embedding's ``(h, w)`` and the prompts."""
    if image_embeddings.shape[0] != 1 or sparse_embeddings.shape[0] != 1:
        raise ValueError(f"{name} takes one image")
    if dense_embeddings.shape[0] != 1:
        raise ValueError(f"{name} needs one dense embedding for every prompt (no mask inputs)")
    decoder = model.mask_decoder
    pos = model.get_image_wide_positional_embeddings()
    image = _prepare(decoder, image_embeddings, pos, dense_embeddings)
    size = (int(image_embeddings.shape[2]), int(image_embeddings.shape[3]))
    return decoder, image, size, sparse_embeddings[0]


def _in_chunks(
    prompts: torch.Tensor, chunk: int, decode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode`` of ``chunk`` prompts at a time, its masks and IoU predictions joined: ``(1, N, ...)``."""
    mask_parts, iou_parts = [], []
    for start in range(0, prompts.shape[0], max(1, chunk)):
        masks, iou = decode(prompts[start : start + chunk])
        mask_parts.append(masks)
        iou_parts.append(iou)
    return torch.cat(mask_parts)[None], torch.cat(iou_parts)[None]


def _out_proj(attn: Any) -> Any:
    """An attention's output projection (``out_proj`` in SAM and HQ-SAM, ``o_proj`` in SAM 2)."""
    return attn.out_proj if hasattr(attn, "out_proj") else attn.o_proj


def _tokens_attention(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A transformers ``SamAttention`` on token-only ``(n, T, C)`` inputs (small: the module itself)."""
    return attn(query=query[None], key=key[None], value=value[None])[0][0]


def _token_to_image_shared(attn: Any, queries: torch.Tensor, image: _Image) -> torch.Tensor:
    """First layer's token→image attention: every prompt's tokens attend to the same projected image."""
    n, tokens, _ = queries.shape
    heads = attn.num_attention_heads
    q = attn.q_proj(queries).view(n * tokens, heads, -1).transpose(0, 1)[None]  # (1, heads, nT, d)
    out = F.scaled_dot_product_attention(q, image.keys0[None], image.values0[None], scale=attn.scaling)
    return _out_proj(attn)(out[0].transpose(0, 1).reshape(n, tokens, -1))


def _token_to_image(
    attn: Any, queries: torch.Tensor, keys_pos: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Token→image attention on per-prompt keys ``(n, S, C)``, its key / value projections folded through
    the token side: logits ``(q W_k) (x + pos)ᵀ``, values ``(P x) W_vᵀ + b_v``."""
    n, tokens, channels = queries.shape
    heads = attn.num_attention_heads
    q = attn.q_proj(queries).view(n, tokens, heads, -1)
    weight_k = attn.k_proj.weight.view(heads, -1, channels)  # (heads, d, C)
    folded = torch.einsum("nthd,hdc->nhtc", q, weight_k).reshape(n, 1, heads * tokens, channels)
    pooled = F.scaled_dot_product_attention(folded, keys_pos[:, None], keys[:, None], scale=attn.scaling)
    weight_v = attn.v_proj.weight.view(heads, -1, channels)
    out = torch.einsum("nhtc,hdc->nthd", pooled.view(n, heads, tokens, channels), weight_v)
    out = out + attn.v_proj.bias.view(heads, -1)
    return _out_proj(attn)(out.reshape(n, tokens, -1))


def _token_values(attn: Any, queries_pos: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Image→token attention's token side: keys ``(n, T, heads, d)`` and values through the output
    projection ``(n, heads * T, C)``."""
    n, tokens, channels = queries.shape
    heads = attn.num_attention_heads
    k = attn.k_proj(queries_pos).view(n, tokens, heads, -1)
    v = attn.v_proj(queries).view(n, tokens, heads, -1)
    weight_o = _out_proj(attn).weight.view(channels, heads, -1)  # (C, heads, d)
    values = torch.einsum("nthd,chd->nhtc", v, weight_o).reshape(n, heads * tokens, channels)
    # each head's probabilities sum to 1 over its tokens: the output bias, shared out over the heads' rows
    return k, values + _out_proj(attn).bias / heads


def _image_to_token_shared(
    attn: Any, queries_pos: torch.Tensor, queries: torch.Tensor, image: _Image
) -> torch.Tensor:
    """The image plus the first layer's image→token attention (image queries projected once): ``(n, S, C)``.

    Logits are laid out ``(…, T, S)`` so that the softmax over a prompt's few tokens runs along a long
    contiguous axis."""
    n, tokens, _ = queries.shape
    heads = attn.num_attention_heads
    k, values = _token_values(attn, queries_pos, queries)
    keys = k.permute(2, 0, 1, 3).reshape(heads, n * tokens, -1)  # (heads, nT, d)
    logits = torch.bmm(keys, image.queries0.transpose(1, 2))  # (heads, nT, S)
    probs = (logits * attn.scaling).view(heads, n, tokens, -1).softmax(dim=2)
    probs = probs.transpose(0, 1).reshape(n, heads * tokens, -1)  # (n, heads * T, S)
    return torch.baddbmm(image.src, probs.transpose(1, 2), values)


def _image_to_token(
    attn: Any, queries_pos: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, keys_pos: torch.Tensor
) -> torch.Tensor:
    """``keys`` plus the image→token attention on per-prompt image queries ``(n, S, C)``, the query
    projection folded through the token side: logits ``(W_q k) (x + pos)ᵀ + b_q kᵀ``, output
    ``Pᵀ (v W_oᵀ) + b_o`` (the residual sum in the same product)."""
    n, tokens, channels = queries.shape
    heads = attn.num_attention_heads
    k, values = _token_values(attn, queries_pos, queries)
    weight_q = attn.q_proj.weight.view(heads, -1, channels)  # (heads, d, C)
    folded = torch.einsum("hdc,nthd->nhtc", weight_q, k).reshape(n, heads * tokens, channels)
    bias = torch.einsum("hd,nthd->nht", attn.q_proj.bias.view(heads, -1), k).reshape(n, heads * tokens, 1)
    logits = torch.baddbmm(bias * attn.scaling, folded, keys_pos.transpose(1, 2), alpha=attn.scaling)
    probs = logits.view(n, heads, tokens, -1).softmax(dim=2).view(n, heads * tokens, -1)
    return torch.baddbmm(keys, probs.transpose(1, 2), values)


def _layer_norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _transformer(
    decoder: Any, point_embeddings: torch.Tensor, image: _Image
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-way transformer for ``(n, T, C)`` prompt tokens: final tokens and per-prompt image keys."""
    transformer = decoder.transformer
    queries = point_embeddings
    keys: torch.Tensor | None = None  # None: still the shared image (before the first layer's update)
    keys_pos: torch.Tensor | None = None
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _tokens_attention(layer.self_attn, queries, queries, queries)
        else:
            query = queries + point_embeddings
            queries = queries + _tokens_attention(layer.self_attn, query, query, queries)
        queries = _layer_norm(layer.layer_norm1, queries)
        query = queries + point_embeddings
        if keys is None:
            attn_out = _token_to_image_shared(layer.cross_attn_token_to_image, query, image)
        else:
            assert keys_pos is not None
            attn_out = _token_to_image(layer.cross_attn_token_to_image, query, keys_pos, keys)
        queries = _layer_norm(layer.layer_norm2, queries + attn_out)
        queries = _layer_norm(layer.layer_norm3, queries + layer.mlp(queries))
        query = queries + point_embeddings
        if keys is None:
            keys = _layer_norm(
                layer.layer_norm4,
                _image_to_token_shared(layer.cross_attn_image_to_token, query, queries, image),
            )
        else:
            assert keys_pos is not None
            summed = _image_to_token(layer.cross_attn_image_to_token, query, queries, keys, keys_pos)
            keys = _layer_norm(layer.layer_norm4, summed)
        keys_pos = keys + image.pos
    if keys is None or keys_pos is None:
        raise ValueError("the two-way transformer has no layers")
    query = queries + point_embeddings
    attn_out = _token_to_image(transformer.final_attn_token_to_image, query, keys_pos, keys)
    return _layer_norm(transformer.layer_norm_final_attn, queries + attn_out), keys


def _upscaled_masks(
    decoder: Any,
    keys: torch.Tensor,
    hyper: torch.Tensor,
    size: tuple[int, int],
    high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(n, M, 4h, 4w)`` mask logits: the upscaler's two stride-2 transposed convolutions as matrix products
    over sub-pixel positions, then the hypernetwork product, then one rearrangement of the small masks.

    Every position is upscaled on its own, so this runs :data:`BLOCK` positions of one prompt at a time: the
    intermediate tensors stay in the CPU's last-level cache (a whole ViT-B prompt's are 12 MB) and there are
    few enough calls that a busy machine's thread hand-offs do not dominate (smaller blocks lost there).
    ``high_res``: SAM 2's features added after each convolution, in the sub-pixel layout (:func:`_sub_pixel`)."""
    n, positions, channels = keys.shape
    height, width = size
    conv1, conv2, norm = decoder.upscale_conv1, decoder.upscale_conv2, decoder.upscale_layer_norm
    mid, low = conv1.out_channels, conv2.out_channels
    weight1 = conv1.weight.permute(0, 2, 3, 1).reshape(channels, 4 * mid)  # (C, (a, b, o))
    weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(mid, 4 * low)
    bias1, bias2 = conv1.bias.repeat(4), conv2.bias.repeat(4)
    masks = torch.empty((n, hyper.shape[1], positions * 16), dtype=hyper.dtype, device=hyper.device)
    block = max(1, min(positions, BLOCK))
    for i in range(n):
        for start in range(0, positions, block):
            stop = min(positions, start + block)
            x = torch.addmm(bias1, keys[i, start:stop], weight1)
            if high_res is not None:
                x = x + high_res[0][start:stop]
            x = decoder.activation(_layer_norm(norm, x.view(-1, mid)))
            x = torch.addmm(bias2, x, weight2)
            if high_res is not None:
                x = x + high_res[1][4 * start : 4 * stop]
            x = decoder.activation(x)
            torch.mm(hyper[i], x.view(-1, low).t(), out=masks[i, :, 16 * start : 16 * stop])
    # (y, x, a, b, c, d) → row 4y + 2a + c, column 4x + 2b + d
    masks = masks.view(n, -1, height, width, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return masks.reshape(n, -1, 4 * height, 4 * width)


def _decode_chunk(
    decoder: Any, sparse: torch.Tensor, image: _Image, size: tuple[int, int], multimask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.expand(n, -1, -1), sparse.to(output_tokens.dtype)], dim=1)
    queries, keys = _transformer(decoder, tokens, image)
    picks = range(1, decoder.num_mask_tokens) if multimask else range(1)
    hyper = torch.stack(
        [decoder.output_hypernetworks_mlps[i](queries[:, 1 + i]) for i in picks], dim=1
    )  # (n, M, C / 8)
    masks = _upscaled_masks(decoder, keys, hyper, size)
    iou = decoder.iou_prediction_head(queries[:, 0])
    return masks, iou[:, 1:] if multimask else iou[:, :1]


def decode_many(
    model: Any,
    image_embeddings: torch.Tensor,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
    multimask_output: bool,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.mask_decoder`` of a transformers ``SamModel`` for many prompts on one image.

    Args:
        model: a ``SamModel`` (:func:`supports_decode_many`).
        image_embeddings: ``(1, C, h, w)``.
        sparse_embeddings: the prompt encoder's ``(1, N, P, C)``.
        dense_embeddings: ``(1, C, h, w)``, the same for every prompt (no mask inputs).
        multimask_output: 3 masks a prompt instead of 1, as the decoder's flag.
        chunk: prompts decoded together.

    Returns ``(1, N, M, 4h, 4w)`` mask logits and ``(1, N, M)`` IoU predictions, as the decoder does.
    """
    decoder, image, size, sparse = _one_image(
        "decode_many", model, image_embeddings, sparse_embeddings, dense_embeddings
    )
    return _in_chunks(sparse, chunk, lambda part: _decode_chunk(decoder, part, image, size, multimask_output))


# ---------------------------------------------------------------------------- SAM 2
def supports_decode_many_sam2(model: Any) -> bool:
    """Whether ``model`` has transformers' SAM 2 image mask decoder (``Sam2Model``)."""
    decoder = getattr(model, "mask_decoder", None)
    return type(decoder).__name__ == "Sam2MaskDecoder" and hasattr(
        model, "get_image_wide_positional_embeddings"
    )


def _sub_pixel(
    feat_s1: torch.Tensor, feat_s0: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's high-resolution features in the upscaler's sub-pixel layout: ``(S, (a, b, o))`` for the
    ``(1, C / 4, 2h, 2w)`` map (pixel ``(2y + a, 2x + b)`` of position ``(y, x)``) and ``(4S, (c, d, o))``
    rows ``(y, x, a, b)`` for the ``(1, C / 8, 4h, 4w)`` one (pixel ``(4y + 2a + c, 4x + 2b + d)``)."""
    height, width = size
    mid, low = feat_s1.shape[1], feat_s0.shape[1]
    s1 = feat_s1[0].reshape(mid, height, 2, width, 2).permute(1, 3, 2, 4, 0).reshape(height * width, 4 * mid)
    s0 = feat_s0[0].reshape(low, height, 2, 2, width, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
    return s1, s0.reshape(4 * height * width, 4 * low)


def decode_many_sam2(
    model: Any,
    image_embeddings: torch.Tensor,
    high_resolution_features: Any,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
    multimask_output: bool,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_many` for a transformers ``Sam2Model`` (:func:`supports_decode_many_sam2`): the same
    shared two-way transformer with SAM 2's object-score token, its two high-resolution feature maps added in
    the upscaler (laid out once), and its single-mask output picked by stability as the decoder does.
    Returns ``(1, N, M, 4h, 4w)`` mask logits and ``(1, N, M)`` IoU predictions."""
    decoder, image, size, sparse = _one_image(
        "decode_many_sam2", model, image_embeddings, sparse_embeddings, dense_embeddings
    )
    feat_s0, feat_s1 = high_resolution_features
    high_res = _sub_pixel(feat_s1, feat_s0, size)
    dynamic = not multimask_output and decoder.dynamic_multimask_via_stability and not decoder.training
    tokens_out = decoder.num_mask_tokens
    picks = range(1, tokens_out) if multimask_output else range(tokens_out) if dynamic else range(1)
    output_tokens = torch.cat(
        [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0
    )

    def decode(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat([output_tokens.expand(len(part), -1, -1), part.to(output_tokens.dtype)], dim=1)
        queries, keys = _transformer(decoder, tokens, image)
        hyper = torch.stack(
            [decoder.output_hypernetworks_mlps[i](queries[:, 2 + i]) for i in picks], dim=1
        )  # (n, M, C / 8)
        masks = _upscaled_masks(decoder, keys, hyper, size, high_res)
        iou = decoder.iou_prediction_head(queries[:, 1])
        if multimask_output:
            iou = iou[:, 1:]
        elif dynamic:  # token 0's mask where stable, else the best of tokens 1-3 (the decoder's own rule)
            picked, iou = decoder._dynamic_multimask_via_stability(masks[None], iou[None])
            masks, iou = picked[0], iou[0]
        else:
            iou = iou[:, :1]
        return masks, iou

    return _in_chunks(sparse, chunk, decode)


# ---------------------------------------------------------------------------- HQ-SAM
def supports_decode_many_hq(model: Any) -> bool:
    """Whether ``model`` has transformers' HQ-SAM mask decoder (SamHQModel) computing the official HQ-SAM
    (fixed by :func:`~grounded.runtime.compat.fix_sam_hq_decoder`, or a transformers without the bug)."""
    decoder = getattr(model, "mask_decoder", None)
    if type(decoder).__name__ != "SamHQMaskDecoder" or not hasattr(
        model, "get_image_wide_positional_embeddings"
    ):
        return False
    return bool(getattr(decoder, "_grounded_fixed", False)) or not sam_hq_decoder_is_buggy(decoder)


def _hq_features(decoder: Any, embedding: torch.Tensor, intermediate: Any) -> torch.Tensor:
    """HQ-SAM's prompt-independent ``(1, C / 8, 4h, 4w)`` features: the encoded image embedding plus the
    compressed early ViT features (transformers repeats them for every prompt)."""
    features = decoder.encoder_conv2(
        decoder.activation(decoder.encoder_norm(decoder.encoder_conv1(embedding)))
    )
    if intermediate is not None and len(intermediate) > 0:
        vit = intermediate[0].permute(0, 3, 1, 2).contiguous()
        compressed = decoder.compress_vit_conv1(vit)
        compressed = decoder.compress_vit_conv2(decoder.activation(decoder.compress_vit_norm(compressed)))
        features = features + compressed
    return features


def _upscaled_embedding(decoder: Any, keys: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One prompt's ``(4h * 4w, C / 8)`` upscaled image embedding, pixels row-major, channels last, from its
    ``(S, C)`` keys: the two stride-2 transposed convolutions as matrix products over sub-pixel positions,
    then one rearrangement."""
    channels = keys.shape[1]
    height, width = size
    conv1, conv2, norm = decoder.upscale_conv1, decoder.upscale_conv2, decoder.upscale_layer_norm
    mid, low = conv1.out_channels, conv2.out_channels
    weight1 = conv1.weight.permute(0, 2, 3, 1).reshape(channels, 4 * mid)  # (C, (a, b, o))
    weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(mid, 4 * low)
    x = torch.addmm(conv1.bias.repeat(4), keys, weight1)
    x = decoder.activation(_layer_norm(norm, x.view(-1, mid)))
    x = decoder.activation(torch.addmm(conv2.bias.repeat(4), x, weight2))
    # (y, x, a, b, c, d, o) → row 4y + 2a + c, column 4x + 2b + d, channel o
    x = x.view(height, width, 2, 2, 2, 2, low).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(16 * height * width, low)


def _decode_chunk_hq(
    decoder: Any,
    sparse: torch.Tensor,
    image: _Image,
    hq_features: torch.Tensor,
    size: tuple[int, int],
    multimask: bool,
    hq_token_only: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HQ-SAM for a chunk of prompts. Its mask-feature convolutions (two 3x3 at 4h x 4w, most of the work)
    run one prompt at a time in channels-last layout, where oneDNN's convolution and the channel layer norm
    are fastest (batching prompts in channels-first, as transformers does, was slower per prompt)."""
    n = sparse.shape[0]
    weights = [decoder.iou_token.weight, decoder.mask_tokens.weight, decoder.hq_token.weight]
    output_tokens = torch.cat(weights, dim=0)
    tokens = torch.cat([output_tokens.expand(n, -1, -1), sparse.to(output_tokens.dtype)], dim=1)
    queries, keys = _transformer(decoder, tokens, image)
    sam_tokens = decoder.num_mask_tokens - 1  # num_mask_tokens counts the HQ token
    picks = range(1, sam_tokens) if multimask else range(1)
    hyper = torch.stack(
        [decoder.output_hypernetworks_mlps[i](queries[:, 1 + i]) for i in picks], dim=1
    )  # (n, M, C / 8)
    hyper_hq = decoder.hq_mask_mlp(queries[:, 1 + sam_tokens])  # (n, C / 8)
    iou = decoder.iou_prediction_head(queries[:, 0])
    iou = iou[:, 1:sam_tokens] if multimask else iou[:, :1]
    order = None
    if multimask:  # HQ-SAM orders the multimask outputs by predicted IoU
        iou, order = torch.sort(iou, dim=1, descending=True)
    height, width = 4 * size[0], 4 * size[1]
    masks = torch.empty(
        (n, 1 if hq_token_only else len(picks), height, width), dtype=hyper.dtype, device=hyper.device
    )
    for i in range(n):
        upscaled = _upscaled_embedding(decoder, keys[i], size)  # (4h * 4w, C / 8)
        spatial = upscaled.view(1, height, width, -1).permute(0, 3, 1, 2)  # channels-last NCHW
        refined = decoder.mask_conv1(spatial)
        refined = decoder.mask_conv2(decoder.activation(decoder.mask_norm(refined))) + hq_features
        pixels = refined.permute(0, 2, 3, 1).reshape(height * width, -1)  # a view when channels-last
        hq = (pixels @ hyper_hq[i]).view(1, height, width)
        if hq_token_only:
            masks[i] = hq
            continue
        sam = (upscaled @ hyper[i].t()).t().reshape(-1, height, width)
        if order is not None:
            sam = sam[order[i]]
        masks[i] = sam + hq
    return masks, iou


def decode_many_hq(
    model: Any,
    image_embeddings: torch.Tensor,
    intermediate_embeddings: Any,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
    multimask_output: bool,
    hq_token_only: bool,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_many` for a transformers ``SamHQModel`` (:func:`supports_decode_many_hq`): the same
    shared two-way transformer, HQ-SAM's image features computed once, its mask-feature convolutions per
    prompt. Returns ``(1, N, M, 4h, 4w)`` mask logits and ``(1, N, M')`` IoU predictions, as the decoder
    does (with ``hq_token_only`` its one HQ mask a prompt)."""
    decoder, image, size, sparse = _one_image(
        "decode_many_hq", model, image_embeddings, sparse_embeddings, dense_embeddings
    )
    hq_features = _hq_features(decoder, image_embeddings, intermediate_embeddings)
    hq_features = hq_features.contiguous(memory_format=torch.channels_last)  # the layout of the convolutions
    return _in_chunks(
        sparse,
        chunk,
        lambda part: _decode_chunk_hq(
            decoder, part, image, hq_features, size, multimask_output, hq_token_only
        ),
    )


# ---------------------------------------------------------------------------- the FLOP count
@dataclass(frozen=True)
class DecoderFlops:
    """Floating-point operations (2 per multiply-add) of the mask decoder's matrix products."""

    shared: float  # once per image (decode_many)
    per_prompt: float  # for each prompt (decode_many)
    transformers_per_prompt: float  # transformers' formulation: everything for each prompt

    def total(self, prompts: int) -> float:
        """decode_many's operations for ``prompts`` prompts on one image."""
        return self.shared + prompts * self.per_prompt


def decoder_flops(config: Any, points: int = 2, masks: int = 1) -> DecoderFlops:
    """Matrix-product FLOPs of the SAM mask decoder from a ``SamConfig``'s shapes: ``points`` prompt tokens
    (a box: 2 corners), ``masks`` masks kept (1, or 3 with ``multimask_output``).

    Element-wise work (softmax, layer norms, GELU) is not counted: the floor is the products alone.
    """
    decoder = config.mask_decoder_config
    c, heads, layers = decoder.hidden_size, decoder.num_attention_heads, decoder.num_hidden_layers
    inner, mlp, iou_hidden = (
        c // decoder.attention_downsample_rate,
        decoder.mlp_dim,
        decoder.iou_head_hidden_dim,
    )
    side = config.prompt_encoder_config.image_embedding_size
    outputs = decoder.num_multimask_outputs + 1  # mask tokens
    s, t = side * side, 1 + outputs + points  # IoU token, mask tokens, prompt points
    mid, low = c // 4, c // 8

    # multiply-adds that both formulations do for each prompt: the token side and the output heads
    tokens = layers * (4 * t * c * c + 2 * t * t * c + 2 * t * c * mlp)  # self-attention, MLP
    tokens += (layers + 1) * 2 * t * c * inner  # token→image: query and output projections
    tokens += layers * 2 * t * c * inner  # image→token: key and value projections
    hyper = masks * (2 * c * c + c * low) + (c * iou_hidden + iou_hidden * iou_hidden + iou_hidden * outputs)
    upscale = s * c * 4 * mid + 4 * s * mid * 4 * low  # the two transposed convolutions
    common = tokens + upscale + hyper

    # transformers: every image-side projection for every prompt, attention at the projected width
    projection, attention = s * c * inner, 2 * t * s * inner  # one (S, C) → inner projection; logits + values
    transformers = layers * (4 * projection + 2 * attention) + 2 * projection + attention
    transformers += outputs * 16 * s * low + (outputs - masks) * (2 * c * c + c * low)  # all, then sliced

    # decode_many: layer 0's three image projections once per image; later products folded through the
    # heads × T token side (one fold: heads·T rows against the (S, C) image)
    fold = heads * t * s * c
    ours = 2 * t * s * inner  # layer 0 token→image attention on the shared projections
    ours += s * inner * t + fold  # layer 0 image→token: logits on shared queries, output through v W_o
    ours += (layers - 1) * 4 * fold + 2 * fold  # later layers: 4 folded products; final attention: 2
    # the folds themselves: q W_k and (P x) W_v (2 a token→image attention after layer 0), v W_o (every
    # image→token attention), W_q k and the query bias b_q k (those after layer 0)
    ours += (4 * layers - 1) * t * inner * c + (layers - 1) * t * inner
    ours += masks * 16 * s * low
    return DecoderFlops(
        shared=2.0 * (3 * projection + s * c),  # + the image's positional encoding (S x 2 x C/2)
        per_prompt=2.0 * (ours + common),
        transformers_per_prompt=2.0 * (transformers + common),
    )
