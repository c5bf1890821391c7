"""Timing of the text → masks slice (Grounding DINO + SAM / HQ-SAM) with real-size configs and random weights.

Random weights have the same FLOPs as the released checkpoints (Grounding DINO Swin-T + BERT-base, HQ-SAM
ViT-B), so the times are what users get, without downloading anything. The models are saved once under
``~/.cache/grounded/bench`` (``$GROUNDED_BENCH_CACHE``) and loaded through the same folder path users take.

One run measures, interleaving the configurations so that a change in machine load hits them alike:

- the fp32 baseline (transformers' own kernels, no caches) against the optimised path (the
  :mod:`grounded.runtime.fast_kernels` kernels at the chosen precision), stage by stage, and how close their outputs are;
- a new prompt on a cached image (backbone + SAM embedding cached) and the same prompt on a new image;
- images/s by batch size, with the peak resident memory of each (a fresh process per batch size).

Run: ``grounded bench`` (``--small`` for a smoke run with tiny models); ``benchmarks/run.py`` adds the
anchor (official Grounding DINO + segment-anything) comparison.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "bench_image",
    "build_models",
    "format_polygon_times",
    "healthy_weights",
    "polygon_times",
    "run_benchmark",
    "stage_times",
    "subnormal_trap",
]

DEFAULT_PROMPT = "person . flag . helmet . face . rocket"
OTHER_PROMPT = "sky . glove . boot"


def _cache_dir() -> Path:
    return Path(os.environ.get("GROUNDED_BENCH_CACHE", Path.home() / ".cache" / "grounded" / "bench"))


def healthy_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every parameter at the scale of trained weights (matrices ``N(0, 1/fan_in)``, norms ``≈ 1``).

    transformers' SAM initialisation leaves most weights near 1e-10 (activations vanish, every mask is the
    same) and Grounding DINO's zero-initialised box heads put every box on a fixed proposal grid: no
    accuracy comparison would mean anything.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.02 * noise)


def _models(small: bool = False, hq: bool = False) -> tuple[Path, Path]:
    """Folders of the random-weight Grounding DINO (Swin-T) and SAM or HQ-SAM (ViT-B), built once.

    Every weight is redrawn by :func:`healthy_weights` (folders ``grounding-dino-swin-t``, ``sam-vit-b``,
    ``sam-hq-vit-b``; the tiny ones ``grounding-dino``, ``sam``, ``sam-hq``).
    """
    from transformers import AutoModel, AutoModelForZeroShotObjectDetection

    from grounded.models.testing import make_grounding_dino, make_sam

    root = _cache_dir() / ("tiny" if small else "real-size")
    detector = root / ("grounding-dino" if small else "grounding-dino-swin-t")
    segmenter = root / (("sam-hq" if hq else "sam") + ("" if small else "-vit-b"))
    if not (detector / "config.json").is_file():
        print(f"building random-weight Grounding DINO ({'tiny' if small else 'Swin-T'}) in {detector} ...")
        make_grounding_dino(detector, size="tiny" if small else "swin-t")
        _redraw_saved(detector, AutoModelForZeroShotObjectDetection.from_pretrained)
    if not (segmenter / "config.json").is_file():
        name = ("HQ-SAM" if hq else "SAM") + (" (tiny)" if small else " ViT-B")
        print(f"building random-weight {name} in {segmenter} ...")
        make_sam(segmenter, size="tiny" if small else "vit-b", hq=hq)
        _redraw_saved(segmenter, AutoModel.from_pretrained)
    return detector, segmenter


def _redraw_saved(folder: Path, load: Callable[[Path], Any]) -> None:
    model = load(folder)
    healthy_weights(model)
    model.save_pretrained(folder)


build_models = _models


def bench_image(name: str) -> Any:
    """A ``skimage.data`` image as :class:`LoadedImage`; ``NAME@SIZE`` resizes it to ``SIZE`` px squared."""
    from PIL import Image
    from skimage import data

    from grounded.core.images import load_image

    base, _, size = name.partition("@")
    pixels = getattr(data, base)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    if size:
        pixels = np.asarray(
            Image.fromarray(pixels[..., :3]).resize((int(size), int(size)), Image.Resampling.BILINEAR)
        )
    return load_image(np.ascontiguousarray(pixels[..., :3]), name=name)


def _adapters(
    detector_dir: Path, segmenter_dir: Path, fast: bool, precision: str, compile: bool = False
) -> tuple[Any, Any]:
    from grounded.adapters import SAM, GroundingDINO

    detector = GroundingDINO(
        model=str(detector_dir),
        box_threshold=0.0,
        top_k=5,
        nms_threshold=None,
        device="auto",
        precision=precision,
        fast_kernels=fast,
        cache_size=0,
        compile=compile,
    )
    segmenter = SAM(
        model=str(segmenter_dir),
        device="auto",
        precision=precision,
        fast_kernels=fast,
        cache_size=0,
        compile=compile,
    )
    detector.warm_up()
    segmenter.warm_up()
    return detector, segmenter


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def _allocator(optimised: bool) -> Iterator[None]:
    """The optimised path keeps freed memory for reuse over a whole pass (as ``grounded`` runs do); the
    baseline runs with the C library's own policy (a fresh mapping for every large tensor)."""
    from grounded.runtime.memory import reuse_freed_memory

    if optimised:
        with reuse_freed_memory():
            yield
        return
    before = os.environ.get("GROUNDED_REUSE_FREED_MEMORY")
    os.environ["GROUNDED_REUSE_FREED_MEMORY"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GROUNDED_REUSE_FREED_MEMORY"]
        else:
            os.environ["GROUNDED_REUSE_FREED_MEMORY"] = before


def stage_times(detector: Any, segmenter: Any, image: Any, prompt: str) -> tuple[dict[str, float], Any]:
    """Seconds of each stage of one text → masks pass, and its detections with masks."""
    with _allocator(optimised=detector.fast_kernels):
        return _stage_times(detector, segmenter, image, prompt)


def _stage_times(detector: Any, segmenter: Any, image: Any, prompt: str) -> tuple[dict[str, float], Any]:
    times = {}
    start = time.perf_counter()
    (dets,) = detector.detect([image], prompt)
    _sync()
    times["detect"] = time.perf_counter() - start
    start = time.perf_counter()
    (embedding,) = segmenter.encode([image])
    _sync()
    times["encode"] = time.perf_counter() - start
    start = time.perf_counter()
    masks, scores = segmenter.decode(embedding, dets.boxes)
    _sync()
    times["decode"] = time.perf_counter() - start
    times["total"] = times["detect"] + times["encode"] + times["decode"]
    return times, dets.with_masks(masks, scores)


def _interleaved(
    runs: dict[str, Callable[[], dict[str, float]]], repeats: int
) -> dict[str, dict[str, float]]:
    """Median of each timing over ``repeats`` rounds of every run in turn (after one untimed round)."""
    for run in runs.values():
        run()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return {
        name: {key: statistics.median(s[key] for s in rounds) for key in rounds[0]}
        for name, rounds in samples.items()
    }


def _agreement(base: Any, other: Any) -> dict[str, float]:
    """Box and mask agreement of two detection sets on one image (each base box matched to the same-class
    box of highest IoU): max abs difference of normalised coordinates, min mask IoU, share matched."""
    from torchvision.ops import box_iou

    height, width = base.image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    box_diff, mask_iou, matched = 0.0, 1.0, 0
    for i in range(len(base)):
        same = (other.class_ids == base.class_ids[i]).nonzero().flatten()
        if len(same) == 0:
            continue
        ious = box_iou(base.boxes[i : i + 1].float(), other.boxes[same].float())[0]
        j = int(same[int(ious.argmax())])
        diff = ((base.boxes[i].float() - other.boxes[j].float()).abs() / scale).max().item()
        if diff > 0.05:  # another query altogether (random weights put proposals in near-ties)
            continue
        matched += 1
        box_diff = max(box_diff, diff)
        a, b = base.masks[i], other.masks[j]
        mask_iou = min(mask_iou, ((a & b).sum() / max(int((a | b).sum()), 1)).item())
    return {"box_diff": box_diff, "mask_iou": mask_iou, "matched": matched / max(len(base), 1)}


def _throughput(models: tuple[Any, Any], image_name: str, size: int) -> dict:
    """Images/s of one batch of ``size`` distinct images through both stages, and this process's peak RSS."""
    from grounded.core.images import LoadedImage

    detector, segmenter = models
    picture = bench_image(image_name)
    batch = [
        LoadedImage(np.ascontiguousarray(np.roll(picture.pixels, 8 * k, axis=1)), f"{picture.name}{k}")
        for k in range(size)
    ]
    detector.batch_size = segmenter.batch_size = size
    with _allocator(optimised=True):
        segmenter.segment(batch[:1], detector.detect(batch[:1], DEFAULT_PROMPT))  # warm-up
    with _allocator(optimised=True):
        start = time.perf_counter()
        segmenter.segment(batch, detector.detect(batch, DEFAULT_PROMPT))
        _sync()
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
    return {"images_per_s": size / seconds, "peak_gib": peak}


def _throughput_child(args: Sequence[str]) -> None:
    """Entry for the per-batch-size process: prints one JSON line."""
    detector_dir, segmenter_dir, image_name, precision, size = args
    models = _adapters(Path(detector_dir), Path(segmenter_dir), True, precision)
    print(json.dumps(_throughput(models, image_name, int(size))))


def _throughput_isolated(
    detector_dir: Path, segmenter_dir: Path, image: str, precision: str, size: int
) -> dict:
    code = "import sys; from grounded.tasks.bench import _throughput_child; _throughput_child(sys.argv[1:])"
    args = [str(detector_dir), str(segmenter_dir), image, precision, str(size)]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_benchmark(
    images: Sequence[str] = ("astronaut@1024", "coffee"),
    prompt: str = DEFAULT_PROMPT,
    repeats: int = 3,
    precision: str = "auto",
    compile: bool = False,
    small: bool = False,
    batch_sizes: Sequence[int] = (1, 2, 4, 8),
    isolate: bool = True,
    verbose: bool = True,
    hq: bool = True,
    trap: bool = True,
) -> dict[str, Any]:
    """Measure, print (unless ``verbose`` is false) and return every figure; see the module docstring.

    ``precision`` applies to the optimised path (``"auto"``: bf16 where the hardware computes it natively,
    fp32 elsewhere); the baseline is always fp32 with transformers' kernels.
    """
    from grounded.runtime.device import resolve_precision

    detector_dir, segmenter_dir = _models(small, hq=hq)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = resolve_precision(precision, device)
    start = time.perf_counter()
    base = _adapters(detector_dir, segmenter_dir, fast=False, precision="fp32")
    load_seconds = time.perf_counter() - start
    fast = _adapters(detector_dir, segmenter_dir, fast=True, precision=chosen, compile=compile)
    results: dict[str, Any] = {"precision": chosen, "load models": load_seconds, "images": {}}
    if compile:  # the first call compiles; measured apart from the steady state
        picture = bench_image(images[0])
        results["first call (compiles)"] = stage_times(*fast, picture, prompt)[0]["total"]
    for name in images:
        picture = bench_image(name)
        outputs: dict[str, Any] = {}

        def run(models: tuple[Any, Any], key: str, picture: Any = picture, out: dict = outputs) -> dict:
            times, out[key] = stage_times(*models, picture, prompt)
            return times

        timed = _interleaved(
            {"fp32 baseline": lambda: run(base, "base"), "optimised": lambda: run(fast, "fast")}, repeats
        )
        results["images"][name] = {
            "size": picture.size,
            "times": timed,
            "speedup": timed["fp32 baseline"]["total"] / timed["optimised"]["total"],
            "agreement": _agreement(outputs["base"], outputs["fast"]),
        }
    results["cache"] = _cache_times(fast, bench_image(images[0]), prompt, repeats)
    if trap:
        results["subnormal trap"] = subnormal_trap(small=small, repeats=repeats)
    results["throughput"] = {}
    for size in batch_sizes:
        if isolate:  # a fresh process: its peak memory is this batch size's
            found = _throughput_isolated(detector_dir, segmenter_dir, images[0], chosen, size)
        else:
            found = _throughput(fast, images[0], size)
        results["throughput"][size] = found
    results["machine"] = machine()
    if verbose:
        print(format_results(results, small))
    return results


def subnormal_trap(
    images: Sequence[str] = ("astronaut", "coffee"), small: bool = False, repeats: int = 3
) -> dict[str, dict[str, float]]:
    """The SAM encoder with transformers' default initialisation (vision std 1e-10) on a square and a
    padded non-square image, plain and inside :func:`grounded.runtime.denormals.flush_denormals` (what the adapters
    do): median seconds of each and the share of subnormal values in the outputs of the ViT layers' MLPs
    (issue 8's 12x trap)."""
    from transformers import SamImageProcessor, SamModel

    from grounded.models.testing import sam_config
    from grounded.runtime.denormals import flush_denormals

    torch.manual_seed(0)
    model = SamModel(sam_config("tiny" if small else "vit-b")).eval()
    size = model.config.vision_config.image_size
    processor = SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size})
    tiny = torch.finfo(torch.float32).tiny
    counts = [0, 0]  # subnormal values, values

    def count(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        counts[0] += int(((output != 0) & (output.abs() < tiny)).sum())
        counts[1] += output.numel()

    for layer in model.vision_encoder.layers:
        layer.mlp.register_forward_hook(count)
    found: dict[str, dict[str, float]] = {}
    for name in images:
        pixels = processor(images=bench_image(name).pixels, return_tensors="pt")["pixel_values"]

        def encode(flush: bool, pixels: torch.Tensor = pixels) -> dict[str, float]:
            counts[:] = [0, 0]
            with torch.inference_mode(), flush_denormals() if flush else contextlib.nullcontext():
                start = time.perf_counter()
                model.get_image_embeddings(pixels)
                seconds = time.perf_counter() - start
            return {"seconds": seconds, "subnormal": counts[0] / max(counts[1], 1)}

        timed = _interleaved({"plain": lambda: encode(False), "flushed": lambda: encode(True)}, repeats)
        found[name] = {
            "plain_s": timed["plain"]["seconds"],
            "flushed_s": timed["flushed"]["seconds"],
            "subnormal_plain": timed["plain"]["subnormal"],
            "subnormal_flushed": timed["flushed"]["subnormal"],
        }
    return found


def _cache_times(models: tuple[Any, Any], picture: Any, prompt: str, repeats: int) -> dict[str, float]:
    """First call on an image (caches cold), a new prompt on it (backbone + SAM embedding cached), and the
    first prompt on a new image (text features cached)."""
    from grounded.core.images import LoadedImage
    from grounded.runtime.fast_kernels import accelerate_grounding_dino

    detector, segmenter = models
    accelerate_grounding_dino(detector._model, fast_kernels=False, cache_size=4)  # caches on
    segmenter._cache.size = 8
    rounds: list[dict[str, float]] = []
    for k in range(repeats + 1):
        detector.clear_cache()
        segmenter._cache.clear()
        shifted = LoadedImage(np.ascontiguousarray(np.roll(picture.pixels, 16 + k, axis=0)), "shifted")
        first = stage_times(detector, segmenter, picture, prompt)[0]["total"]
        again = stage_times(detector, segmenter, picture, OTHER_PROMPT)[0]["total"]
        new_image = stage_times(detector, segmenter, shifted, prompt)[0]["total"]
        rounds.append(
            {"first call": first, "same image, new prompt": again, "same prompt, new image": new_image}
        )
    detector.clear_cache()
    segmenter._cache.clear()
    segmenter._cache.size = 0
    for module in (detector._model.model.backbone, detector._model.model.text_backbone):
        module.size = 0  # caches off again
    return {key: statistics.median(r[key] for r in rounds[1:]) for key in rounds[0]}


def machine() -> str:
    """CPU model, cores, PyTorch version and threads (and the GPU when there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from grounded.runtime.device import cpu_has_native_bf16

    text = (
        f"{cpu} ({torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}), "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def format_results(results: dict[str, Any], small: bool = False) -> str:
    """The results as Markdown tables."""
    models = "tiny models" if small else "Grounding DINO Swin-T + HQ-SAM ViT-B (random weights)"
    lines = [f"**{models}**, optimised path at {results['precision']}; machine: {results['machine']}", ""]
    lines += ["| image | stage | fp32 baseline (s) | optimised (s) | speed-up |", "|---|---|---:|---:|---:|"]
    names = {"detect": "detector", "encode": "SAM image encoder", "decode": "SAM mask decoder (5 boxes)"}
    names["total"] = "**end to end**"
    for image, entry in results["images"].items():
        height, width = entry["size"]
        for stage, label in names.items():
            b, f = entry["times"]["fp32 baseline"][stage], entry["times"]["optimised"][stage]
            lines.append(f"| {image} ({width}x{height}) | {label} | {b:.2f} | {f:.2f} | {b / f:.2f}x |")
    lines += [
        "",
        "| image | max box diff (normalised) | min mask IoU | boxes matched |",
        "|---|---:|---:|---:|",
    ]
    for image, entry in results["images"].items():
        a = entry["agreement"]
        lines.append(f"| {image} | {a['box_diff']:.1e} | {a['mask_iou']:.4f} | {a['matched']:.0%} |")
    cache = results["cache"]
    first = cache["first call"]
    lines += ["", "| cache | seconds | of first call |", "|---|---:|---:|"]
    for key, seconds in cache.items():
        lines.append(f"| {key} | {seconds:.2f} | {seconds / first:.0%} |")
    if results.get("subnormal trap"):
        lines += [
            "",
            "| SAM encoder, transformers' default init | subnormal share of the MLP outputs | plain (s) "
            "| subnormals flushed (s) | speed-up |",
            "|---|---:|---:|---:|---:|",
        ]
        for image, entry in results["subnormal trap"].items():
            plain, flushed = entry["plain_s"], entry["flushed_s"]
            lines.append(
                f"| {image} | {entry['subnormal_plain']:.2%} | {plain:.2f} | {flushed:.2f} | {plain / flushed:.2f}x |"
            )
    if results["throughput"]:
        lines += ["", "| batch | images/s | peak memory (GiB) |", "|---:|---:|---:|"]
        for size, entry in results["throughput"].items():
            lines.append(f"| {size} | {entry['images_per_s']:.3f} | {entry['peak_gib']:.2f} |")
    if "first call (compiles)" in results:
        lines.append(
            f"\nfirst call with --compile (includes compiling): {results['first call (compiles)']:.1f} s"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- dataset export: masks to polygons
def _polygon_masks(size: int) -> dict[str, np.ndarray]:
    """Masks of ``size`` x ``size`` from compact to ragged (foliage: smoothed noise, the smaller the sigma the
    more parts and holes; checker: random 4-pixel blocks, thousands of rings)."""
    from scipy import ndimage
    from skimage import data
    from skimage.transform import resize

    yy, xx = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    masks = {
        "disk": (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2,
        "horse": resize(~data.horse(), (size, size), order=0).astype(bool),
    }
    for sigma in (12, 6, 3):
        masks[f"foliage s={sigma}"] = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma) > 0
    blocks = rng.random((size // 4, size // 4)) > 0.5
    masks["checker 4px"] = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
    return masks


def polygon_times(size: int = 1024, repeats: int = 5) -> list[dict[str, Any]]:
    """Milliseconds per mask of the dataset writers' polygon extraction (:mod:`grounded.core.polygons`): YOLO
    (pixel centres, every ring joined) and COCO (pixel corners, holes joined), the minimum of ``repeats``,
    next to OpenCV's ``findContours`` alone (the tracer, a floor) and skimage's ``find_contours`` alone (what
    the writers used before, without its assembly)."""
    import cv2
    from skimage.measure import find_contours

    from grounded.core.polygons import mask_polygons

    warm = np.random.default_rng(1).random((64, 64)) > 0.5
    mask_polygons(warm, "centre", join="all")  # imports (OpenCV, SciPy's graph and k-d tree modules)
    mask_polygons(warm, "corner")
    rows = []
    for name, mask in _polygon_masks(size).items():
        contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        holes = int((hierarchy[0][:, 3] >= 0).sum()) if hierarchy is not None else 0
        row: dict[str, Any] = {"mask": name, "parts": len(contours) - holes, "holes": holes}
        traced = []
        for _ in range(repeats):
            start = time.perf_counter()
            cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            traced.append(time.perf_counter() - start)
        row["opencv_trace_ms"] = 1000 * min(traced)
        for key, convention, join in (("yolo_ms", "centre", "all"), ("coco_ms", "corner", "holes")):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                mask_polygons(mask, convention, join=join)  # type: ignore[arg-type]
                times.append(time.perf_counter() - start)
            row[key] = 1000 * min(times)
        start = time.perf_counter()
        find_contours(np.pad(mask.astype(np.uint8), 1), 0.5)
        row["skimage_find_contours_ms"] = 1000 * (time.perf_counter() - start)
        rows.append(row)
    return rows


def format_polygon_times(rows: list[dict[str, Any]], size: int = 1024) -> str:
    """The :func:`polygon_times` rows as a Markdown table."""
    lines = [
        f"masks to polygons, {size}x{size} ({machine()}): ms per mask",
        "",
        "| mask | parts | holes | YOLO (centres, all joined) | COCO (corners, holes joined) "
        "| OpenCV findContours alone | skimage find_contours |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mask']} | {r['parts']} | {r['holes']} | {r['yolo_ms']:.1f} | {r['coco_ms']:.1f} | "
            f"{r['opencv_trace_ms']:.1f} | {r['skimage_find_contours_ms']:.1f} |"
        )
    return "\n".join(lines)
