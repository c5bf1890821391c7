"""Segment everything at one level: click grid, level choice (fixed prompts or per-click rank), filters, NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from grounded.core.images import load_image
from grounded.core.levels import Levels, order_levels
from grounded.tasks.everything import masks_to_boxes, point_grid, segment_everything


def test_point_grid_centres_cells():
    grid = point_grid(2, (40, 100))
    assert grid.tolist() == [[25.0, 10.0], [75.0, 10.0], [25.0, 30.0], [75.0, 30.0]]
    assert point_grid(32, (10, 10)).shape == (1024, 2)
    with pytest.raises(ValueError):
        point_grid(0, (4, 4))


def test_masks_to_boxes():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:7] = True
    assert masks_to_boxes(masks).tolist() == [[2.0, 1.0, 7.0, 3.0], [0.0, 0.0, 0.0, 0.0]]


class _Stub:
    """A segmenter whose masks are known: a click at x gets, per level, a square of side 4*level around it."""

    def __init__(self, fixed: int | None, iou: float = 0.9) -> None:
        if fixed:
            self.fixed_levels = fixed
        self.iou = iou
        self.calls: list[tuple[int, object]] = []

    def predict_levels(self, image, points=None, boxes=None, levels="all"):
        self.calls.append((len(points), levels))
        h, w = image.size
        out = []
        for x, y in points.tolist():
            masks = torch.zeros(3, h, w, dtype=torch.bool)
            for k in range(3):
                r = 2 * (k + 1)
                masks[k, max(0, int(y) - r) : int(y) + r, max(0, int(x) - r) : int(x) + r] = True
            if x > w / 2:  # right half: only 2 distinct levels
                masks[2] = masks[1]
            ordered = order_levels(masks, torch.tensor([self.iou, self.iou - 0.1, self.iou - 0.2]))
            if levels != "all":
                keep = [ordered.levels.index(k) for k in levels if k in ordered.levels]
                ordered = Levels(
                    ordered.masks[keep],
                    ordered.scores[keep],
                    tuple(ordered.areas[i] for i in keep),
                    tuple(ordered.levels[i] for i in keep),
                    (),
                    (),
                )
            out.append(ordered)
        return out


def test_rank_levels_skip_clicks_without_that_level():
    image = load_image(np.zeros((40, 80, 3), np.uint8), name="blank")
    stub = _Stub(fixed=None)
    det = segment_everything(stub, image, level=3, points_per_side=2, points_per_batch=3, pred_iou_thresh=0.0)
    assert [c[0] for c in stub.calls] == [3, 1] and all(c[1] == "all" for c in stub.calls)
    assert len(det) == 2  # the two left clicks have a 3rd level, the right ones do not
    assert det.classes == ("level 3",) and det.masks is not None
    assert all(int(m.sum()) == 144 for m in det.masks)  # 12 x 12 squares
    assert torch.allclose(det.scores, torch.tensor([0.7, 0.7]))


def test_fixed_levels_filters_and_nms():
    image = load_image(np.zeros((40, 80, 3), np.uint8), name="blank")
    stub = _Stub(fixed=6)
    det = segment_everything(stub, image, level=1, points_per_side=4, pred_iou_thresh=0.0)
    assert stub.calls == [(16, [1])]
    assert len(det) == 16  # 4x4 small squares, none overlapping
    big = segment_everything(
        _Stub(fixed=6), image, level=3, points_per_side=4, pred_iou_thresh=0.0, box_nms_thresh=0.3
    )
    assert len(big) < 16  # neighbouring 12-pixel squares overlap: NMS removed some
    boxes = big.boxes
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            lo, hi = torch.maximum(boxes[i, :2], boxes[j, :2]), torch.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = (hi - lo).clamp(min=0).prod()
            union = (boxes[i, 2:] - boxes[i, :2]).prod() + (boxes[j, 2:] - boxes[j, :2]).prod() - inter
            assert inter / union <= 0.3 + 1e-6
    assert len(segment_everything(_Stub(fixed=6, iou=0.5), image, level=1, points_per_side=4)) == 0  # < 0.88
    assert (
        len(
            segment_everything(
                _Stub(fixed=6), image, level=1, points_per_side=4, min_area=16, pred_iou_thresh=0
            )
        )
        == 0
    )
    with pytest.raises(ValueError, match="levels 1..6"):
        segment_everything(_Stub(fixed=6), image, level=7)
    with pytest.raises(ValueError, match="at least 1"):
        segment_everything(_Stub(fixed=6), image, level=0)


def test_with_tiny_sam(tiny_sam):
    from grounded.adapters import SAM

    image = load_image(data.coffee()[::4, ::4].copy(), name="coffee")
    sam = SAM(model=str(tiny_sam), device="cpu")
    det = segment_everything(sam, image, level=1, points_per_side=3, pred_iou_thresh=-1.0, box_nms_thresh=1.0)
    grid = point_grid(3, image.size)
    expected = [r.masks[0] for r in sam.predict_levels(image, points=grid)]
    assert det.masks is not None and len(det) == len(expected) == 9
    for mask in det.masks:  # every kept mask is the finest level of one of the clicks
        assert any(torch.equal(mask, e) for e in expected)


def test_with_tiny_semantic_sam(tmp_path):
    from grounded.adapters.semantic_sam import SemanticSAM
    from grounded.models.semantic_sam.testing import make_semantic_sam

    folder = make_semantic_sam(tmp_path / "semsam", "tiny", seed=0)
    image = load_image(data.coffee()[::4, ::4].copy(), name="coffee")
    seg = SemanticSAM(model=str(folder), image_size=64, device="cpu")
    det = segment_everything(
        seg, image, level=4, points_per_side=3, pred_iou_thresh=-10.0, box_nms_thresh=1.0
    )
    per_click = seg.predict_levels(image, points=point_grid(3, image.size), levels=[4])
    expected = [r.masks[0] for r in per_click if len(r)]
    assert det.masks is not None and len(det) == len(expected) >= 1
    for mask in det.masks:
        assert any(torch.equal(mask, e) for e in expected)
    assert torch.equal(det.boxes, masks_to_boxes(det.masks))
