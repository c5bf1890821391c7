"""Issue 19 benchmark: 100 boxes an image: the mask decoder, the results, and whole processes, in one run.

Rows (real-size random-weight Grounding DINO Swin-T + SAM ViT-B from ``grounded.tasks.bench``, the prompt of
``grounded bench``, box and text thresholds 0 so that every image keeps its top 100 boxes):

1. **mask decoder**, 100 boxes on one image: transformers' ``SamModel`` decoder against
   ``grounded.runtime.fast_decoder.decode_many`` (the same embedding), their agreement, and the FLOP floor
   (``decoder_flops`` from the shapes, at this machine's fp32 GEMM rate measured in the same run).
   ``--hq``: the same for HQ-SAM ViT-B (transformers' ``SamHQModel`` decoder, official HQ-SAM restored,
   against ``decode_many_hq``), its floor from torch's FLOP count of ``decode_many_hq``.
   ``--sam2``: the same for SAM 2.1 Hiera-T (``Sam2Model`` against ``decode_many_sam2``).
2. **results**, 100 masks on a 1024x1024 image: the processor's full-size upsampling + RLE of the whole
   masks (the previous path) against windowed upsampling + RLE off the windows, then the label image and
   overlay (drawn once each), and the two PNG encodes, stage by stage.
3. **whole process**, ``grounded segment`` of 2 images (model loading and start-up included, a fresh
   process) against the anchor path doing the same two images as ``grounded_sam_demo.py`` does in one
   process (``benchmarks/anchor_path.py --whole``, official venv; skipped without it).
   The ``segment`` row's profile is broken down stage by stage (start-up, model loading, detector, image
   encoder, decoder, upsampling, writing, the rest) next to the anchor path's same stages.
4. ``grounded eval coco`` (the SegInW protocol: top-100 pairs, no threshold) and ``grounded annotate`` on the
   same 2 images: images/s, and where the time goes (cProfile of the same run, so slightly pessimistic).

Run: ``.venv/bin/python benchmarks/many_boxes.py [--device cuda --precision bf16] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
IMAGES = ("coffee", "astronaut")  # 600x400, 512x512
BOXES = 100


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    _sync()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync()
    return time.perf_counter() - start, out


def gemm_rate(device: str, size: int = 2048, repeats: int = 5) -> float:
    """fp32 matrix-product FLOP/s of this machine now (the floor's unit)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    seconds, _ = _timed(lambda: [a @ b for _ in range(repeats)])
    return repeats * 2 * size**3 / seconds


def _boxes(size: tuple[int, int], n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    height, width = size
    corner = torch.rand(n, 2, generator=gen) * torch.tensor([width * 0.8, height * 0.8])
    extent = torch.rand(n, 2, generator=gen) * torch.tensor([width * 0.4, height * 0.4]) + 8
    far = torch.minimum(corner + extent, torch.tensor([width - 1.0, height - 1.0]))
    return torch.cat([corner, far], 1)


def decoder_and_results(segmenter_dir: Path, device: str, precision: str) -> dict[str, Any]:
    """Rows 1 and 2 (one process: models loaded once, the embedding shared)."""
    from grounded.adapters import SAM
    from grounded.core.detections import Detections
    from grounded.runtime.fast_decoder import decoder_flops
    from grounded.tasks.bench import bench_image

    kwargs = {"model": str(segmenter_dir), "device": device, "precision": precision, "cache_size": 0}
    ours = SAM(fast_kernels=True, **kwargs)
    theirs = SAM(fast_kernels=False, **kwargs)
    ours.warm_up()
    theirs.warm_up()
    image = bench_image("astronaut@1024")
    (embedding,) = ours.encode([image])
    boxes = _boxes(image.size, BOXES)
    rate_before = gemm_rate(ours.device.type)
    hf_s, (hf_low, hf_iou) = _timed(theirs._decode_raw, embedding, boxes=boxes)
    ours_s, (low, iou) = _timed(ours._decode_raw, embedding, boxes=boxes)
    ours_again_s, _ = _timed(ours._decode_raw, embedding, boxes=boxes)
    rate = max(rate_before, gemm_rate(ours.device.type))
    ours_s = min(ours_s, ours_again_s)
    flops = decoder_flops(ours._model.config)
    floor_s = flops.total(BOXES) / rate
    a, b = low > 0, hf_low > 0
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    mask_iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0)
    decoder = {
        "transformers_s": hf_s,
        "ours_s": ours_s,
        "speedup": hf_s / ours_s,
        "gemm_gflops": rate / 1e9,
        "floor_gflop": flops.total(BOXES) / 1e9,
        "transformers_gflop": flops.transformers_per_prompt * BOXES / 1e9,
        "floor_s": floor_s,
        "over_floor": ours_s / floor_s,
        "max_logit_diff": float((low - hf_low).abs().max()),
        "max_iou_pred_diff": float((iou - hf_iou).abs().max()),
        "min_mask_iou": float(mask_iou.min()),
    }

    # row 2: 100 masks into results
    picked = low[:, :1]
    det = Detections(
        boxes=boxes,
        scores=torch.rand(BOXES, generator=torch.Generator().manual_seed(1)),
        class_ids=torch.arange(BOXES) % 5,
        classes=("person", "flag", "helmet", "face", "rocket"),
        phrases=tuple(("person", "flag", "helmet", "face", "rocket")[i % 5] for i in range(BOXES)),
        image_size=image.size,
    )
    results = {}
    # the random-weight decoder's masks are ragged and spread over the image; trained SAM's are objects:
    # compact blobs inside their boxes (logits positive in an ellipse inscribed in the box, plus noise)
    for kind, logits in (
        ("random-weight SAM masks", picked),
        ("compact masks", _blob_logits(boxes, low.shape[-1])),
    ):
        stages: dict[str, dict[str, float]] = {}
        dense: dict[str, torch.Tensor] = {}
        for name, windowed in (("previous", False), ("ours", True)):
            ours.windowed_upsampling = windowed  # instance attribute: the processor path when False
            times, masks = _results_stages(ours, logits, embedding, image, det, iou[:, 0], windowed)
            stages[name], dense[name] = times, masks
        stages["masks_equal"] = {"value": float(torch.equal(dense["previous"], dense["ours"]))}
        stages["coverage"] = {"value": float(dense["ours"].float().mean())}
        results[kind] = stages
    ours.windowed_upsampling = True
    return {"decoder": decoder, "results": results}


def _counted_flops(fn: Any, n: int) -> float:
    """torch's count of the floating-point operations of ``fn(n)`` (products, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(n)
    return float(counter.get_total_flops())


def hq_decoder(segmenter_dir: Path, device: str, precision: str) -> dict[str, Any]:
    """Row 1b: HQ-SAM ViT-B's decoder at 100 boxes, transformers' against ``decode_many_hq``, and its floor
    from torch's FLOP count of ``decode_many_hq`` (shared + per-box, counted at 2 and 4 boxes)."""
    from grounded.adapters import SAM
    from grounded.tasks.bench import bench_image

    kwargs = {"model": str(segmenter_dir), "device": device, "precision": precision, "cache_size": 0}
    ours, theirs = SAM(fast_kernels=True, **kwargs), SAM(fast_kernels=False, **kwargs)
    ours.warm_up()
    theirs.warm_up()
    image = bench_image("astronaut@1024")
    (embedding,) = ours.encode([image])
    boxes = _boxes(image.size, BOXES)
    return _compare_decoders(ours, theirs, embedding, boxes)


def sam2_decoder(device: str, precision: str) -> dict[str, Any]:
    """Row 1c: SAM 2.1 Hiera-T's decoder at 100 boxes, transformers' ``Sam2Model`` against
    ``decode_many_sam2``, and the floor from torch's FLOP count of ``decode_many_sam2``."""
    from transformers import AutoModel

    from grounded.adapters import SAM2
    from grounded.models.testing import make_sam2
    from grounded.tasks.bench import _cache_dir, _redraw_saved, bench_image

    folder = _cache_dir() / "real-size" / "sam2.1-hiera-t"
    if not (folder / "config.json").is_file():
        print(f"building random-weight SAM 2.1 Hiera-T in {folder} ...")
        make_sam2(folder, size="hiera-t")
        _redraw_saved(folder, AutoModel.from_pretrained)
    kwargs = {"model": str(folder), "device": device, "precision": precision, "cache_size": 0}
    ours, theirs = SAM2(fast_kernels=True, **kwargs), SAM2(fast_kernels=False, **kwargs)
    ours.warm_up()
    theirs.warm_up()
    image = bench_image("astronaut@1024")
    (embedding,) = ours.encode([image])
    boxes = _boxes(image.size, BOXES)
    return _compare_decoders(ours, theirs, embedding, boxes)


def _compare_decoders(ours: Any, theirs: Any, embedding: Any, boxes: torch.Tensor) -> dict[str, Any]:
    """Both decoders at ``BOXES`` boxes: seconds, agreement, and the batched one's floor (torch's FLOP
    count: shared + per box, counted at 2 and 4 boxes, at the GEMM rate measured around the timing)."""
    rate_before = gemm_rate(ours.device.type)
    hf_s, (hf_low, hf_iou) = _timed(theirs._decode_raw, embedding, boxes=boxes)
    ours_s, (low, iou) = _timed(ours._decode_raw, embedding, boxes=boxes)
    rate = max(rate_before, gemm_rate(ours.device.type))

    def decode(n: int) -> Any:
        return ours._decode_raw(embedding, boxes=boxes[:n])

    two, four = _counted_flops(decode, 2), _counted_flops(decode, 4)
    per_box = (four - two) / 2
    total = two - 2 * per_box + BOXES * per_box
    a, b = low > 0, hf_low > 0
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return {
        "transformers_s": hf_s,
        "ours_s": ours_s,
        "transformers_ms_per_box": 1000 * hf_s / BOXES,
        "ours_ms_per_box": 1000 * ours_s / BOXES,
        "speedup": hf_s / ours_s,
        "floor_gflop": total / 1e9,
        "per_box_gflop": per_box / 1e9,
        "floor_s": total / rate,
        "over_floor": ours_s / (total / rate),
        "gemm_gflops": rate / 1e9,
        "max_logit_diff": float((low - hf_low).abs().max()),
        "max_iou_pred_diff": float((iou - hf_iou).abs().max()),
        "min_mask_iou": float(torch.where(union > 0, inter / union.clamp(min=1), 1.0).min()),
    }


def _blob_logits(boxes: torch.Tensor, side: int, scale: float = 4.0) -> torch.Tensor:
    """``(N, 1, side, side)`` low-resolution logits of an object in each box (1024-px input, 4 px a cell)."""
    gen = torch.Generator().manual_seed(2)
    grid = (torch.arange(side, dtype=torch.float32) + 0.5) * scale
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    radius = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1) / 2
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, 0, None, None]
    dy = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, 1, None, None]
    return ((1 - dx**2 - dy**2) * 8 + torch.randn(len(boxes), side, side, generator=gen))[:, None]


def _previous_json(det: Any) -> str:
    """The previous RLE: ``pycocotools.encode`` of each whole mask (a column-major copy each), bool sums."""
    from pycocotools import mask as mask_utils

    from grounded.core.files import compact_json
    from grounded.core.rle import rle_to_json

    arrays = det.masks.numpy()
    rles = [
        rle_to_json(mask_utils.encode(np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]) for m in arrays
    ]
    return compact_json({"rles": rles, "areas": det.masks.flatten(1).sum(1).tolist()})


def _results_stages(
    sam: Any, low: torch.Tensor, embedding: Any, image: Any, det: Any, scores: torch.Tensor, windowed: bool
) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds of each step from low-resolution logits to the result files' contents."""
    from grounded.core.files import compact_json, encode_png
    from grounded.tasks.export import image_json, label_image, overlay_image

    times: dict[str, float] = {}
    times["upsample + binarise"], masks = _timed(sam._upsample, low, embedding)
    with_masks = det.with_masks(masks.cpu(), scores.cpu())
    if windowed:
        times["RLE + JSON"], _ = _timed(lambda: compact_json(image_json(image, with_masks)))
    else:
        times["RLE + JSON"], _ = _timed(_previous_json, with_masks)
    times["label image"], labels = _timed(label_image, with_masks)
    times["overlay"], overlay = _timed(overlay_image, image, with_masks)
    times["mask work"] = sum(times.values())
    times["2 PNG encodes"], _ = _timed(lambda: (encode_png(labels), encode_png(overlay)))
    return times, masks.cpu()


# the stages of a ``grounded`` run, by the function whose cumulative time is the stage's (file, function);
# a stage's time excludes the model loading (``warm_up``) it triggers, which is its own row
_STAGES = {
    "model loading": ("common.py", "warm_up"),
    "detector": ("grounding_dino.py", "detect"),
    "SAM image encoder": ("sam.py", "_encode_batch"),
    "SAM mask decoder": ("sam.py", "_decode_raw"),
    "masks upsampled": ("sam.py", "_upsample_parts"),
    "results written": ("export.py", "write_image_results"),
    "COCO evaluation": ("cocoeval.py", "evaluate"),
}


def _profile_breakdown(path: Path) -> dict[str, float]:
    """Where the seconds of a profiled ``grounded`` run went (cProfile file): start-up (everything before the
    CLI's ``main``: the imports of the process start), model loading (with the imports it triggers), each
    stage without the model loading it triggered, and the rest of ``main``; the imports made anywhere
    (cProfile counts an import's outermost call only) as a separate, overlapping figure. The rows sum to the
    profiled total (cProfile's overhead inflates each a little)."""
    stats = pstats.Stats(str(path))
    table = stats.stats  # type: ignore[attr-defined]

    def matching(file_part: str, name: str) -> list[Any]:
        return [key for key in table if key[2] == name and key[0].endswith(file_part)]

    def cumulative(keys: list[Any]) -> float:
        return sum(table[key][3] for key in keys)

    total = float(stats.total_tt)  # type: ignore[attr-defined]
    main = cumulative(matching("cli/__init__.py", "main"))
    loading = matching(*_STAGES["model loading"])
    found: dict[str, float] = {"start-up (before main)": max(0.0, total - main)}
    for label, (file_part, name) in _STAGES.items():
        keys = matching(file_part, name)
        seconds = cumulative(keys)
        if label != "model loading":  # the loading this stage's function triggered is counted above
            seconds -= sum(
                row[3] for key in loading for caller, row in table[key][4].items() if caller in keys
            )
        if keys:
            found[label] = seconds
    stages = sum(v for k, v in found.items() if k != "start-up (before main)")
    found["rest of main (parsing, lazy imports outside the stages, reading images)"] = main - stages
    found["imports (anywhere; overlaps the rows above)"] = cumulative(
        matching("<frozen importlib._bootstrap>", "_find_and_load")
    )
    found["profiled total"] = total
    return {k: round(v, 2) for k, v in found.items()}


def _run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def whole_processes(
    detector_dir: Path, segmenter_dir: Path, device: str, precision: str, work: Path
) -> dict[str, Any]:
    """Rows 3 and 4: fresh processes on the two images."""
    from PIL import Image

    from grounded.tasks.bench import DEFAULT_PROMPT, bench_image

    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in IMAGES:
        path = folder / f"{name}.png"
        Image.fromarray(bench_image(name).pixels).save(path)
        files.append(str(path))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    models = ["--detector", str(detector_dir), "--segmenter", str(segmenter_dir)]
    common = [*models, "--box-threshold", "0", "--text-threshold", "0", "--device", device]
    if precision != "auto":
        common += ["--precision", precision]
    profile = [sys.executable, "-m", "cProfile", "-o"]
    rows: dict[str, Any] = {}

    prof = work / "segment.prof"
    cmd = [
        *profile,
        str(prof),
        "-m",
        "grounded",
        "segment",
        *files,
        "-p",
        DEFAULT_PROMPT,
        "-o",
        str(work / "seg"),
    ]
    seconds = _run([*cmd, *common, "--top-k", str(BOXES), "--no-nms", "-q"], env)
    boxes = [len(json.loads((work / "seg" / f"{n}.json").read_text())["detections"]) for n in IMAGES]
    rows["segment"] = {"wall_s": seconds, "boxes": boxes, "where": _profile_breakdown(prof)}

    # eval: the SegInW protocol on a COCO-format file of the two images (one made-up box each: timing only)
    annotations = {
        "images": [
            {"id": i + 1, "file_name": Path(f).name, "height": h, "width": w}
            for i, (f, (h, w)) in enumerate(zip(files, [bench_image(n).size for n in IMAGES], strict=True))
        ],
        "annotations": [
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [10, 10, 100, 100],
                "area": 1e4,
                "iscrowd": 0,
            }
            for i in range(len(files))
        ],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(DEFAULT_PROMPT.split(" . "))],
    }
    (work / "coco.json").write_text(json.dumps(annotations))
    prof = work / "eval.prof"
    cmd = [*profile, str(prof), "-m", "grounded", "eval", "coco", "--images", str(folder)]
    cmd += [
        "--annotations",
        str(work / "coco.json"),
        "--out",
        str(work / "eval"),
        *models,
        "--device",
        device,
    ]
    cmd += ["--quiet"]
    seconds = _run(cmd, env)
    rows["eval coco (SegInW protocol)"] = {"wall_s": seconds, "where": _profile_breakdown(prof)}

    prof = work / "annotate.prof"
    classes = DEFAULT_PROMPT.replace(" . ", ", ")
    cmd = [*profile, str(prof), "-m", "grounded", "annotate", str(folder), "-o", str(work / "ann")]
    cmd += ["--classes", classes, *common, "--top-k", str(BOXES), "--quiet"]
    seconds = _run(cmd, env)
    rows["annotate"] = {"wall_s": seconds, "where": _profile_breakdown(prof)}
    for row in rows.values():
        row["images_per_s"] = len(files) / row["wall_s"]

    python = Path(os.environ.get("GROUNDED_GDINO_PARITY_PYTHON", ROOT / ".parity-venv" / "bin" / "python"))
    if device != "cpu" or not python.is_file():
        rows["anchor"] = None
        return rows
    from grounded.tasks.bench import _cache_dir

    out = _cache_dir() / "real-size" / f"official-{os.getpid()}"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "anchor_weights.py"), "--detector", str(detector_dir)]
    done = subprocess.run(
        [*cmd, "--segmenter", str(segmenter_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    weights = json.loads(done.stdout.strip().splitlines()[-1])
    try:
        cmd = [str(python), str(ROOT / "benchmarks" / "anchor_path.py"), "--whole", ",".join(IMAGES)]
        cmd += ["--out", str(work / "anchor"), "--prompt", DEFAULT_PROMPT, "--box-threshold", "0"]
        cmd += ["--text-threshold", "0", "--max-boxes", str(BOXES), "--threads", str(torch.get_num_threads())]
        cmd += ["--gdino-checkpoint", weights["gdino_checkpoint"], "--text-encoder", weights["text_encoder"]]
        cmd += ["--sam-checkpoint", weights["sam_checkpoint"]]
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows["anchor"] = {"wall_s": time.perf_counter() - start, **json.loads(run.stdout.splitlines()[-1])}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def format_tables(results: dict[str, Any]) -> str:
    d = results["decoder"]
    lines = [
        f"Mask decoder, {BOXES} boxes on one image (SAM ViT-B, {results['device']}, {results['precision']}):",
        "",
        "| decoder | seconds | vs transformers | GFLOP (products) | measured / floor |",
        "|---|---:|---:|---:|---:|",
        f"| transformers SamMaskDecoder | {d['transformers_s']:.2f} | 1.00x | {d['transformers_gflop']:.0f} | "
        f"{d['transformers_s'] / d['floor_s']:.1f}x |",
        f"| grounded decode_many | {d['ours_s']:.2f} | {d['speedup']:.2f}x | {d['floor_gflop']:.0f} | "
        f"**{d['over_floor']:.2f}x** |",
        "",
        f"Floor: {d['floor_gflop']:.0f} GFLOP at the fp32 GEMM rate measured in this run "
        f"({d['gemm_gflops']:.0f} GFLOP/s) = {d['floor_s']:.2f} s. Agreement: logits within "
        f"{d['max_logit_diff']:.1e}, IoU predictions within {d['max_iou_pred_diff']:.1e}, min mask IoU "
        f"{d['min_mask_iou']:.5f}.",
        "",
    ]
    for key, name, module in (
        ("hq_decoder", "HQ-SAM ViT-B", "SamHQMaskDecoder"),
        ("sam2_decoder", "SAM 2.1 Hiera-T", "Sam2MaskDecoder"),
    ):
        row = results.get(key)
        if row:
            lines += [*_batched_decoder_table(name, module, row), ""]
    for kind, stages in results["results"].items():
        prev, ours = stages["previous"], stages["ours"]
        lines += [
            f"{BOXES} masks into results, 1024x1024 image, {kind} ({stages['coverage']['value']:.0%} of the "
            f"pixels on; masks equal to the previous path's: {bool(stages['masks_equal']['value'])}):",
            "",
            "| stage | previous path (s) | now (s) | speed-up |",
            "|---|---:|---:|---:|",
        ]
        for key in prev:
            bold = "**" if key == "mask work" else ""
            lines.append(
                f"| {bold}{key}{bold} | {prev[key]:.3f} | {ours[key]:.3f} | {prev[key] / ours[key]:.1f}x |"
            )
        lines.append("")
    w = results.get("whole")
    if w:
        lines += [
            "",
            f"Whole processes, 2 images ({', '.join(IMAGES)}), {BOXES} boxes each, fresh processes:",
            "",
        ]
        lines += [
            "| run | wall (s) | images/s | where the time goes (s, cProfile of the same run) |",
            "|---|---:|---:|---|",
        ]
        for name in ("segment", "eval coco (SegInW protocol)", "annotate"):
            row = w[name]
            where = ", ".join(f"{k} {v}" for k, v in row["where"].items())
            lines.append(f"| grounded {name} | {row['wall_s']:.1f} | {row['images_per_s']:.3f} | {where} |")
        anchor = w.get("anchor")
        if anchor:
            inference = anchor["detector_s"] + anchor["sam_encoder_s"] + anchor["sam_decoder_s"]
            lines.append(
                f"| anchor path (demo way) | {anchor['wall_s']:.1f} | {2 / anchor['wall_s']:.3f} | load "
                f"{anchor['load_s']}, detector {anchor['detector_s']:.1f}, SAM encoder {anchor['sam_encoder_s']:.1f}, "
                f"SAM decoder {anchor['sam_decoder_s']:.1f}, demo outputs {anchor['outputs_s']:.1f} |"
            )
            seg = w["segment"]["wall_s"]
            lines.append(
                f"\n`grounded segment` vs the anchor path: **{anchor['wall_s'] / seg:.2f}x** (whole process); "
                f"without the demo's matplotlib outputs: {(anchor['wall_s'] - anchor['outputs_s']) / seg:.2f}x; "
                f"anchor inference alone {inference:.1f} s."
            )
        else:
            lines.append("\nanchor path skipped (no official venv, or not on CPU)")
        lines += ["", *_where_table(w["segment"], anchor)]
    return "\n".join(lines)


# the anchor path's timed stages that match a breakdown row of ``grounded segment``
_ANCHOR_STAGES = {
    "model loading": "load_s",
    "detector": "detector_s",
    "SAM image encoder": "sam_encoder_s",
    "SAM mask decoder": "sam_decoder_s",
    "results written": "outputs_s",
}


def _batched_decoder_table(name: str, module: str, row: dict[str, Any]) -> list[str]:
    """Rows 1b / 1c: transformers' decoder against the batched one, per box, and the floor."""
    ours = "decode_many_hq" if "HQ" in name else "decode_many_sam2"
    return [
        f"{name}'s mask decoder, {BOXES} boxes on one image:",
        "",
        "| decoder | seconds | ms a box | vs transformers | measured / floor |",
        "|---|---:|---:|---:|---:|",
        f"| transformers {module} | {row['transformers_s']:.2f} | {row['transformers_ms_per_box']:.0f} | 1.00x "
        f"| {row['transformers_s'] / row['floor_s']:.1f}x |",
        f"| grounded {ours} | {row['ours_s']:.2f} | {row['ours_ms_per_box']:.0f} | {row['speedup']:.2f}x "
        f"| **{row['over_floor']:.2f}x** |",
        "",
        f"Floor: torch's FLOP count of {ours} ({row['floor_gflop']:.0f} GFLOP, {row['per_box_gflop']:.2f} a "
        f"box) at {row['gemm_gflops']:.0f} GFLOP/s = {row['floor_s']:.2f} s. Agreement: logits within "
        f"{row['max_logit_diff']:.1e}, IoU predictions within {row['max_iou_pred_diff']:.1e}, min mask IoU "
        f"{row['min_mask_iou']:.5f}.",
    ]


def _where_table(segment: dict[str, Any], anchor: dict[str, Any] | None) -> list[str]:
    """``grounded segment``'s profile breakdown, each row's share of the wall time and the anchor's same
    stage: what bounds the whole-process ratio."""
    wall = segment["wall_s"]
    lines = [
        f"Where `grounded segment`'s {wall:.1f} s go (cProfile of the same run; the anchor path timed by its "
        "script, its start-up = wall minus its timed stages):",
        "",
        "| stage | grounded segment (s) | share of wall | anchor path (s) | anchor / grounded |",
        "|---|---:|---:|---:|---:|",
    ]
    timed = 0.0 if anchor is None else sum(float(anchor[k]) for k in _ANCHOR_STAGES.values())
    for stage, seconds in segment["where"].items():
        theirs: float | None = None
        if anchor is not None and stage in _ANCHOR_STAGES:
            theirs = float(anchor[_ANCHOR_STAGES[stage]])
        elif anchor is not None and stage.startswith("start-up"):
            theirs = float(anchor["wall_s"]) - timed
        other = "" if theirs is None else f"{theirs:.2f}"
        ratio = "" if theirs is None or seconds <= 0 else f"{theirs / seconds:.2f}x"
        lines.append(f"| {stage} | {seconds:.2f} | {seconds / wall:.0%} | {other} | {ratio} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from grounded.tasks.bench import _models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--skip-whole", action="store_true", help="only the decoder and results rows")
    parser.add_argument("--hq", action="store_true", help="also HQ-SAM ViT-B's decoder (row 1b)")
    parser.add_argument("--sam2", action="store_true", help="also SAM 2.1 Hiera-T's decoder (row 1c)")
    parser.add_argument("--out", type=Path, help="also write the tables (Markdown) and JSON next to it")
    args = parser.parse_args(argv)
    detector_dir, segmenter_dir = _models(False)
    results: dict[str, Any] = {"device": args.device, "precision": args.precision}
    results |= decoder_and_results(segmenter_dir, args.device, args.precision)
    if args.hq:
        results["hq_decoder"] = hq_decoder(_models(False, hq=True)[1], args.device, args.precision)
    if args.sam2:
        results["sam2_decoder"] = sam2_decoder(args.device, args.precision)
    print(format_tables(results), flush=True)
    if not args.skip_whole:
        with tempfile.TemporaryDirectory() as work:
            results["whole"] = whole_processes(
                detector_dir, segmenter_dir, args.device, args.precision, Path(work)
            )
    text = format_tables(results)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
