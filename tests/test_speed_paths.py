"""The fast paths (grounded.runtime.fast_kernels) compute what transformers computes, and the caches never mix inputs up."""

import pytest
import torch
from transformers import SamHQVisionConfig, SamVisionConfig
from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention
from transformers.models.sam.modeling_sam import SamVisionSdpaAttention
from transformers.models.sam_hq.modeling_sam_hq import SamHQVisionSdpaAttention

import grounded.runtime.device as runtime
import grounded.runtime.fast_kernels as fastpath
from grounded.adapters import SAM, SAMHQ, GroundingDINO
from grounded.core.images import load_image
from grounded.runtime.fast_kernels import (
    ContentCache,
    deformable_attention,
    rel_pos_attention_forward,
    tensor_digest,
)

PROMPT = "person . flag . helmet"


def _redraw(model: torch.nn.Module, seed: int) -> None:
    """Weights of a healthy scale (the tiny SAM builders leave most at ~1e-10, so every mask would agree)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


# ---------------------------------------------------------------------------- deformable attention
@pytest.mark.parametrize("batch", [1, 2])
def test_deformable_attention_equals_grid_sample(batch):
    torch.manual_seed(0)
    shapes = [(7, 9), (4, 5), (2, 3)]
    heads, head_dim, points, queries = 2, 4, 2, 13
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.6 - 0.3  # some outside the map
    locations[0, 0, 0, :, 0] = torch.tensor([0.0, 1.0])  # the map's corners and a pixel edge exactly
    locations[0, 1, 0, :, 1] = torch.tensor([1.0, 0.5])
    weights = torch.softmax(torch.randn(batch, queries, heads, len(shapes) * points), -1)
    weights = weights.view(batch, queries, heads, len(shapes), points)
    shape_tensor = torch.tensor(shapes)
    starts = torch.cat([shape_tensor.new_zeros(1), shape_tensor.prod(1).cumsum(0)[:-1]])
    expected = MultiScaleDeformableAttention()(value, shape_tensor, shapes, starts, locations, weights, 64)
    got = deformable_attention(value, shapes, locations, weights)
    assert got.shape == expected.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    assert expected.abs().max() > 0.1  # the samples are not all zeros


def test_deformable_attention_splits_batches_too_large_for_float_row_numbers(monkeypatch):
    torch.manual_seed(0)
    shapes = [(5, 6), (3, 3)]
    value = torch.randn(5, 39, 2, 4)
    locations = torch.rand(5, 7, 2, 2, 3, 2)
    weights = torch.rand(5, 7, 2, 2, 3)
    whole = deformable_attention(value, shapes, locations, weights)
    padded_rows = (8 * 9 + 6 * 6) * 2
    monkeypatch.setattr(fastpath, "_MAX_TABLE_ROWS", 2 * padded_rows)  # at most one image per call
    torch.testing.assert_close(deformable_attention(value, shapes, locations, weights), whole)
    monkeypatch.setattr(fastpath, "_MAX_TABLE_ROWS", padded_rows)
    with pytest.raises(ValueError, match="too large"):
        deformable_attention(value[:1], shapes, locations[:1], weights[:1])


def test_deformable_attention_reads_zeros_far_outside_the_map():
    value = torch.ones(1, 4, 1, 2)  # one 2x2 level of ones
    weights = torch.ones(1, 3, 1, 1, 1)
    locations = torch.tensor([[-5.0, 0.5], [0.5, 9.0], [0.5, 0.5]]).view(1, 3, 1, 1, 1, 2)
    out = deformable_attention(value, [(2, 2)], locations, weights)
    assert out[0, :2].abs().max() == 0  # far outside: no wrap-around into other rows or levels
    assert torch.allclose(out[0, 2], torch.ones(2))


# ---------------------------------------------------------------------------- image-text fusion
@pytest.mark.parametrize("masked", [False, True])
def test_fused_bi_attention_equals_transformers(masked):
    from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoBiMultiHeadAttention

    from grounded.models.testing import grounding_dino_config
    from grounded.runtime.fast_kernels import fused_bi_attention_forward

    config = grounding_dino_config("tiny")
    torch.manual_seed(3)
    attention = GroundingDinoBiMultiHeadAttention(config).eval()
    _redraw(attention, seed=3)
    batch, tokens, length = 2, 37, 6
    vision = torch.randn(batch, tokens, config.d_model)
    text = torch.randn(batch, length, config.d_model)
    vision_mask = text_mask = None
    if masked:  # padding: True marks what must not be attended to
        vision_mask = torch.zeros(batch, tokens, dtype=torch.bool)
        vision_mask[1, -5:] = True
        text_mask = torch.zeros(batch, length, dtype=torch.bool)
        text_mask[0, -2:] = True
    with torch.inference_mode():
        (v_ref, vw_ref), (t_ref, tw_ref) = attention(vision, text, vision_mask, text_mask)
        (v, vw), (t, tw) = fused_bi_attention_forward(attention, vision, text, vision_mask, text_mask)
    for got, expected in ((v, v_ref), (t, t_ref), (vw, vw_ref), (tw, tw_ref)):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert v_ref.std() > 0.1 and t_ref.std() > 0.1
    if masked:  # rows b * heads ... (b + 1) * heads - 1 are image b's
        heads = attention.num_heads
        assert vw[:heads, :, -2:].abs().max() == 0 and tw[heads:, :, -5:].abs().max() == 0


# ---------------------------------------------------------------------------- SAM attention
@pytest.mark.parametrize("hq", [False, True])
@pytest.mark.parametrize(("window", "batch"), [(0, 3), (4, 5)])
def test_sam_attention_blocks_equal_transformers(monkeypatch, hq, window, batch):
    config_cls, attention_cls = (
        (SamHQVisionConfig, SamHQVisionSdpaAttention) if hq else (SamVisionConfig, SamVisionSdpaAttention)
    )
    config = config_cls(hidden_size=32, num_attention_heads=2, image_size=128, patch_size=16)
    torch.manual_seed(1)
    attention = attention_cls(config, window).eval()
    _redraw(attention, seed=1)
    side = window or 8
    hidden = torch.randn(batch, side, side, 32)
    with torch.inference_mode():
        expected = attention(hidden)[0]
        tokens, row = side * side, 2 * side * side * 4  # bytes of bias per query row
        for rows in (5, tokens, 2 * tokens):  # blocks of queries; of whole images (batch not a multiple)
            monkeypatch.setattr(fastpath, "_BIAS_BLOCK_BYTES", rows * row)
            got, _ = rel_pos_attention_forward(attention, hidden)
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert expected.std() > 0.1


def _sam_masks(folder, fast, image, boxes, hq):
    segmenter = (SAMHQ if hq else SAM)(model=str(folder), device="cpu", fast_kernels=fast, cache_size=0)
    segmenter.warm_up()
    _redraw(segmenter._model, seed=2)
    (embedding,) = segmenter.encode([image])
    return segmenter.decode(embedding, boxes)


@pytest.mark.parametrize("hq", [False, True])
def test_sam_adapter_fast_kernels_same_masks(request, hq, astronaut):
    folder = request.getfixturevalue("tiny_sam_hq" if hq else "tiny_sam")
    image = load_image(astronaut, name="astronaut")
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [100.0, 50.0, 200.0, 500.0]])
    fast_masks, fast_iou = _sam_masks(folder, True, image, boxes, hq)
    slow_masks, slow_iou = _sam_masks(folder, False, image, boxes, hq)
    torch.testing.assert_close(fast_iou, slow_iou, atol=1e-5, rtol=1e-5)
    agree = (fast_masks == slow_masks).float().mean()
    assert agree > 0.9999
    assert 0.01 < fast_masks.float().mean() < 0.99  # real masks, not all empty or full


# ---------------------------------------------------------------------------- Grounding DINO adapter
def _detector(folder, **kwargs):
    return GroundingDINO(
        model=str(folder), box_threshold=0.0, nms_threshold=None, top_k=20, device="cpu", **kwargs
    )


def test_grounding_dino_fast_kernels_same_detections(tiny_gdino, astronaut):
    image = load_image(astronaut, name="astronaut")
    (fast,) = _detector(tiny_gdino, fast_kernels=True).detect([image], PROMPT)
    (slow,) = _detector(tiny_gdino, fast_kernels=False).detect([image], PROMPT)
    torch.testing.assert_close(fast.boxes, slow.boxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(fast.scores, slow.scores, atol=1e-5, rtol=1e-4)
    assert fast.class_ids.tolist() == slow.class_ids.tolist()


def test_cached_backbone_and_text_equal_uncached_exactly(tiny_gdino, image_files):
    astronaut = load_image(image_files["astronaut"])
    coffee = load_image(image_files["coffee"])
    cached = _detector(tiny_gdino, cache_size=4)
    fresh = _detector(tiny_gdino, cache_size=0)
    backbone = lambda: cached._model.model.backbone  # noqa: E731
    text = lambda: cached._model.model.text_backbone  # noqa: E731
    steps = [(astronaut, PROMPT), (astronaut, "rocket . sky"), (coffee, "rocket . sky"), (astronaut, PROMPT)]
    expected = {}
    for image, prompt in steps:
        (got,) = cached.detect([image], prompt)
        if (image.name, prompt) not in expected:
            expected[image.name, prompt] = fresh.detect([image], prompt)[0]
        want = expected[image.name, prompt]
        assert torch.equal(got.boxes, want.boxes) and torch.equal(got.scores, want.scores)
        assert got.phrases == want.phrases
    assert isinstance(backbone(), ContentCache) and isinstance(text(), ContentCache)
    assert (backbone().misses, backbone().hits) == (2, 2)  # astronaut once, coffee once
    assert (text().misses, text().hits) == (2, 2)  # each prompt once
    assert not isinstance(fresh._model.model.backbone, ContentCache)


def test_a_changed_image_misses_the_cache(tiny_gdino, astronaut):
    detector = _detector(tiny_gdino, cache_size=4)
    image = load_image(astronaut, name="a")
    changed = astronaut.copy()
    changed[96:112, 96:112] //= 2  # keyed on the preprocessed pixels: a change that survives the resize
    (first,) = detector.detect([image], PROMPT)
    (second,) = detector.detect([load_image(changed, name="a")], PROMPT)
    assert detector._model.model.backbone.misses == 2 and detector._model.model.backbone.hits == 0
    assert not torch.equal(first.scores, second.scores)
    detector.clear_cache()
    detector.detect([image], PROMPT)
    assert detector._model.model.backbone.misses == 3


def test_content_cache_is_bounded_and_keyed_by_content():
    calls = []

    class Double(torch.nn.Module):
        def forward(self, x, pieces):
            calls.append(1)
            return [x * 2, pieces]

    cache = ContentCache(Double(), size=2)
    a, b, c = torch.ones(3), torch.zeros(3), torch.arange(3.0)
    out = cache(a, ["x"])
    out.append("mutated by the caller")
    again = cache(a.clone(), ["x"])  # same content: a hit, in a fresh container
    assert len(again) == 2 and torch.equal(again[0], a * 2) and again[1] == ["x"]
    assert len(calls) == 1
    cache(a, ["y"])  # other non-tensor argument: a miss
    cache(b, ["x"])
    cache(c, ["x"])  # evicts the oldest entries
    assert len(calls) == 4
    cache(a, ["x"])
    assert len(calls) == 5 and (cache.hits, cache.misses) == (1, 5)
    assert tensor_digest(torch.ones(2)) != tensor_digest(torch.ones(2, dtype=torch.float64))
    assert tensor_digest(torch.ones(2, 1)) != tensor_digest(torch.ones(1, 2))


# ---------------------------------------------------------------------------- precision
def test_auto_precision_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_precision("fp32", cpu) == "fp32"
    with runtime.autocast(cpu, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision must be one of auto"):
        runtime.resolve_precision("fp8", cpu)


def test_adapters_resolve_auto_precision_when_loaded(tiny_gdino, tiny_sam, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    detector = _detector(tiny_gdino, precision="auto")
    segmenter = SAM(model=str(tiny_sam), device="cpu", precision="auto")
    detector.warm_up()
    segmenter.warm_up()
    assert detector.precision == segmenter.precision == "fp32"
    assert detector.get_params()["precision"] == "auto"


def test_fast_kernels_under_bf16_autocast_stay_close_to_fp32():
    """The kernels keep working (dtypes, float32 row numbers) when autocast feeds them bf16."""
    from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoBiMultiHeadAttention

    from grounded.models.testing import grounding_dino_config
    from grounded.runtime.fast_kernels import fused_bi_attention_forward

    torch.manual_seed(4)
    shapes = [(7, 9), (4, 5)]
    value = torch.randn(1, 83, 2, 4)
    locations = torch.rand(1, 11, 2, 2, 2, 2)
    weights = torch.softmax(torch.randn(1, 11, 2, 4), -1).view(1, 11, 2, 2, 2)
    exact = deformable_attention(value, shapes, locations, weights)
    low = deformable_attention(value.bfloat16(), shapes, locations.bfloat16(), weights.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, atol=0.05, rtol=0.05)

    config = SamVisionConfig(hidden_size=32, num_attention_heads=2, image_size=128, patch_size=16)
    sam_attention = SamVisionSdpaAttention(config, 0).eval()
    _redraw(sam_attention, seed=4)
    fusion = GroundingDinoBiMultiHeadAttention(grounding_dino_config("tiny")).eval()
    _redraw(fusion, seed=4)
    hidden = torch.randn(1, 8, 8, 32)
    vision, text = torch.randn(1, 30, 32), torch.randn(1, 5, 32)
    with torch.inference_mode():
        sam_exact = rel_pos_attention_forward(sam_attention, hidden)[0]
        fusion_exact = fused_bi_attention_forward(fusion, vision, text)[0][0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sam_low = rel_pos_attention_forward(sam_attention, hidden)[0]
            fusion_low = fused_bi_attention_forward(fusion, vision, text)[0][0]
    for low, exact in ((sam_low, sam_exact), (fusion_low, fusion_exact)):
        assert low.dtype == torch.bfloat16
        assert (low.float() - exact).abs().max() <= 0.05 * exact.abs().max()
