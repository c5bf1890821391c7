"""Masks to polygons (grounded.core.polygons): exact in both conventions, holes and parts kept, fast on
ragged masks."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from grounded.core.polygons import join_rings, mask_parts, mask_polygons
from grounded.tasks.datasets import fill_polygon, mask_iou, polygons_to_mask


def _ragged(size: int = 1024, sigma: float = 6.0, seed: int = 0) -> np.ndarray:
    """Foliage-like: smoothed noise thresholded (about 270 parts and holes at 1024 x 1024)."""
    noise = np.random.default_rng(seed).standard_normal((size, size))
    return ndimage.gaussian_filter(noise, sigma) > 0


def _ring() -> np.ndarray:
    yy, xx = np.mgrid[:200, :220]
    d2 = (yy - 100) ** 2 + (xx - 110) ** 2
    return (d2 < 80**2) & (d2 >= 40**2)


MASKS = {
    "horse": lambda: ~data.horse(),
    "coins": lambda: data.coins() > 110,  # 87 parts, 559 holes
    "ring": _ring,
    "ragged": lambda: _ragged(256, 3.0),
    "pixel": lambda: np.pad(np.ones((1, 1), bool), 3),
    "line": lambda: np.pad(np.ones((1, 9), bool), 3),
}


@pytest.mark.parametrize("name", sorted(MASKS))
def test_both_conventions_give_the_mask_back_exactly(name):
    mask = MASKS[name]()
    h, w = mask.shape
    # COCO: one polygon per part (holes joined in), read by pycocotools (pixel corners, union of the polygons)
    assert (
        mask_iou(
            polygons_to_mask([p.reshape(-1).tolist() for p in mask_polygons(mask, "corner")], h, w), mask
        )
        == 1.0
    )
    # the same with every ring in one polygon: pycocotools fills it even-odd, zero-width bridges add nothing
    joined = mask_polygons(mask, "corner", join="all")
    assert (
        len(joined) == 1 and mask_iou(polygons_to_mask([joined[0].reshape(-1).tolist()], h, w), mask) == 1.0
    )
    # YOLO: pixel centres, filled as ultralytics fills (cv2.fillPoly of each polygon)
    union = np.zeros_like(mask)
    for poly in mask_polygons(mask, "centre"):
        union |= fill_polygon(poly, h, w)
    assert mask_iou(union, mask) == 1.0
    # one polygon of every part: nothing is lost, the bridges between parts are the only extra pixels
    (one,) = mask_polygons(mask, "centre", join="all")
    filled = fill_polygon(one, h, w)
    assert not (mask & ~filled).any()
    assert mask_iou(filled, mask) >= (0.98 if name != "coins" else 0.97)


def test_parts_and_holes_follow_opencvs_hierarchy():
    mask = np.zeros((60, 60), bool)
    mask[5:55, 5:55] = True
    mask[15:45, 15:45] = False
    mask[25:35, 25:35] = True  # a part inside the hole
    parts = mask_parts(mask, "centre")
    assert [len(p.holes) for p in parts] == [0, 1] or [len(p.holes) for p in parts] == [1, 0]
    outer = next(p for p in parts if p.holes)
    assert outer.outer[:, 0].min() == 5 and outer.outer[:, 0].max() == 54  # pixel centres of the boundary
    corner = next(p for p in mask_parts(mask, "corner") if p.holes)
    assert (
        corner.outer[:, 0].min() == 5.25 and corner.outer[:, 0].max() == 54.75
    )  # a quarter inside the squares
    assert mask_parts(np.zeros((5, 5), bool)) == [] and mask_polygons(np.zeros((5, 5), bool)) == []
    with pytest.raises(ValueError, match="mask"):
        mask_parts(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="convention"):
        mask_polygons(mask, "middle")  # type: ignore[arg-type]


def test_join_rings_walks_every_ring_once_and_every_bridge_twice():
    mask = np.zeros((12, 30), bool)
    mask[2:8, 2:8] = True
    mask[3:6, 14:20] = True  # 6 pixels to the right, on the same rows
    parts = mask_parts(mask, "centre")
    rings = [np.round(p.outer).astype(int) for p in parts]
    (joined,) = mask_polygons(mask, "centre", join="all")
    edges = list(zip(map(tuple, joined[:-1].astype(int)), map(tuple, joined[1:].astype(int)), strict=True))
    across = [(p, q) for p, q in edges if (p[0] <= 7) != (q[0] <= 7)]  # steps between the two squares
    assert len(across) == 2 and across[0] == across[1][::-1]  # one bridge, walked out and back
    (p, q) = across[0]
    assert p[1] == q[1] and abs(q[0] - p[0]) == 7  # along a row, the shortest way: from x=7 to x=14
    filled = fill_polygon(joined, 12, 30)
    assert not (mask & ~filled).any() and (filled & ~mask).sum() == 6  # the bridge's 6 background pixels
    assert len(rings) == 2
    # two single pixels: out to the second, round it, back, round the first
    assert join_rings([np.array([[0, 0]]), np.array([[3, 0]])]).tolist() == [
        [0, 0],
        [3, 0],
        [3, 0],
        [0, 0],
        [0, 0],
    ]


def test_a_ragged_mask_is_fast():
    """Issue 15: skimage's find_contours + assembly took 3.5 s on a ragged mask; OpenCV's tracer takes ms."""
    mask = _ragged()
    warm = np.random.default_rng(1).random((64, 64)) > 0.5
    mask_polygons(warm, "centre", join="all")  # imports
    mask_polygons(warm, "corner")
    times = {}
    for convention, join in (("centre", "all"), ("corner", "holes")):
        start = time.perf_counter()
        polys = mask_polygons(mask, convention, join=join)
        times[convention] = time.perf_counter() - start
        assert polys
    print(f"ragged 1024x1024 mask ({len(mask_parts(mask))} parts): {times}")
    assert times["centre"] < 0.25 and times["corner"] < 0.5  # generous: a shared CI machine


def test_benchmark_rows():
    from grounded.tasks.bench import format_polygon_times, polygon_times

    rows = polygon_times(size=128, repeats=1)
    assert [r["mask"] for r in rows] == [
        "disk",
        "horse",
        "foliage s=12",
        "foliage s=6",
        "foliage s=3",
        "checker 4px",
    ]
    assert rows[0]["parts"] == 1 and rows[0]["holes"] == 0 and rows[-1]["holes"] > 10
    assert all(r["yolo_ms"] > 0 and r["coco_ms"] > 0 and r["opencv_trace_ms"] > 0 for r in rows)
    assert format_polygon_times(rows, 128).count("\n| ") == len(rows) + 1


def _random_masks(count: int, seed: int = 5):
    """Small random masks, salt-and-pepper and smoothed (every configuration of neighbours turns up)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        h, w = (int(v) for v in rng.integers(2, 40, 2))
        if k % 3 == 0:
            yield ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.5) > 0
        else:
            yield rng.random((h, w)) < rng.uniform(0.2, 0.8)


def test_corner_rings_are_opencvs_trace_of_the_mask_upsampled_2x():
    """The quarter-point table reproduces, point for point (up to the starting point), the rings OpenCV traces
    on the mask upsampled 2x, which pycocotools fills back exactly; every entry of the table is derived
    again here from those traces."""
    import cv2

    from grounded.core import polygons

    derived: dict[int, set[tuple[int, ...]]] = {}
    for mask in _random_masks(100):
        if not mask.any():
            continue
        rings = polygons._trace(mask, "corner")
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        crop = np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], np.uint8)
        big = cv2.resize(crop, (2 * crop.shape[1], 2 * crop.shape[0]), interpolation=cv2.INTER_NEAREST)
        traced, _ = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        assert len(traced) == len(rings.sizes)
        for i, ring in enumerate(traced):
            ring = ring.reshape(-1, 2)
            span = slice(int(rings.starts[i]), int(rings.starts[i] + rings.sizes[i]))
            mine = np.stack([rings.x[span], rings.y[span]], axis=1)
            assert len(mine) == len(ring)
            starts = np.flatnonzero((mine == ring[0]).all(axis=1))  # the same ring from another point
            assert any((np.roll(mine, -int(s), 0) == ring).all() for s in starts)
        # the table, from the trace of the mask itself and the 2x trace's points in each pixel
        small, _ = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        for i, ring in enumerate(small):
            pixels = ring.reshape(-1, 2)
            span = slice(int(rings.starts[i]), int(rings.starts[i] + rings.sizes[i]))
            points = np.stack([rings.x[span], rings.y[span]], axis=1)
            keys = _keys(pixels)
            pieces = np.split(points, np.cumsum(polygons._COUNT[keys])[:-1])
            for key, pixel, piece in zip(keys.tolist(), pixels, pieces, strict=True):
                quarters = piece - 2 * pixel
                assert ((quarters >= 0) & (quarters <= 1)).all()  # inside the pixel
                derived.setdefault(key, set()).add(tuple((quarters[:, 0] + 2 * quarters[:, 1]).tolist()))
    table = {
        int(k[0]) * 9 + int(k[1]): tuple(int(q) for q in v)
        for k, v in (e.split(":") for e in polygons._QUARTER_TABLE.split())
    }
    assert all(len(v) == 1 for v in derived.values())  # one sequence for each pair of directions
    assert {k: next(iter(v)) for k, v in derived.items()} == {k: table[k] for k in derived}
    assert len(derived) >= 45  # nearly every entry turns up in these masks


def _keys(pixels: np.ndarray) -> np.ndarray:
    if len(pixels) == 1:
        return np.array([4 * 9 + 4])
    out = (np.roll(pixels, -1, 0) - pixels) @ np.array([1, 3]) + 4
    return np.roll(out, 1) * 9 + out


def test_random_masks_round_trip_exactly():
    for mask in _random_masks(120, seed=7):
        h, w = mask.shape
        coco = polygons_to_mask([p.reshape(-1).tolist() for p in mask_polygons(mask, "corner")], h, w)
        assert (coco == mask).all()
        (joined,) = mask_polygons(mask, "corner", join="all") or [np.zeros((0, 2))]
        assert (polygons_to_mask([joined.reshape(-1).tolist()] if len(joined) else [], h, w) == mask).all()
        union = np.zeros_like(mask)
        for poly in mask_polygons(mask, "centre"):
            union |= fill_polygon(poly, h, w)
        assert (union == mask).all()
        for poly in mask_polygons(mask, "centre", join="all"):
            assert not (mask & ~fill_polygon(poly, h, w)).any()


def test_a_configuration_missing_from_the_table_falls_back_to_the_upsampled_trace(monkeypatch):
    from grounded.core import polygons

    mask = MASKS["coins"]()
    h, w = mask.shape
    expected = mask_polygons(mask, "corner")
    rings = polygons._trace(mask, "centre")
    out, into = polygons._pixel_keys(rings.px, rings.py, rings.starts, rings.sizes)
    count = polygons._COUNT.copy()
    count[int(into[0]) * 9 + int(out[0])] = 0  # as if the directions of the first pixel were unknown
    monkeypatch.setattr(polygons, "_COUNT", count)
    traced = []
    real_trace = polygons._trace
    monkeypatch.setattr(polygons, "_trace", lambda m, c, **kw: traced.append(c) or real_trace(m, c, **kw))
    got = mask_polygons(mask, "corner")
    assert traced == ["centre", "corner"]  # traced again, upsampled
    assert len(got) == len(expected)
    assert (polygons_to_mask([p.reshape(-1).tolist() for p in got], h, w) == mask).all()


def test_parts_no_row_or_column_reaches_are_joined_by_their_first_points():
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True
    mask[12:15, 12:15] = True  # no row or column in common with the first square
    (joined,) = mask_polygons(mask, "centre", join="all")
    filled = fill_polygon(joined, 20, 20)
    assert not (mask & ~filled).any()
    assert [1, 1] in joined.tolist() and [12, 12] in joined.tolist()  # first points, joined
    (corner,) = mask_polygons(mask, "corner", join="all")
    assert (polygons_to_mask([corner.reshape(-1).tolist()], 20, 20) == mask).all()
    assert join_rings(
        [np.array([[0, 0], [5, 0], [5, 5], [0, 5]]), np.array([[10, 7], [12, 7]])]
    ).tolist() == [
        [0, 0],
        [10, 7],
        [12, 7],
        [10, 7],
        [0, 0],
        [5, 0],
        [5, 5],
        [0, 5],
        [0, 0],
    ]


def test_yolo_label_text_of_pixel_vertices_equals_formatting_every_coordinate():
    """The looked-up coordinate words give the same bytes as ``%.6f`` of each normalised coordinate."""
    from grounded.tasks.datasets import YOLO_OFFSET, _yolo_line

    def formatted(class_id: int, polygon: np.ndarray, height: int, width: int) -> str:
        xy = np.clip((polygon + YOLO_OFFSET) / np.array([width, height]), 0.0, 1.0).reshape(-1)
        return f"{class_id} " + " ".join(f"{v:.6f}" for v in xy)

    rng = np.random.default_rng(3)
    for height, width in ((480, 640), (1024, 1024), (7, 3)):
        poly = np.stack([rng.integers(0, width + 1, 500), rng.integers(0, height + 1, 500)], axis=1)
        poly[:2] = [[0, 0], [width, height]]  # both ends of the range
        assert _yolo_line(2, poly.astype(np.float64), height, width) == formatted(2, poly, height, width)
    off_grid = np.array([[1.5, 2.25], [3.0, 4.0], [5.0, 6.0]])  # not pixel vertices: formatted one by one
    assert _yolo_line(0, off_grid, 10, 10) == formatted(0, off_grid, 10, 10)


def test_annotation_rle_is_pycocotools_ann_to_rle_without_its_quadratic_union():
    """validate_coco / convert-dataset read polygons as pycocotools' annToRLE does (frPyObjects, then the
    union), the union taken 16 at a time: the same bytes, and not one merge of thousands of parts in turn."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from grounded.core.rle import annotation_rle, union_rles
    from grounded.tasks.datasets import coco_polygons

    noise = np.random.default_rng(3).standard_normal((640, 640))
    mask = ndimage.gaussian_filter(noise, 1.0) > 0.3  # about 7,000 parts
    h, w = mask.shape
    polygons = coco_polygons(mask)
    assert len(polygons) > 5000  # many parts: where one merge of them all is slow
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": h, "width": w}], "categories": [{"id": 1, "name": "x"}]}
    coco.dataset["annotations"] = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": polygons}]
    coco.createIndex()
    gc.disable()  # a collection of the test session's heap inside one timing would decide the comparison
    try:
        start = time.perf_counter()
        expected = coco.annToRLE(coco.anns[1])
        theirs = time.perf_counter() - start
        start = time.perf_counter()
        got = annotation_rle(polygons, h, w)
        ours = time.perf_counter() - start
    finally:
        gc.enable()
    assert got["counts"] == expected["counts"] and list(got["size"]) == [h, w]
    assert (mask_utils.decode(got).astype(bool) == mask).all()
    print(f"{len(polygons)} polygons: annToRLE {theirs:.3f} s, annotation_rle {ours:.3f} s")
    assert ours < theirs / 3
    # the other segmentation forms, as annToRLE reads them
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_text = {"size": [h, w], "counts": compressed["counts"].decode("ascii")}
    assert annotation_rle(as_text, h, w)["counts"] == compressed["counts"]
    runs = [0, 5, 7, h * w - 12]
    uncompressed = {"size": [h, w], "counts": runs}
    assert (
        annotation_rle(uncompressed, h, w)["counts"] == mask_utils.frPyObjects(uncompressed, h, w)["counts"]
    )
    assert not mask_utils.decode(annotation_rle([], h, w)).any()
    parts = mask_utils.frPyObjects(polygons[:40], h, w)
    assert union_rles(parts, h, w)["counts"] == mask_utils.merge(parts)["counts"]


def test_side_work_runs_on_ragged_masks_and_in_a_forked_child():
    """Ragged masks have their boundary lists made on a side thread while OpenCV traces; a child forked after
    that thread exists (multiprocessing's default on Linux, Ray's workers) gets threads of its own."""
    import multiprocessing

    from grounded.core import polygons

    mask = _ragged(512, 3.0)
    expected = mask_polygons(mask, "centre", join="all")
    assert polygons._POOL is not None  # the side thread was used
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(mask_polygons, (mask, "centre", "all")).get(timeout=60)
    assert len(got) == 1 and np.array_equal(got[0], expected[0])


@pytest.mark.parametrize("name", sorted(MASKS))
def test_coco_polygon_text_is_what_json_writes_of_the_polygons(name):
    """write_coco looks each coordinate's text up (coco_polygons_json): the same characters as json.dumps of
    coco_polygons, in a whole document too; other strings (a NUL in a phrase) are left alone."""
    import json

    from grounded.core.files import JsonText, compact_json
    from grounded.core.rle import encode_masks
    from grounded.tasks.datasets import coco_document, coco_polygons, coco_polygons_json

    mask = MASKS[name]()
    assert coco_polygons_json(mask) == json.dumps(coco_polygons(mask), separators=(",", ":"))
    small = np.zeros((6, 6), bool)
    small[2, 2] = True  # one vertex: padded
    assert coco_polygons_json(small) == json.dumps(coco_polygons(small), separators=(",", ":"))
    assert coco_polygons_json(np.zeros((4, 4), bool)) == "[]"
    h, w = mask.shape
    anns = [
        {"category": "a", "score": 0.5, "phrase": "x\x00y \u00e9", "segmentation": encode_masks(m[None])[0]}
        for m in (mask, small if small.shape == mask.shape else np.pad(small, ((0, h - 6), (0, w - 6))))
    ]
    records = [{"file": "f.png", "name": "f", "height": h, "width": w, "annotations": anns}]
    fast = compact_json(coco_document(records, ["a"], polygon_text=True))
    assert fast == compact_json(coco_document(records, ["a"]))
    assert json.loads(fast)["annotations"][0]["attributes"]["phrase"] == "x\x00y \u00e9"
    assert compact_json([JsonText("[1,2]"), "\x00"]) == '[[1,2],"\\u0000"]\n'
    with pytest.raises(TypeError, match="not JSON serializable"):
        compact_json({"a": object()})


def test_before_after_benchmark_compares_two_versions_that_agree():
    """benchmarks/polygons_before_after.py times an earlier polygons.py against this one (here HEAD against
    the working tree: the same code at most) and refuses versions that give different polygons."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    script = root / "benchmarks" / "polygons_before_after.py"
    done = subprocess.run(
        [sys.executable, str(script), "--before", "HEAD", "--repeats", "1"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == [
        "disk", "horse", "foliage s=12", "foliage s=6", "foliage s=3", "checker 4px"
    ]  # fmt: skip
    assert all(len(r.split(" | ")) == 8 for r in rows)
