"""``grounded bench --video``: frames/s, peak memory and where the time goes for ``grounded track`` with
real-size random-weight models (Grounding DINO Swin-T + SAM 2.1 Hiera-tiny on key frames, the SAM 2.1
Hiera-tiny video predictor between them) on a synthetic video of moving shapes.

The time of each part is measured with forward hooks (a device sync around each call): the detector and
key-frame segmenter, and in the video predictor the image encoder, the memory attention, the memory
encoder and the mask decoder (prompt encoder included). Random weights make the masks meaningless; the
objects followed are whatever the random detector keeps (``top_k`` per key frame).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounded.tasks.bench import _cache_dir, _redraw_saved, machine

__all__ = ["run_video_benchmark"]


def _video_models(small: bool) -> dict[str, Path]:
    """Folders of the random-weight models, built once (``healthy_weights`` redraws every weight)."""
    from transformers import AutoModel, Sam2VideoModel

    from grounded.models.testing import make_sam2, make_sam2_video
    from grounded.tasks.bench import _models

    root = _cache_dir() / ("tiny" if small else "real-size")
    detector, _ = _models(small=small)
    folders = {"detector": detector}
    for key, name, make, load in (
        ("segmenter", "sam2", make_sam2, AutoModel.from_pretrained),
        ("tracker", "sam2-video", make_sam2_video, Sam2VideoModel.from_pretrained),
    ):
        folder = root / (name if small else f"{name}-hiera-t")
        if not (folder / "config.json").is_file():
            print(f"building random-weight {name} ({'tiny' if small else 'Hiera-tiny'}) in {folder} ...")
            make(folder, size="tiny" if small else "hiera-t")
            _redraw_saved(folder, load)
        folders[key] = folder
    return folders


def _synthetic_video(path: Path, frames: int, size: tuple[int, int], fps: int = 25) -> None:
    """Three squares moving over a gradient, H.264."""
    from grounded.core.video import VideoWriter

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 90)], -1).astype(np.uint8)
    with VideoWriter(path, fps, size) as writer:
        for t in range(frames):
            img = background.copy()
            for k, color in enumerate(((230, 40, 40), (40, 230, 40), (40, 40, 230))):
                s = h // 5
                x = int((t * (3 + k) + k * w // 3) % max(1, w - s))
                y = int(h // 6 + k * h // 4)
                img[y : y + s, x : x + s] = color
            writer.write(img)


class _Timer:
    """Seconds spent in the hooked modules, by name (device-synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def hook(self, module: torch.nn.Module, name: str) -> None:
        def before(*_: Any) -> None:
            self._sync()
            self._start[name] = time.perf_counter()

        def after(*_: Any) -> None:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - self._start[name]

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return timed


def run_video_benchmark(
    frames: int = 30,
    size: tuple[int, int] = (480, 640),
    detect_every: int = 10,
    top_k: int = 3,
    device: str = "auto",
    small: bool = False,
) -> dict[str, Any]:
    """Track a synthetic video; prints and returns frames/s, peak memory and seconds per part."""
    import tempfile

    from grounded.tasks.track import build_tracking, track

    folders = _video_models(small)
    overrides: dict[str, dict[str, Any]] = {
        "detector": {"model": str(folders["detector"]), "box_threshold": 0.0, "top_k": top_k},
        "segmenter": {"model": str(folders["segmenter"])},
        "tracker": {"model": str(folders["tracker"])},
    }
    tracking = build_tracking("track_grounded_sam2", overrides, {"device": device})
    tracker = tracking.tracker
    assert tracking.detector is not None
    tracking.detector.warm_up()
    tracker.warm_up()
    dev = tracker.device
    timer = _Timer(dev)
    model = tracker._model
    for name, module in (
        ("video: image encoder", model.vision_encoder),
        ("video: memory attention", model.memory_attention),
        ("video: memory encoder", model.memory_encoder),
        ("video: mask decoder", model.mask_decoder),
        ("video: prompt encoder", model.prompt_encoder),
    ):
        timer.hook(module, name)
    for node in tracking.detector.graph.nodes:
        adapter = tracking.detector.adapter(node)
        adapter.run = timer.wrap(f"key frames: {node}", adapter.run)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    objects = []
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        _synthetic_video(video, frames, size)
        start = time.perf_counter()
        rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = 0
        for frame in track(
            video, "red square . green square . blue square", tracking, detect_every=detect_every
        ):
            objects.append(len(frame.detections))
            count += 1
        total = time.perf_counter() - start
    result = {
        "machine": machine(),
        "device": str(dev),
        "frames": count,
        "size": f"{size[1]}x{size[0]}",
        "detect_every": detect_every,
        "mean_objects": float(np.mean(objects)) if objects else 0.0,
        "frames_per_second": count / total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "seconds": {k: round(v, 3) for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1])},
        "total_seconds": round(total, 3),
    }
    print(_format(result))
    return result


def _format(r: dict[str, Any]) -> str:
    lines = [
        f"grounded track benchmark on {r['machine']} ({r['device']}): {r['frames']} frames {r['size']}, "
        f"detect every {r['detect_every']}, {r['mean_objects']:.1f} objects/frame on average",
        f"  {r['frames_per_second']:.2f} frames/s; peak RSS {r['peak_rss_mb']:.0f} MB"
        + (f"; peak GPU {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] is not None else ""),
        "  | part | seconds | share |",
        "  |---|---|---|",
    ]
    for name, sec in r["seconds"].items():
        lines.append(f"  | {name} | {sec:.2f} | {100 * sec / r['total_seconds']:.0f}% |")
    return "\n".join(lines)
