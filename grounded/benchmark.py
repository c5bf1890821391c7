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
    batch_sizes: tuple[int, ...] = (),
) -> dict[str, float]:
    """Print and return the median seconds of each stage for one ``skimage.data`` image.

    Stage times run with the image-embedding cache off. Then: a new prompt on an image whose SAM embedding is
    cached, images per second for each of ``batch_sizes`` (distinct images of the same size), peak memory.
    """
    import resource

    import numpy as np
    from skimage import data

    from grounded.adapters import SAM, GroundingDINO
    from grounded.images import LoadedImage, load_image

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
    segmenter = SAM(model=str(segmenter_dir), precision=precision, device="cpu", cache_size=0)
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
    # the same image with a new prompt: SAM's embedding comes from the cache, the detector runs again
    segmenter.cache_size = 8
    segmenter.encode([picture])
    other_prompt = "sky . glove"
    times["same image, new prompt (SAM embedding cached)"], _ = _time(
        lambda: segmenter.segment([picture], detector.detect([picture], other_prompt)), repeats
    )
    segmenter.cache_size = 0
    segmenter._cache.clear()
    throughput: dict[int, float] = {}
    for size in batch_sizes:  # distinct images (shifted copies) of one size, one batch through both stages
        batch = [
            LoadedImage(np.ascontiguousarray(np.roll(picture.pixels, k, axis=1)), f"{image}{k}")
            for k in range(size)
        ]
        detector.batch_size = segmenter.batch_size = size
        start = time.perf_counter()
        segmenter.segment(batch, detector.detect(batch, prompt))
        throughput[size] = size / (time.perf_counter() - start)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
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
    first, again = (
        times["end to end (detect + segment)"],
        times["same image, new prompt (SAM embedding cached)"],
    )
    print(f"new prompt on a cached image: {again / first:.0%} of the first call's time")
    for size, per_second in throughput.items():
        print(f"batch {size}: {per_second:.3f} images/s (end to end)")
    print(f"peak resident memory: {peak_gib:.2f} GiB")
    times.update({f"images/s at batch {k}": v for k, v in throughput.items()})
    times["peak memory GiB"] = peak_gib
    return times
