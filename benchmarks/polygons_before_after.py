"""Masks to polygons, an earlier version of ``grounded/core/polygons.py`` against the working tree's, timed
alternately in one run on the benchmark's 1024x1024 masks (``grounded.tasks.bench._polygon_masks``), with
OpenCV's ``findContours`` alone beside them (the tracer both call). The two must give the same polygons.

Run: ``.venv/bin/python benchmarks/polygons_before_after.py --before REV [--repeats 21]`` (``REV``: any git
revision whose ``grounded/core/polygons.py`` has ``mask_polygons``).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _module_at(revision: str) -> ModuleType:
    """``grounded/core/polygons.py`` as it was at ``revision``, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:grounded/core/polygons.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "polygons_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("polygons_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["polygons_before"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    import cv2

    from grounded.core import polygons as now
    from grounded.tasks.bench import _polygon_masks, machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    before = _module_at(args.before)
    print(f"masks to polygons, 1024x1024, {args.before} against the working tree ({machine()}): ms per mask,")
    print(f"the minimum of {args.repeats} alternate calls; now / before: the median of the calls' ratios\n")
    print(
        "| mask | YOLO before | YOLO now | now / before | COCO before | COCO now | now / before | findContours |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, mask in _polygon_masks(1024).items():
        cells = [name]
        for convention, join in (("centre", "all"), ("corner", "holes")):
            old_polys = before.mask_polygons(mask, convention, join=join)
            new_polys = now.mask_polygons(mask, convention, join=join)
            same = len(old_polys) == len(new_polys) and all(
                np.array_equal(a, b) for a, b in zip(old_polys, new_polys, strict=True)
            )
            if not same:
                raise SystemExit(f"{name} ({convention}): the two versions give different polygons")
            old_times, new_times = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                before.mask_polygons(mask, convention, join=join)
                old_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                now.mask_polygons(mask, convention, join=join)
                new_times.append(time.perf_counter() - start)
            ratio = float(np.median(np.array(new_times) / np.array(old_times)))
            cells += [f"{1000 * min(old_times):.1f}", f"{1000 * min(new_times):.1f}", f"{ratio:.2f}"]
        crop = mask.astype(np.uint8)
        traced = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            traced.append(time.perf_counter() - start)
        cells.append(f"{1000 * min(traced):.1f}")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
