"""Issue 8 benchmark: text → masks speed on this machine, in one run, as Markdown tables.

Prints (and with ``--out`` writes) stage times and end-to-end time of the fp32 baseline (transformers' kernels)
and of the optimised path (``grounded.runtime.fast_kernels`` kernels, ``--precision``), their speed-up and output agreement,
the cache-hit times, images/s and peak memory by batch size (``grounded.tasks.bench.run_benchmark``), then the
speed-up over the anchor path: the official ``groundingdino-py`` ``predict`` + segment-anything ``SamPredictor``
(and HQ-SAM's) wired as Grounded-SAM's ``grounded_sam_demo.py`` wires them, on the same weights written in the
official file layouts (``benchmarks/anchor_weights.py``) and timed by ``benchmarks/anchor_path.py`` in the
official venv (``tests/parity/make_gdino_venv.sh`` → ``.parity-venv``; without it that part is skipped).

Run (grounded's venv): ``.venv/bin/python benchmarks/run.py [--repeats 3] [--out benchmarks/latest.md]``.
The 100-boxes-an-image rows (mask decoder, results, whole processes: issue 19) are ``benchmarks/many_boxes.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
ANCHOR_IMAGES = ("astronaut", "coffee")  # what anchor_path.py takes


def _parity_python() -> Path | None:
    path = Path(os.environ.get("GROUNDED_GDINO_PARITY_PYTHON", ROOT / ".parity-venv" / "bin" / "python"))
    return path if path.is_file() else None


def _ours_on(image: str, prompt: str, repeats: int, precision: str, hq: bool) -> dict[str, float]:
    """Median stage times of grounded's optimised path on the benchmark folders (the anchor's weights)."""
    from grounded.tasks.bench import _adapters, _models, bench_image, stage_times

    detector_dir, segmenter_dir = _models(False, hq=hq)
    models = _adapters(detector_dir, segmenter_dir, True, precision)
    picture = bench_image(image)
    stage_times(*models, picture, prompt)  # warm-up, as the anchor does
    rounds = [stage_times(*models, picture, prompt)[0] for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def anchor_comparison(images: list[str], prompt: str, repeats: int, precision: str) -> list[dict[str, Any]]:
    """Anchor (official code) and grounded's optimised path on the same files, image by image."""
    from grounded.tasks.bench import _cache_dir, _models

    python = _parity_python()
    if python is None:
        return []
    _, hq_dir = _models(False, hq=True)
    out = _cache_dir() / "real-size" / f"official-{os.getpid()}"  # this run's own copy of the files
    cmd = [sys.executable, str(ROOT / "benchmarks" / "anchor_weights.py"), "--hq-segmenter", str(hq_dir)]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, check=True)
    try:
        files = json.loads(done.stdout.strip().splitlines()[-1])
        rows = []
        for image in images:
            cmd = [str(python), str(ROOT / "benchmarks" / "anchor_path.py"), "--image", image]
            cmd += ["--prompt", prompt, "--repeats", str(repeats), "--threads", str(torch.get_num_threads())]
            cmd += ["--gdino-checkpoint", files["gdino_checkpoint"], "--text-encoder", files["text_encoder"]]
            cmd += ["--sam-checkpoint", files["sam_checkpoint"]]
            if "sam_hq_checkpoint" in files:
                cmd += ["--hq", files["sam_hq_checkpoint"]]
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            anchor = json.loads(run.stdout.splitlines()[-1])
            ours = _ours_on(image, prompt, repeats, precision, hq=False)
            ours_hq = _ours_on(image, prompt, repeats, precision, hq=True)
            rows.append({"image": image, "anchor": anchor, "ours": ours, "ours_hq": ours_hq})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def format_anchor(rows: list[dict[str, Any]]) -> str:
    """The anchor comparison as a Markdown table."""
    lines = [
        "| image | segmenter | stage | anchor (s) | grounded optimised (s) | speed-up |",
        "|---|---|---|---:|---:|---:|",
    ]
    stages = [("detector", "detector_s", "detect"), ("SAM image encoder", "sam_encoder_s", "encode")]
    stages += [("SAM mask decoder", "sam_decoder_s", "decode"), ("**end to end**", "end_to_end_s", "total")]
    for row in rows:
        anchor = row["anchor"]
        for segmenter, ours, prefix in (
            ("SAM ViT-B", row["ours"], ""),
            ("HQ-SAM ViT-B", row["ours_hq"], "hq_"),
        ):
            for label, key, our_key in stages:
                theirs = anchor.get(key if key == "detector_s" or not prefix else prefix + key)
                if theirs is None:
                    continue
                mine = ours[our_key]
                lines.append(
                    f"| {row['image']} | {segmenter} | {label} | {theirs:.2f} | {mine:.2f} | {theirs / mine:.2f}x |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from grounded.tasks.bench import DEFAULT_PROMPT, format_results, run_benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", default="astronaut@1024,coffee", help="skimage images (NAME@SIZE: resized)"
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement (median)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised path")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="images/s and peak memory at these sizes")
    parser.add_argument(
        "--anchor-images",
        default=",".join(ANCHOR_IMAGES),
        help="images for the anchor comparison (empty: skip)",
    )
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument(
        "--polygons-only",
        action="store_true",
        help="only the dataset writers' masks-to-polygons times (1024x1024 masks, compact to ragged)",
    )
    args = parser.parse_args(argv)
    from grounded.tasks.bench import format_polygon_times, polygon_times

    polygons = format_polygon_times(polygon_times(repeats=args.repeats))
    if args.polygons_only:
        print(polygons, flush=True)
        if args.out:
            args.out.write_text(polygons + "\n")
        return 0
    results = run_benchmark(
        images=[v for v in args.images.split(",") if v],
        prompt=args.prompt,
        repeats=args.repeats,
        precision=args.precision,
        compile=args.compile,
        batch_sizes=[int(v) for v in args.batch_sizes.split(",") if v],
        verbose=False,
    )
    text = format_results(results)
    print(text, flush=True)
    anchor_images = [v for v in args.anchor_images.split(",") if v]
    if anchor_images and _parity_python() is None:
        note = "anchor path skipped: no official venv (run tests/parity/make_gdino_venv.sh)"
        print(note)
        text += f"\n\n{note}"
    elif anchor_images:
        table = format_anchor(
            anchor_comparison(anchor_images, args.prompt, args.repeats, results["precision"])
        )
        print("\n" + table)
        text += "\n\n" + table
    print("\n" + polygons)
    text += "\n\n" + polygons
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
