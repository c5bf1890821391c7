"""Detections container, box conversions and RLE."""

import numpy as np
import pytest
import supervision as sv
import torch

from grounded.core.boxes import clip_xyxy, cxcywh_to_xyxy, normalized_to_pixels, xywh_to_xyxy, xyxy_to_xywh
from grounded.core.detections import Detections
from grounded.core.rle import decode_rle, encode_masks, rle_area


def _dets(n: int = 3, with_masks: bool = True) -> Detections:
    h, w = 20, 30
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    for i in range(n):
        masks[i, i : i + 5, 2 * i : 2 * i + 7] = True
    return Detections(
        boxes=torch.tensor([[2.0 * i, i, 2.0 * i + 7, i + 5] for i in range(n)]),
        scores=torch.tensor([0.5, 0.9, 0.7][:n]),
        class_ids=torch.tensor([0, 1, 0][:n]),
        classes=("dog", "red car"),
        phrases=("dog", "car", "dog")[:n],
        image_size=(h, w),
        masks=masks if with_masks else None,
        mask_scores=torch.tensor([0.8, 0.6, 0.95][:n]) if with_masks else None,
    )


def test_box_conversions_round_trip():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]])
    xywh = xyxy_to_xywh(xyxy)
    assert xywh.tolist() == [[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 1.0, 1.0]]
    assert torch.equal(xywh_to_xyxy(xywh), xyxy)
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert torch.allclose(cxcywh_to_xyxy(cxcywh), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    px = normalized_to_pixels(torch.tensor([[0.1, 0.2, 0.5, 1.0]]), (100, 200))
    assert px.tolist() == [[20.0, 20.0, 100.0, 100.0]]
    assert clip_xyxy(torch.tensor([[-5.0, -1.0, 250.0, 90.0]]), (80, 200)).tolist() == [
        [0.0, 0.0, 200.0, 80.0]
    ]


def test_rle_encode_decode_is_lossless():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 37, 53)) > 0.6
    masks[3] = False
    rles = encode_masks(torch.from_numpy(masks))
    assert all(isinstance(r["counts"], str) and r["size"] == [37, 53] for r in rles)
    for mask, rle in zip(masks, rles, strict=True):
        assert np.array_equal(decode_rle(rle), mask)
        assert rle_area(rle) == int(mask.sum())
    assert encode_masks(np.zeros((0, 5, 5), bool)) == []


def test_uncompressed_rle_decodes():
    rle = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major: 1 off, 2 on, 3 off
    assert decode_rle(rle).T.flatten().tolist() == [False, True, True, False, False, False]


def test_validation_rejects_inconsistent_arrays():
    d = _dets()
    with pytest.raises(ValueError, match="scores"):
        Detections(d.boxes, d.scores[:2], d.class_ids, d.classes, d.phrases, d.image_size)
    with pytest.raises(ValueError, match="class_ids must index"):
        Detections(d.boxes, d.scores, torch.tensor([0, 1, 2]), d.classes, d.phrases, d.image_size)
    with pytest.raises(ValueError, match="masks"):
        Detections(d.boxes, d.scores, d.class_ids, d.classes, d.phrases, (21, 30), masks=d.masks)


def test_indexing_by_int_slice_bool_and_tensor():
    d = _dets()
    assert d[1].phrases == ("car",) and d[1].class_names == ["red car"]
    assert d[-1].scores.tolist() == pytest.approx([0.7])
    assert d[0:2].phrases == ("dog", "car")
    keep = d.scores > 0.6
    assert d[keep].phrases == ("car", "dog")
    assert torch.equal(d[keep].masks, d.masks[1:])
    picked = d[torch.tensor([2, 0])]
    assert picked.mask_scores.tolist() == pytest.approx([0.95, 0.8])
    assert len(d[[]]) == 0
    assert d.sorted_by_score().scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    with pytest.raises(IndexError):
        d[3]


def test_cat_and_empty():
    d = _dets()
    both = Detections.cat([d[0:1], d[1:]])
    assert torch.equal(both.boxes, d.boxes) and both.phrases == d.phrases and torch.equal(both.masks, d.masks)
    e = Detections.empty((20, 30), d.classes)
    assert len(e) == 0 and e.boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="masks in all parts"):
        Detections.cat([d, Detections.empty((20, 30), d.classes)])


def test_supervision_round_trip_keeps_everything():
    d = _dets()
    s = d.to_supervision()
    assert isinstance(s, sv.Detections)
    assert s.xyxy.shape == (3, 4) and s.mask.shape == (3, 20, 30)
    assert list(s.data["class_name"]) == ["dog", "red car", "dog"]
    back = Detections.from_supervision(s, image_size=(20, 30), classes=d.classes)
    assert torch.allclose(back.boxes, d.boxes) and torch.allclose(back.scores, d.scores)
    assert torch.equal(back.class_ids, d.class_ids) and back.phrases == d.phrases
    assert torch.equal(back.masks, d.masks) and torch.allclose(back.mask_scores, d.mask_scores)


def test_from_supervision_builds_a_vocabulary_from_names():
    s = sv.Detections(
        xyxy=np.array([[0, 0, 5, 5], [1, 1, 4, 4]], dtype=np.float32),
        confidence=np.array([0.3, 0.4]),
        class_id=np.array([7, 3]),
        data={"class_name": np.array(["zebra", "ant"])},
    )
    d = Detections.from_supervision(s, image_size=(10, 10))
    assert d.classes == ("ant", "zebra") and d.class_names == ["zebra", "ant"]
    with pytest.raises(ValueError, match="not in classes"):
        Detections.from_supervision(s, image_size=(10, 10), classes=("ant",))


def test_coco_records_use_xywh_and_decodable_rle():
    d = _dets()
    records = d.to_coco_records(image_id=7)
    assert records[1]["bbox"] == [2.0, 1.0, 7.0, 5.0]
    assert (
        records[1]["category"] == "red car" and records[1]["phrase"] == "car" and records[1]["image_id"] == 7
    )
    for rec, mask in zip(records, d.masks, strict=True):
        assert np.array_equal(decode_rle(rec["segmentation"]), mask.numpy())
        assert rec["area"] == int(mask.sum())
    assert "segmentation" not in _dets(with_masks=False).to_coco_records()[0]


def test_reverse_slices_and_bool_scalars():
    d = _dets()
    assert d[::-1].phrases == ("dog", "car", "dog") and d[::-1].scores.tolist() == pytest.approx(
        [0.7, 0.9, 0.5]
    )
    assert d[::2].scores.tolist() == pytest.approx([0.5, 0.7])
    with pytest.raises(IndexError, match="boolean array"):
        d[True]


def test_supervision_round_trip_keeps_the_class_vocabulary():
    d = _dets()[1:2]  # only "red car" detected; "dog" must survive the round trip
    back = Detections.from_supervision(d.to_supervision(), image_size=(20, 30))
    assert back.classes == ("dog", "red car") and back.class_ids.tolist() == [1]
