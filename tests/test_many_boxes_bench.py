"""benchmarks/many_boxes.py: the whole-process profile breakdown finds every stage of a real ``grounded`` run."""

from __future__ import annotations

import cProfile
import importlib.util
import sys
from pathlib import Path

import pytest

from grounded.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("many_boxes", ROOT / "benchmarks" / "many_boxes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("many_boxes", module)
    spec.loader.exec_module(module)
    return module


def test_profile_breakdown_finds_the_stages_of_grounded_segment(tiny_gdino, tiny_sam, image_files, tmp_path):
    bench = _bench()
    argv = ["segment", str(image_files["astronaut"]), "-p", "person . flag", "-o", str(tmp_path / "out")]
    argv += ["--detector", str(tiny_gdino), "--segmenter", str(tiny_sam), "--box-threshold", "0"]
    argv += ["--text-threshold", "0", "--top-k", "30", "--no-nms", "-q"]
    profile = cProfile.Profile()
    assert profile.runcall(main, argv) == 0
    profile.dump_stats(str(tmp_path / "run.prof"))
    where = bench._profile_breakdown(tmp_path / "run.prof")
    stages = ["model loading", "detector", "SAM image encoder", "SAM mask decoder", "masks upsampled"]
    stages += ["results written"]
    for stage in stages:  # a renamed function would drop its row silently
        assert where.get(stage, 0) > 0, (stage, where)
    assert "COCO evaluation" not in where
    rows = [v for k, v in where.items() if not k.startswith(("imports", "profiled"))]
    assert sum(rows) == pytest.approx(where["profiled total"], abs=0.1)  # the rows split the total
    assert all(v >= 0 for v in rows), where
    table = bench._where_table({"wall_s": 10.0, "where": where}, None)
    assert len(table) == 4 + len(where) and "| detector |" in "\n".join(table)
