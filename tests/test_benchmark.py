"""The benchmark itself runs (tiny models) and reports every figure it promises; not a timed test."""

import torch

from grounded.core.detections import Detections
from grounded.tasks.bench import _agreement, bench_image, format_results, healthy_weights, run_benchmark


def test_benchmark_reports_stages_agreement_cache_throughput_and_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDED_BENCH_CACHE", str(tmp_path))
    results = run_benchmark(
        images=("coffee",), small=True, repeats=1, batch_sizes=(1, 2), isolate=False, verbose=False
    )
    assert results["precision"] in ("fp32", "bf16")
    for name, (height, width) in (("coffee", (400, 600)),):
        entry = results["images"][name]
        assert entry["size"] == (height, width)
        for config in ("fp32 baseline", "optimised"):
            times = entry["times"][config]
            assert all(times[k] > 0 for k in ("detect", "encode", "decode"))
            assert abs(times["total"] - (times["detect"] + times["encode"] + times["decode"])) < 1e-9
        if results["precision"] == "fp32":  # the fast kernels change float rounding only
            assert entry["agreement"]["box_diff"] <= 1e-4 and entry["agreement"]["mask_iou"] >= 0.99
    assert set(results["cache"]) == {"first call", "same image, new prompt", "same prompt, new image"}
    assert set(results["throughput"]) == {1, 2}
    assert all(v["images_per_s"] > 0 and v["peak_gib"] > 0 for v in results["throughput"].values())
    assert (tmp_path / "tiny" / "grounding-dino" / "config.json").is_file()
    assert (tmp_path / "tiny" / "sam-hq" / "config.json").is_file()
    trap = results["subnormal trap"]  # transformers' SAM init on a padded (coffee) and a square image
    assert set(trap) == {"astronaut", "coffee"}
    assert trap["coffee"]["subnormal_plain"] > 0 and trap["astronaut"]["subnormal_plain"] == 0
    assert all(v["subnormal_flushed"] == 0 and v["plain_s"] > 0 and v["flushed_s"] > 0 for v in trap.values())
    table = format_results(results, small=True)
    for text in (
        "end to end",
        "min mask IoU",
        "same image, new prompt",
        "images/s",
        "peak memory",
        "default init",
    ):
        assert text in table


def test_agreement_matches_boxes_by_class_and_reports_mask_iou():
    size = (100, 200)
    masks = torch.zeros((2, *size), dtype=torch.bool)
    masks[0, :50] = True
    masks[1, 50:] = True
    base = Detections(
        boxes=torch.tensor([[0.0, 0.0, 100.0, 50.0], [0.0, 50.0, 200.0, 100.0]]),
        scores=torch.tensor([0.9, 0.8]),
        class_ids=torch.tensor([0, 1]),
        classes=("a", "b"),
        phrases=("a", "b"),
        image_size=size,
    ).with_masks(masks, torch.ones(2))
    moved = masks.clone()
    moved[1, 50:75] = False  # IoU 0.5
    other = Detections(
        boxes=torch.tensor([[0.0, 52.0, 200.0, 100.0], [2.0, 0.0, 100.0, 50.0]]),  # shuffled, one moved
        scores=torch.tensor([0.9, 0.8]),
        class_ids=torch.tensor([1, 0]),
        classes=("a", "b"),
        phrases=("b", "a"),
        image_size=size,
    ).with_masks(moved[[1, 0]], torch.ones(2))
    result = _agreement(base, other)
    assert abs(result["box_diff"] - 0.02) < 1e-6  # 2 px of 100 in height, 2 px of 200 in width = 0.01
    assert abs(result["mask_iou"] - 0.5) < 1e-6 and result["matched"] == 1.0


def test_healthy_weights_have_trained_scales():
    model = torch.nn.Sequential(torch.nn.Linear(400, 10), torch.nn.LayerNorm(10))
    torch.nn.init.zeros_(model[0].weight)
    healthy_weights(model, seed=0)
    assert abs(model[0].weight.std().item() - 0.05) < 0.005  # 1 / sqrt(400)
    assert abs(model[1].weight.mean().item() - 1) < 0.1 and model[0].bias.abs().max() < 0.1


def test_bench_image_resizes_square():
    image = bench_image("astronaut@64")
    assert image.size == (64, 64) and image.name == "astronaut@64"
    assert bench_image("coffee").size == (400, 600)
