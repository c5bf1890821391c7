"""Masks computed in windows and RLE read off windows give the processor's masks and the same files (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
