"""Per-stage timing of the text → masks slice with real-size configs and random weights.

Random weights have the same FLOPs as the released checkpoints (Grounding DINO Swin-T + BERT-base,
SAM ViT-B), so the times are what users get, without downloading anything. The models are saved once under
``~/.cache/grounded/bench`` and loaded through the same folder path users take.

Run: ``grounded bench`` (``--image coffee`` for a non-square photo, ``--precision bf16``, ``--small`` for a
smoke run with tiny models).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_benchmark"]


def _cache_dir() -> Path:
    return Path(os.environ.get("GROUNDED_BENCH_CACHE", Path.home() / ".cache" / "grounded" / "bench"))


def _models(small: bool) -> tuple[Path, Path]:
    from grounded.testing import make_grounding_dino, make_sam

    root = _cache_dir() / ("tiny" if small else "real-size")
    detector, segmenter = root / "grounding-dino", root / "sam"
    if not (detector / "config.json").is_file():
        print(f"building random-weight Grounding DINO ({'tiny' if small else 'Swin-T'}) in {detector} ...")
        make_grounding_dino(detector, size="tiny" if small else "swin-t")
    if not (segmenter / "config.json").is_file():
        print(f"building random-weight SAM ({'tiny' if small else 'ViT-B'}) in {segmenter} ...")
        make_sam(segmenter, size="tiny" if small else "vit-b")
    return detector, segmenter


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run_benchmark(
    image: str = "astronaut",
    prompt: str = "person . flag . helmet . face . rocket",
    repeats: int = 2,
    precision: str = "fp32",
    small: bool = False,
    boxes: int = 5,
) -> dict[str, float]:
    """Print and return the median seconds of each stage for one ``skimage.data`` image."""
    from skimage import data

    from grounded.adapters import SAM, GroundingDINO
    from grounded.images import load_image

    detector_dir, segmenter_dir = _models(small)
    picture = load_image(getattr(data, image)(), name=image)
    detector = GroundingDINO(
        model=str(detector_dir),
        box_threshold=0.0,
        top_k=boxes,
        nms_threshold=None,
        precision=precision,
        device="cpu",
    )
    segmenter = SAM(model=str(segmenter_dir), precision=precision, device="cpu")
    times: dict[str, float] = {}
    start = time.perf_counter()
    detector.warm_up()
    segmenter.warm_up()
    times["load models"] = time.perf_counter() - start
    times["detector (preprocess + forward + post)"], dets = _time(
        lambda: detector.detect([picture], prompt), repeats
    )
    times["SAM image encoder"], embeddings = _time(lambda: segmenter.encode([picture]), repeats)
    times[f"SAM mask decoder ({len(dets[0])} boxes, full-res masks)"], _ = _time(
        lambda: segmenter.decode(embeddings[0], dets[0].boxes), repeats
    )
    times["end to end (detect + segment)"], _ = _time(
        lambda: segmenter.segment([picture], detector.detect([picture], prompt)), repeats
    )
    height, width = picture.size
    print(
        f"\ngrounded bench: {'tiny' if small else 'Grounding DINO Swin-T + SAM ViT-B'} (random weights), "
        f"image {image} {width}x{height}, prompt {prompt!r}, {precision}, median of {repeats}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'stage':52s} {'seconds':>9s}")
    for stage, seconds in times.items():
        print(f"{stage:52s} {seconds:9.3f}")
    return times
