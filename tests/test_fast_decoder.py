"""grounded.runtime.fast_decoder computes transformers' SAM mask decoder for many prompts (issue 19)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Sam2Model, SamHQModel, SamModel

import grounded.runtime.fast_decoder as fast_decoder
from grounded.adapters import SAM, SAM2
from grounded.core.images import load_image
from grounded.models.testing import sam2_config, sam_config
from grounded.runtime.compat import fix_sam_hq_decoder, sam_hq_decoder_is_buggy
from grounded.runtime.fast_decoder import (
    decode_many,
    decode_many_hq,
    decode_many_sam2,
    decoder_flops,
    supports_decode_many,
    supports_decode_many_hq,
    supports_decode_many_sam2,
)
from grounded.tasks.bench import healthy_weights


def _model(size: str, seed: int = 0) -> SamModel:
    torch.manual_seed(seed)
    model = SamModel(sam_config(size)).eval().requires_grad_(False)
    healthy_weights(model, seed=seed)  # trained-scale weights: masks differ from box to box
    return model


def _boxes(model: SamModel, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    side = model.config.prompt_encoder_config.image_size
    corner = torch.rand(n, 2, generator=gen) * side * 0.7
    size = torch.rand(n, 2, generator=gen) * side * 0.3 + 2
    return torch.cat([corner, corner + size], 1)[None]


def _embedding(model: SamModel, seed: int = 0) -> torch.Tensor:
    side = model.config.prompt_encoder_config.image_embedding_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, model.config.mask_decoder_config.hidden_size, side, side, generator=gen)


def _assert_same(got: tuple[torch.Tensor, torch.Tensor], expected: object) -> None:
    masks, iou = got
    assert masks.shape == expected.pred_masks.shape and iou.shape == expected.iou_scores.shape
    assert (masks - expected.pred_masks).abs().max() <= 1e-4
    assert (iou - expected.iou_scores).abs().max() <= 1e-4
    ours, theirs = masks > 0, expected.pred_masks > 0
    inter = (ours & theirs).flatten(-2).sum(-1).float()
    union = (ours | theirs).flatten(-2).sum(-1).float()
    assert bool((torch.where(union > 0, inter / union.clamp(min=1), 1.0) >= 0.999).all())
    spread = expected.pred_masks.flatten(-2).std(dim=1).mean()  # masks differ from box to box
    assert spread > 0.05 and 0.02 < theirs.float().mean() < 0.98


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize(("chunk", "block"), [(1, 4096), (3, 5), (64, 64)])
def test_decode_many_equals_transformers_for_boxes(monkeypatch, multimask, chunk, block):
    monkeypatch.setattr(fast_decoder, "BLOCK", block)  # upscaler blocks: ragged, one row, a whole prompt
    model = _model("tiny")
    embedding, boxes = _embedding(model), _boxes(model, 7)
    with torch.inference_mode():
        expected = model(image_embeddings=embedding, input_boxes=boxes, multimask_output=multimask)
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        got = decode_many(model, embedding, sparse, dense[:1], multimask, chunk=chunk)
    _assert_same(got, expected)


def test_decode_many_equals_transformers_for_points():
    model = _model("tiny", seed=3)
    embedding = _embedding(model, seed=3)
    points = torch.tensor([[[[10.0, 20.0], [90.0, 70.0]], [[64.0, 64.0], [5.0, 120.0]], [[30, 100], [1, 1]]]])
    labels = torch.tensor([[[1, 0], [1, 1], [1, -1]]])
    with torch.inference_mode():
        expected = model(image_embeddings=embedding, input_points=points, input_labels=labels)
        sparse, dense = model.prompt_encoder(points, labels, None, None)
        got = decode_many(model, embedding, sparse, dense[:1], True)
    _assert_same(got, expected)


def test_decode_many_refuses_what_it_cannot_share():
    model = _model("tiny")
    embedding = _embedding(model)
    sparse, dense = model.prompt_encoder(None, None, _boxes(model, 2), None)
    with pytest.raises(ValueError, match="one image"):
        decode_many(model, embedding.expand(2, -1, -1, -1), sparse, dense[:1], False)
    with pytest.raises(ValueError, match="dense"):
        decode_many(model, embedding, sparse, dense.expand(2, -1, -1, -1), False)
    assert supports_decode_many(model)


def _math_attention(query, key, value, scale):
    return ((query @ key.transpose(-1, -2)) * scale).softmax(-1) @ value


@pytest.mark.parametrize("size", ["tiny", "vit-b"])
def test_decoder_flops_count_the_products(monkeypatch, size):
    """The floor's FLOP count equals torch's count of both formulations' matrix products (SDPA written out
    as products, eager attention in transformers, so that every product is counted)."""
    config = sam_config(size)
    config._attn_implementation = "eager"
    model = SamModel(config).eval().requires_grad_(False)
    for module in model.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation = "eager"
    monkeypatch.setattr(
        fast_decoder,
        "F",
        type(
            "F",
            (),
            {"scaled_dot_product_attention": staticmethod(_math_attention), "layer_norm": torch.layer_norm},
        ),
    )
    n = 3
    boxes, embedding = _boxes(model, n), _embedding(model)
    sparse, dense = model.prompt_encoder(None, None, boxes, None)
    positions = model.get_image_wide_positional_embeddings()  # SamModel's, outside its decoder
    for multimask in (False, True):
        with FlopCounterMode(display=False) as theirs:
            model.mask_decoder(embedding, positions, sparse, dense, multimask)
        with FlopCounterMode(display=False) as ours:
            decode_many(model, embedding, sparse, dense[:1], multimask)
        flops = decoder_flops(config, masks=3 if multimask else 1)
        assert flops.transformers_per_prompt == pytest.approx(theirs.get_total_flops() / n, rel=1e-6)
        assert flops.total(n) == pytest.approx(ours.get_total_flops(), rel=1e-5)
    if size == "vit-b":  # sharing the first layer's image side and folding the rest: under half the work
        assert flops.per_prompt < 0.5 * flops.transformers_per_prompt


def _check_adapter_uses_the_shared_decoder(make, name: str, astronaut, monkeypatch) -> None:
    """The adapter ``make(fast_kernels)`` builds decodes 3 boxes through ``fast_decoder.<name>`` on its fast
    path (twice: ``decode`` and ``_decode_raw``) and never on the baseline, and both agree."""
    image = load_image(astronaut, name="astronaut")
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [100.0, 50.0, 200.0, 500.0], [0.0, 0.0, 511.0, 511.0]])
    results = {}
    calls = []
    real = getattr(fast_decoder, name)
    monkeypatch.setattr(f"grounded.adapters.sam.{name}", lambda *a, **k: calls.append(1) or real(*a, **k))
    for fast in (True, False):
        segmenter = make(fast)
        segmenter.warm_up()
        healthy_weights(segmenter._model, seed=2)
        (embedding,) = segmenter.encode([image])
        results[fast] = segmenter.decode(embedding, boxes), segmenter._decode_raw(embedding, boxes=boxes)
    assert calls == [1, 1]  # the fast path, twice; the baseline never
    (fast_masks, fast_iou), (fast_low, _) = results[True]
    (slow_masks, slow_iou), (slow_low, _) = results[False]
    torch.testing.assert_close(fast_iou, slow_iou, atol=1e-5, rtol=1e-5)
    assert (fast_low - slow_low).abs().max() <= 1e-4
    assert (fast_masks == slow_masks).float().mean() > 0.9999
    assert 0.01 < fast_masks.float().mean() < 0.99


def test_sam_adapter_uses_the_shared_decoder(tiny_sam, astronaut, monkeypatch):
    def make(fast: bool) -> SAM:
        return SAM(model=str(tiny_sam), device="cpu", fast_kernels=fast, cache_size=0, max_boxes_per_call=2)

    _check_adapter_uses_the_shared_decoder(make, "decode_many", astronaut, monkeypatch)


@pytest.mark.slow
def test_decode_many_equals_transformers_real_size():
    """SAM ViT-B's decoder (256 channels, 64x64 embedding), 100 boxes on one image."""
    model = _model("vit-b")
    embedding, boxes = _embedding(model), _boxes(model, 100)
    with torch.inference_mode():
        expected = model(image_embeddings=embedding, input_boxes=boxes, multimask_output=False)
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        got = decode_many(model, embedding, sparse, dense[:1], False)
    _assert_same(got, expected)


def test_decode_many_under_bf16_autocast_stays_close():
    """The GPU path's precision (bf16 autocast) runs and stays near fp32 (bf16 rounding only)."""
    model = _model("tiny")
    embedding, boxes = _embedding(model), _boxes(model, 5)
    with torch.inference_mode():
        expected = model(image_embeddings=embedding, input_boxes=boxes, multimask_output=False)
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            masks, iou = decode_many(model, embedding, sparse, dense[:1], False)
    scale = expected.pred_masks.abs().max()
    assert (masks.float() - expected.pred_masks).abs().max() < 0.05 * scale
    assert ((masks > 0) == (expected.pred_masks > 0)).float().mean() > 0.98
    assert (iou.float() - expected.iou_scores).abs().max() < 0.05


def _hq_model(seed: int = 0) -> SamHQModel:
    torch.manual_seed(seed)
    model = SamHQModel(sam_config("tiny", hq=True)).eval().requires_grad_(False)
    healthy_weights(model, seed=seed)
    fix_sam_hq_decoder(model)  # the official HQ-SAM (the batched path computes that one)
    return model


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("hq_token_only", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_decode_many_hq_equals_transformers(multimask, hq_token_only, chunk):
    """HQ-SAM's decoder (transformers' SamHQModel with the official decoder restored), boxes and points."""
    model = _hq_model()
    embedding, boxes = _embedding(model), _boxes(model, 7)
    vit = model.config.vision_config
    side = vit.image_size // vit.patch_size
    gen = torch.Generator().manual_seed(4)
    intermediate = [torch.randn(1, side, side, vit.hidden_size, generator=gen)]
    assert supports_decode_many_hq(model) and not supports_decode_many(model)
    with torch.inference_mode():
        expected = model(
            image_embeddings=embedding,
            intermediate_embeddings=intermediate,
            input_boxes=boxes,
            multimask_output=multimask,
            hq_token_only=hq_token_only,
        )
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        got = decode_many_hq(
            model, embedding, intermediate, sparse, dense[:1], multimask, hq_token_only, chunk=chunk
        )
    _assert_same(got, expected)


def test_decode_many_hq_needs_the_official_decoder():
    torch.manual_seed(0)
    model = SamHQModel(sam_config("tiny", hq=True)).eval()
    assert supports_decode_many_hq(model) is not sam_hq_decoder_is_buggy(model.mask_decoder)
    fix_sam_hq_decoder(model)
    assert supports_decode_many_hq(model)


def test_hq_adapter_uses_the_shared_decoder(tiny_sam_hq, astronaut, monkeypatch):
    def make(fast: bool) -> SAM:
        return SAM(model=str(tiny_sam_hq), device="cpu", fast_kernels=fast, cache_size=0)

    _check_adapter_uses_the_shared_decoder(make, "decode_many_hq", astronaut, monkeypatch)


@pytest.mark.slow
def test_decode_many_hq_equals_transformers_real_size():
    """HQ-SAM ViT-B's decoder (256 channels, 64x64 embedding, 768-wide early ViT features), 100 boxes."""
    torch.manual_seed(0)
    model = SamHQModel(sam_config("vit-b", hq=True)).eval().requires_grad_(False)
    healthy_weights(model)
    fix_sam_hq_decoder(model)
    embedding, boxes = _embedding(model), _boxes(model, 100)
    vit = model.config.vision_config
    side = vit.image_size // vit.patch_size
    intermediate = [torch.randn(1, side, side, vit.hidden_size, generator=torch.Generator().manual_seed(1))]
    with torch.inference_mode():
        expected = model(
            image_embeddings=embedding,
            intermediate_embeddings=intermediate,
            input_boxes=boxes,
            multimask_output=False,
        )
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        got = decode_many_hq(model, embedding, intermediate, sparse, dense[:1], False, False)
    _assert_same(got, expected)


def test_decode_many_hq_under_bf16_autocast_stays_close():
    """HQ-SAM's batched decoder under the GPU path's bf16 autocast: runs, stays near fp32."""
    model = _hq_model()
    embedding, boxes = _embedding(model), _boxes(model, 5)
    vit = model.config.vision_config
    side = vit.image_size // vit.patch_size
    intermediate = [torch.randn(1, side, side, vit.hidden_size, generator=torch.Generator().manual_seed(4))]
    with torch.inference_mode():
        expected = model(
            image_embeddings=embedding,
            intermediate_embeddings=intermediate,
            input_boxes=boxes,
            multimask_output=False,
        )
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            masks, iou = decode_many_hq(model, embedding, intermediate, sparse, dense[:1], False, False)
    scale = expected.pred_masks.abs().max()
    assert (masks.float() - expected.pred_masks).abs().max() < 0.05 * scale
    assert ((masks > 0) == (expected.pred_masks > 0)).float().mean() > 0.98
    assert (iou.float() - expected.iou_scores).abs().max() < 0.05


def _sam2_model(seed: int = 0) -> Sam2Model:
    torch.manual_seed(seed)
    model = Sam2Model(sam2_config("tiny")).eval().requires_grad_(False)
    healthy_weights(model, seed=seed)
    return model


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("stability", [None, 0.0, 1.01])  # the default / always stable / never stable
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_decode_many_sam2_equals_transformers(multimask, stability, chunk):
    """SAM 2's image decoder (transformers' Sam2Model): high-resolution features, the object-score token, the
    single mask picked by stability."""
    model = _sam2_model()
    if stability is not None:
        model.mask_decoder.dynamic_multimask_stability_thresh = stability
    side = model.config.prompt_encoder_config.image_size
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(5))
    boxes = _boxes(model, 7)
    assert supports_decode_many_sam2(model) and not supports_decode_many(model)
    with torch.inference_mode():
        levels = model.get_image_embeddings(pixels)
        expected = model(image_embeddings=levels, input_boxes=boxes, multimask_output=multimask)
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        got = decode_many_sam2(model, levels[-1], levels[:-1], sparse, dense[:1], multimask, chunk=chunk)
    _assert_same(got, expected)


def test_sam2_adapter_uses_the_shared_decoder(tiny_sam2, astronaut, monkeypatch):
    def make(fast: bool) -> SAM2:
        return SAM2(model=str(tiny_sam2), device="cpu", fast_kernels=fast, cache_size=0)

    _check_adapter_uses_the_shared_decoder(make, "decode_many_sam2", astronaut, monkeypatch)


@pytest.mark.slow
def test_decode_many_sam2_equals_transformers_real_size():
    """SAM 2.1 Hiera-T's decoder (its 1024-px feature pyramid), 100 boxes, single-mask output by stability."""
    torch.manual_seed(0)
    model = Sam2Model(sam2_config("hiera-t")).eval().requires_grad_(False)
    healthy_weights(model)
    side = model.config.prompt_encoder_config.image_size
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(5))
    boxes = _boxes(model, 100)
    with torch.inference_mode():
        levels = model.get_image_embeddings(pixels)
        expected = model(image_embeddings=levels, input_boxes=boxes, multimask_output=False)
        sparse, dense = model.prompt_encoder(None, None, boxes, None)
        got = decode_many_sam2(model, levels[-1], levels[:-1], sparse, dense[:1], False)
    _assert_same(got, expected)


def test_decode_many_sam2_equals_transformers_for_points():
    model = _sam2_model(seed=3)
    side = model.config.prompt_encoder_config.image_size
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(3))
    points = torch.tensor([[[[10.0, 20.0], [90.0, 70.0]], [[64.0, 64.0], [5.0, 120.0]], [[30, 100], [1, 1]]]])
    labels = torch.tensor([[[1, 0], [1, 1], [1, -1]]])
    with torch.inference_mode():
        levels = model.get_image_embeddings(pixels)
        expected = model(image_embeddings=levels, input_points=points, input_labels=labels)
        sparse, dense = model.prompt_encoder(points, labels, None, None)
        got = decode_many_sam2(model, levels[-1], levels[:-1], sparse, dense[:1], True)
    _assert_same(got, expected)
