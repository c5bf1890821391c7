"""Mask operations and the crop / paste-back geometry of editing (pure functions, no model)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from grounded.core.detections import Detections
from grounded.core.inpaint_windows import crop_window, paste_back, plan_window, working_mask
from grounded.core.maskops import dilate, edit_mask, erode, feather, fill_holes, pick_instances, union


def _disk(size, center, radius):
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _detections(masks, scores, classes=("sofa", "lamp"), class_ids=None):
    masks = np.asarray(masks, dtype=bool)
    n, h, w = masks.shape
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(ys) else [0, 0, 1, 1])
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor(scores, dtype=torch.float32),
        class_ids=torch.tensor(class_ids or [0] * n, dtype=torch.int64),
        classes=tuple(classes),
        phrases=tuple(classes[i] for i in (class_ids or [0] * n)),
        image_size=(h, w),
        masks=torch.from_numpy(masks),
    )


def test_dilate_and_erode_are_euclidean_disks():
    point = np.zeros((41, 41), bool)
    point[20, 20] = True
    assert np.array_equal(dilate(point, 7), _disk((41, 41), (20, 20), 7))
    big = _disk((41, 41), (20, 20), 15)
    eroded = erode(big, 5)
    assert eroded[20, 20] and not eroded[20, 20 + 11] and eroded[20, 20 + 9]
    assert np.array_equal(dilate(point, 0), point) and np.array_equal(erode(big, 0), big)
    # the image border is not background: a mask touching the frame is not eroded from it
    edge = np.zeros((20, 20), bool)
    edge[:, :8] = True
    assert erode(edge, 3)[:, :5].all() and not erode(edge, 3)[:, 5:].any()


def test_fill_holes_and_union():
    ring = _disk((30, 30), (15, 15), 10) & ~_disk((30, 30), (15, 15), 4)
    assert np.array_equal(fill_holes(ring), _disk((30, 30), (15, 15), 10))
    a, b = np.zeros((2, 5, 5), bool)
    a[0, 0], b[4, 4] = True, True
    assert union(np.stack([a, b])).sum() == 2
    assert union(np.zeros((0, 5, 6), bool)).shape == (5, 6)


@pytest.mark.parametrize("strip_pixels", [1, 37, 400, 10**9])
def test_strips_give_the_whole_mask_distances(monkeypatch, strip_pixels):
    """Dilate, erode and feather in strips of rows (down to one row) equal the whole-mask transforms."""
    import grounded.core.maskops as maskops

    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((53, 71)) > 0.6)  # ragged blobs, some touching the border
    mask[:, :4] = True
    mask[10:14, 30:34] = False  # a hole
    monkeypatch.setattr(maskops, "STRIP_PIXELS", strip_pixels)
    outside, inside = ndimage.distance_transform_edt(~mask), ndimage.distance_transform_edt(mask)
    for r in (1, 2.5, 6):
        assert np.array_equal(dilate(mask, r), outside <= r)
        assert np.array_equal(erode(mask, r), inside > r)
        t = np.clip(1.0 - outside / (r + 1.0), 0.0, 1.0)
        expected = np.where(mask, 1.0, np.where(outside > r, 0.0, t * t * (3.0 - 2.0 * t)))
        np.testing.assert_allclose(feather(mask, r), expected, atol=1e-6, rtol=0)
    assert not erode(np.zeros((5, 5), bool), 2).any() and dilate(np.ones((5, 5), bool), 2).all()


def test_feather_is_one_inside_zero_beyond_its_width_and_smooth_between():
    mask = _disk((60, 60), (30, 30), 10)
    alpha = feather(mask, 6)
    assert alpha.dtype == np.float32
    assert (alpha[mask] == 1).all()
    distance = ndimage.distance_transform_edt(~mask)
    assert (alpha[distance > 6] == 0).all()
    band = (distance > 0) & (distance <= 6)
    assert (alpha[band] > 0).all() and (alpha[band] < 1).all()
    row = alpha[30, 40:48]  # walking away from the disk: never increasing
    assert (np.diff(row) <= 0).all()
    assert np.array_equal(feather(mask, 0), mask.astype(np.float32))


def test_pick_instances_by_index_score_and_size():
    areas = np.array([4, 25, 9])  # foreground pixels of each mask
    scores = np.array([0.9, 0.5, 0.7])
    assert pick_instances(areas, scores, "all")[0] == [0, 1, 2]
    assert pick_instances(areas, scores, "largest")[0] == [1]
    assert pick_instances(areas, scores, "best")[0] == [0]
    assert pick_instances(areas, scores, "all", indices=[2, 0])[0] == [0, 2]
    assert pick_instances(areas, scores, "largest", min_score=0.6)[0] == [2]
    chosen, reason = pick_instances(areas, scores, indices=[5])
    assert chosen == [] and "index 5 is out of range (3 detections)" in reason
    assert pick_instances(areas, scores, min_score=0.95) == ([], "no detection scores at least 0.95")
    assert pick_instances(areas[:0], scores[:0]) == ([], "no detections")


def test_edit_mask_matches_whole_image_operations():
    size = (120, 160)
    sofa = _disk(size, (60, 50), 20) & ~_disk(size, (60, 50), 5)  # a hole to fill
    lamp = _disk(size, (30, 120), 8)
    det = _detections([sofa, lamp], [0.8, 0.6], class_ids=[0, 1])
    em = edit_mask(det, fill=True, erode_pixels=2, dilate_pixels=6, feather_pixels=5)
    expected = dilate(erode(fill_holes(sofa | lamp), 2), 6)
    assert np.array_equal(em.region, expected)
    assert np.array_equal(em.alpha, feather(expected, 5))
    assert em.selected == (0, 1) and em.labels == ("sofa", "lamp") and not em.empty
    # nothing beyond dilate + feather of the raw masks may change
    assert not em.support[~dilate(sofa | lamp, 6 + 5)].any()
    assert edit_mask(det, indices=[7]).empty
    gone = edit_mask(det, pick="best", erode_pixels=40)
    assert gone.empty and "removed the whole mask" in gone.reason
    assert edit_mask(Detections.empty((4, 4))).reason == "no detections"
    boxes_only = Detections(**{**det.__dict__, "masks": None, "mask_scores": None})
    with pytest.raises(ValueError, match="need masks"):
        edit_mask(boxes_only)


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((333, 517), (100, 180, 200, 330)),
        ((60, 900), (10, 50, 100, 800)),
        ((900, 60), (100, 800, 10, 50)),
        ((333, 517), (0, 333, 0, 517)),  # the whole image
        ((333, 517), (330, 333, 514, 517)),  # a 3x3 corner
    ],
)
@pytest.mark.parametrize("resolution", [64, 512, 1024])
def test_window_contains_the_mask_keeps_aspect_and_uses_multiples_of_8(size, box, resolution):
    support = np.zeros(size, bool)
    y0, y1, x0, x1 = box
    support[y0:y1, x0:x1] = True
    w = plan_window(support, resolution, multiple=8, padding=16)
    assert w is not None
    assert w.height % 8 == 0 and w.width % 8 == 0
    assert max(w.height, w.width) <= 2 * resolution and min(w.height, w.width) >= resolution // 4
    assert w.y0 <= max(0, y0 - 16) and w.y1 >= min(size[0], y1 + 16)
    assert w.x0 <= max(0, x0 - 16) and w.x1 >= min(size[1], x1 + 16)
    wh, ww = w.size
    assert abs(ww / wh - w.width / w.height) <= max(1 / wh, 1 / ww) * (ww / wh) + 1e-9  # aspect kept to 1 px
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert crop_window(image, w).size == (w.width, w.height)
    work_mask = np.asarray(working_mask(support, w))
    assert work_mask.shape == (w.height, w.width) and work_mask.any()


def test_working_mask_covers_every_touched_pixel_in_whole_latent_cells():
    support = np.zeros((100, 100), bool)
    support[50, 50] = True  # a single pixel
    w = plan_window(support, 64, padding=20)
    mask = np.asarray(working_mask(support, w, cell=8)) > 0
    assert mask.sum() >= 64 and mask.sum() % 64 == 0  # whole 8x8 cells
    assert (mask.reshape(w.height // 8, 8, w.width // 8, 8).all(axis=(1, 3)) == mask[::8, ::8]).all()


def test_paste_back_changes_only_pixels_with_alpha():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (333, 517, 3), dtype=np.uint8)
    region = _disk((333, 517), (150, 200), 40)
    alpha = feather(region, 10)
    w = plan_window(alpha > 0, 64)
    generated = rng.integers(0, 256, (w.height, w.width, 3), dtype=np.uint8)
    out = paste_back(image, generated, w, alpha)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[alpha == 0], image[alpha == 0])
    assert (out[region] != image[region]).any(axis=1).mean() > 0.9
    # alpha 1 takes the generated pixels; in the band the result lies between generated and original
    flat = np.full((w.height, w.width, 3), 7, np.uint8)
    out = paste_back(image, flat, w, alpha)
    assert (out[region] == 7).all()
    band = (alpha > 0) & (alpha < 1)
    lo = np.minimum(image[band], 7).astype(int)
    hi = np.maximum(image[band], 7).astype(int)
    assert ((out[band] >= lo) & (out[band] <= hi)).all()
