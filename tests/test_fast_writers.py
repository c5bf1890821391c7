"""Masks computed in windows and RLE read off windows give the processor's masks and the same files (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from grounded.adapters import SAM
from grounded.core import rle, upsample
from grounded.core.detections import Detections
from grounded.core.images import load_image
from grounded.core.rle import encode_masks, encode_window, rle_to_json
from grounded.core.upsample import upsample_windows
from grounded.tasks.bench import healthy_weights
from grounded.tasks.export import write_image_results


def _blobs(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 256, 256) logits: a noisy ellipse each, some all negative, one touching the borders."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.arange(256.0)
    centre = torch.rand(n, 2, generator=gen) * 256
    radius = torch.rand(n, 2, generator=gen) * 60 + 1
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, 0, None, None]
    dy = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, 1, None, None]
    low = (1 - dx**2 - dy**2) * 8 + torch.randn(n, 256, 256, generator=gen)
    low[1] = -3 - torch.rand(256, 256, generator=gen)  # empty
    low[2] = 5.0  # everywhere
    return low


def _processor_path(low: torch.Tensor, reshaped: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """transformers' SamImageProcessor.post_process_masks, written out (logits, before the threshold)."""
    up = F.interpolate(low[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    up = up[..., : reshaped[0], : reshaped[1]]
    return F.interpolate(up, size, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize(
    ("size", "reshaped", "threshold"),
    [((1024, 1024), (1024, 1024), 0.0), ((400, 600), (683, 1024), 0.0), ((1500, 700), (1024, 478), 0.5)],
)
@pytest.mark.parametrize("whole", [0.0, 2.0])  # every mask as the processor does / every one in its window
def test_windows_equal_the_processors_masks(monkeypatch, size, reshaped, threshold, whole):
    monkeypatch.setattr(upsample, "_WHOLE_FRACTION", whole)
    low = _blobs(12)
    logits = _processor_path(low, reshaped, size)
    expected = logits > threshold
    got = torch.zeros_like(expected)
    windows = list(upsample_windows(low, (1024, 1024), reshaped, size, threshold))
    assert [w.index for w in windows] == list(range(12))
    for w in windows:
        got[w.index, w.rows[0] : w.rows[1], w.cols[0] : w.cols[1]] = torch.from_numpy(w.mask)
    differ = got != expected
    assert int(differ.sum()) == 0 or float((logits[differ] - threshold).abs().max()) < 1e-5
    assert windows[1].mask.size == 0 and bool(expected[1].any()) is False
    assert windows[2].rows == (0, size[0]) and windows[2].cols == (0, size[1])
    # windows are tight: a small blob's window is a small part of the image
    areas = [w.mask.size / (size[0] * size[1]) for w in windows]
    assert min(a for a in areas if a) < 0.2


@pytest.mark.parametrize("listed_runs", [0, 20000])  # pycocotools on the whole mask / runs off the window
def test_rle_from_windows_is_pycocotools_encode(monkeypatch, listed_runs):
    monkeypatch.setattr(rle, "_MAX_LISTED_RUNS", listed_runs)
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 37, 23), dtype=bool)
    for i, mask in enumerate(masks):
        kind = i % 4
        if kind == 0:
            mask[:] = rng.random(mask.shape) > 0.5
        elif kind == 1:
            mask[rng.integers(0, 37) :, rng.integers(0, 23) :] = True  # touching the bottom-right corner
        elif kind == 2:
            mask[:, rng.integers(0, 23) :] = True  # runs going on into the next column
        else:
            mask[0] = rng.random(23) > 0.3
            mask[-1] = rng.random(23) > 0.3
    masks[5] = False
    masks[6] = True
    expected = [
        rle_to_json(r)
        for r in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    ]
    assert encode_masks(masks) == expected
    assert (
        encode_window(masks[7][3:9, 2:20], 3, 2, (37, 23))
        == encode_masks(np.pad(masks[7][3:9, 2:20], ((3, 28), (2, 3)))[None])[0]
    )
    with pytest.raises(ValueError, match="outside"):
        encode_window(np.ones((5, 5), bool), 35, 0, (37, 23))
    # the same masks as windows of a larger image (under a quarter of it: runs read off the window in NumPy)
    for window in masks:
        canvas = np.zeros((80, 60), dtype=bool)
        canvas[20:57, 15:38] = window
        assert encode_window(window, 20, 15, (80, 60)) == encode_masks(canvas[None])[0]
        assert encode_window(window, 20, 15, (80, 60)) == rle_to_json(
            mask_utils.encode(np.asfortranarray(canvas[:, :, None].astype(np.uint8)))[0]
        )


def _results(tiny_sam, image, det, windowed, folder, monkeypatch):
    monkeypatch.setattr(SAM, "windowed_upsampling", windowed)
    sam = SAM(model=str(tiny_sam), device="cpu", cache_size=0)
    sam.warm_up()
    healthy_weights(sam._model, seed=5)
    (out,) = sam.segment([image], [det])
    write_image_results(folder, "coffee", image, out)
    return out


def test_windowed_masks_write_the_same_files(tiny_sam, image_files, tmp_path, monkeypatch):
    """The whole result (JSON with RLE, label PNG, overlay PNG) is byte-identical to the processor path's."""
    image = load_image(image_files["coffee"])
    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(30, 2, generator=gen) * torch.tensor([500.0, 300.0])
    boxes = torch.cat([corner, corner + torch.rand(30, 2, generator=gen) * 150 + 5], 1)
    det = Detections(
        boxes,
        torch.rand(30, generator=gen),
        torch.zeros(30, dtype=torch.int64),
        ("x",),
        ("x",) * 30,
        image.size,
    )
    fast = _results(tiny_sam, image, det, True, tmp_path / "fast", monkeypatch)
    slow = _results(tiny_sam, image, det, False, tmp_path / "slow", monkeypatch)
    assert torch.equal(fast.masks, slow.masks)
    assert 0.001 < float(fast.masks.float().mean()) < 0.9
    for name in ("coffee.json", "coffee.png", "coffee_labels.png"):
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "slow" / name).read_bytes()


def test_rle_path_reads_windows_without_full_size_masks(tiny_sam, image_files, monkeypatch):
    """Where dense masks do not fit, masks go straight from windows to RLE: the same RLE as the dense path."""
    image = load_image(image_files["coffee"])
    boxes = torch.tensor([[10.0, 20.0, 200.0, 300.0], [300.0, 50.0, 590.0, 390.0], [0.0, 0.0, 600.0, 400.0]])
    det = Detections(boxes, torch.ones(3), torch.zeros(3, dtype=torch.int64), ("x",), ("x",) * 3, image.size)
    sam = SAM(model=str(tiny_sam), device="cpu", cache_size=0)
    sam.warm_up()
    healthy_weights(sam._model, seed=5)
    (dense,) = sam.segment([image], [det])
    monkeypatch.setattr("grounded.adapters.sam.fits_dense", lambda *a: False)
    monkeypatch.setattr(SAM, "_upsample_parts", lambda *a: pytest.fail("full-size masks were made"))
    (compact,) = sam.segment([image], [det])
    assert compact.masks is None and compact.mask_rles is not None
    assert list(compact.mask_rles) == dense.rles()
    torch.testing.assert_close(compact.mask_scores, dense.mask_scores)


_MEMORY = r"""
import resource, sys
from pathlib import Path
import numpy as np, torch
import grounded.core.detections as d
from grounded.adapters import SAM
from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.tasks.export import write_image_results

model, out, budget = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
d.DENSE_MASK_BYTES = budget
sam = SAM(model=model, device="cpu", cache_size=0)
sam.warm_up()
side = sam._processor.image_processor.mask_pad_size["height"]
gen = torch.Generator().manual_seed(0)




def logits(embedding, boxes=None, points=None, multimask=False):
    # a blob in each box (its window a part of the image), every 10th mask ragged noise over the whole image
    # (its window the image: the worst case for memory); boxes in pixels, the low-res grid over the padding
    n = len(boxes)
    scale = max(embedding.original_size) / side  # image pixels a low-res cell
    grid = (torch.arange(side, dtype=torch.float32) + 0.5) * scale
    centre, radius = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, 0, None, None]
    dy = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, 1, None, None]
    low = (1 - dx**2 - dy**2) * 8
    low[::10] = torch.randn(len(low[::10]), side, side, generator=gen)
    return low[:, None], torch.rand(n, 1, generator=gen)


sam._decode_raw = logits


def run(height, width, name):
    image = LoadedImage(np.full((height, width, 3), 120, np.uint8), name)
    corner = torch.rand(100, 2, generator=gen) * torch.tensor([width * 0.8, height * 0.8])
    boxes = torch.cat([corner, corner + torch.tensor([width * 0.2, height * 0.2])], 1)
    det = Detections(boxes, torch.rand(100, generator=gen), torch.arange(100) % 3, ("a", "b", "c"),
                     ("a", "b", "c") * 33 + ("a",), image.size)
    (seg,) = sam.segment([image], [det])
    write_image_results(out, name, image, seg)
    return seg


run(300, 400, "small")  # imports, the model and first calls
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seg = run(3000, 4000, "big")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("MEMORY", base // 1024, peak // 1024, seg.masks is None, len(seg.mask_rles), flush=True)
"""


def test_100_masks_of_a_12_megapixel_photo_are_never_all_held(tiny_sam, tmp_path):
    """100 masks of a 4000 x 3000 photo (a blob in each box, every 10th ragged over the whole image: its
    window the image), segmented and written (JSON with RLE, label PNG, overlay) in a fresh process, the
    dense-mask budget 64 MiB: the peak RSS grows by under 600 MB over a run on a 400 x 300 image (measured:
    about 210 MB). Holding the masks at once would take 1.2 GB as bool, 4.8 GB as the processor's float
    upsampling (100 x 48 MB)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(tiny_sam), str(tmp_path), str(64 * 2**20)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")][-1].split()
    base, peak = int(line[1]), int(line[2])
    assert line[3:] == ["True", "100"]  # held as RLE
    with Image.open(tmp_path / "big_labels.png") as labels:
        assert labels.size == (4000, 3000)
        assert len(np.unique(np.asarray(labels))) > 30  # the masks are there
    assert peak - base < 600, (base, peak)


@pytest.mark.parametrize("loose", [False, True])  # boxes around their masks / some masks outside every box
def test_overlay_paints_supervisions_colour_layer_a_class_at_a_time(loose):
    """``_top_masks`` (one disjoint mask a class) gives the same MaskAnnotator image as every mask painted
    in turn: overlaps, equal areas (argsort order), empty masks, a single class and many."""
    import supervision as sv

    from grounded.tasks.export import _top_masks

    rng = np.random.default_rng(0)
    n, height, width = 40, 60, 80
    masks = np.zeros((n, height, width), dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, height - 10), rng.integers(0, width - 10)
        y1, x1 = y0 + rng.integers(5, height - y0 + 1), x0 + rng.integers(5, width - x0 + 1)
        masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > 0.3
        boxes[i] = (x0, y0, x1, y1)
    masks[5] = masks[4]  # equal areas, the same pixels
    masks[7] = np.roll(masks[6], 7, axis=1)  # equal areas, other pixels
    masks[9] = False
    if loose:
        boxes[:10] = (30, 20, 40, 30)
    scene = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    annotator = sv.MaskAnnotator(color_lookup=sv.ColorLookup.CLASS)
    for class_id in (rng.integers(0, 4, n), np.zeros(n, dtype=np.int64), np.arange(n)):
        det = sv.Detections(xyxy=boxes, mask=masks, class_id=class_id)
        expected = annotator.annotate(scene.copy(), det)
        reduced = _top_masks(sv, det)
        assert len(reduced) == len(np.unique(class_id[masks.any(axis=(1, 2))]))
        assert np.array_equal(annotator.annotate(scene.copy(), reduced), expected)
        assert (expected != scene).any()


def _random_detections(n: int = 60, height: int = 50, width: int = 70, seed: int = 0) -> Detections:
    """Overlapping ragged masks, tied scores, an empty and a full mask (dense)."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, height, width, generator=gen) > 0.6
    corner = (torch.rand(n, 2, generator=gen) * torch.tensor([width * 0.8, height * 0.8])).long()
    for i in range(n):  # cut each to a random rectangle
        keep = torch.zeros(height, width, dtype=torch.bool)
        keep[corner[i, 1] : corner[i, 1] + 15, corner[i, 0] : corner[i, 0] + 20] = True
        masks[i] &= keep
    masks[3] = False
    masks[4] = True
    scores = (torch.rand(n, generator=gen) * 5).round() / 5  # many ties
    boxes = torch.tensor([[0.0, 0.0, width, height]]).expand(n, 4)
    det = Detections(
        boxes, scores, torch.arange(n) % 3, ("a", "b", "c"), ("a", "b", "c") * (n // 3), (height, width)
    )
    return det.with_masks(masks, torch.rand(n, generator=gen))


@pytest.mark.parametrize("long_rle", [0, 10**9])  # every box off the mask / every box off its RLE
def test_label_image_and_mask_boxes_equal_painting_and_pycocotools(monkeypatch, long_rle):
    from grounded.tasks import export
    from grounded.tasks.datasets import rle_box
    from grounded.tasks.export import image_json, label_image

    monkeypatch.setattr(export, "_LONG_RLE", long_rle)

    det = _random_detections()
    n = len(det)
    painted = np.zeros(det.image_size, dtype=np.uint16)  # the definition: paint by ascending score
    for i in np.lexsort((-np.arange(n), det.scores.numpy())):
        painted[det.masks[i].numpy()] = i + 1
    assert np.array_equal(label_image(det), painted)
    assert len(np.unique(painted)) > 20
    records = image_json(load_image(np.zeros((*det.image_size, 3), np.uint8), name="x"), det)["detections"]
    assert [r["bbox"] for r in records] == [rle_box(r) for r in det.rles()]
    assert records[3]["bbox"] == [0.0, 0.0, 0.0, 0.0] and records[4]["bbox"] == [0.0, 0.0, 70.0, 50.0]
