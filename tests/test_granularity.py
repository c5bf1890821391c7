"""Multi-granularity: level ordering, dedup and nesting on hand-made masks; SAM levels; the CLI drawing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grounded.adapters import SAM, SAM2
from grounded.cli import main
from grounded.core.detections import Detections
from grounded.core.images import load_image
from grounded.core.levels import order_levels, select_levels
from grounded.core.rle import decode_rle


def _rect(y0: int, y1: int, x0: int, x1: int, size=(40, 40)) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_levels_are_ordered_finest_first_and_nested():
    whole, part, sub = _rect(0, 40, 0, 40), _rect(10, 30, 10, 30), _rect(15, 20, 15, 20)
    levels = order_levels(torch.stack([whole, sub, part]), torch.tensor([0.7, 0.9, 0.8]))
    assert levels.areas == (25, 400, 1600) and levels.levels == (1, 2, 3)
    assert torch.allclose(levels.scores, torch.tensor([0.9, 0.8, 0.7]))
    assert levels.containment == (1.0, 1.0) and levels.violations == ()


def test_near_duplicates_merge_keeping_the_better_score():
    a, b = _rect(10, 30, 10, 30), _rect(10, 30, 10, 31)  # IoU 400/420 = 0.952
    levels = order_levels(torch.stack([a, b, _rect(0, 40, 0, 40)]), torch.tensor([0.5, 0.8, 0.6]))
    assert len(levels) == 2 and levels.areas == (420, 1600)
    assert float(levels.scores[0]) == pytest.approx(0.8)
    below = order_levels(
        torch.stack([_rect(10, 30, 10, 30), _rect(10, 30, 10, 33)]), torch.tensor([0.5, 0.6])
    )
    assert len(below) == 2  # IoU 400/460 = 0.87 < 0.9: two levels


def test_nesting_violations_are_reported_and_empty_masks_dropped():
    left, right_big = _rect(0, 10, 0, 10), _rect(0, 40, 5, 40)  # left is 50% inside the bigger one
    levels = order_levels(
        torch.stack([left, right_big, torch.zeros(40, 40, dtype=torch.bool)]), torch.ones(3)
    )
    assert len(levels) == 2 and levels.containment == (0.5,) and levels.violations == (1,)


def test_selecting_levels():
    levels = order_levels(
        torch.stack([_rect(0, 40, 0, 40), _rect(10, 30, 10, 30), _rect(15, 20, 15, 20)]), torch.ones(3)
    )
    assert select_levels(levels, "part").areas == (25,)
    assert select_levels(levels, "whole").areas == (1600,)
    assert select_levels(levels, [1, 3]).levels == (1, 3)
    with pytest.raises(ValueError, match="levels 1..3"):
        select_levels(levels, [4])


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_sam_family_levels_for_points_and_boxes(request, family, image_files):
    folder = request.getfixturevalue("tiny_sam" if family == "sam" else "tiny_sam2")
    segmenter = (SAM if family == "sam" else SAM2)(model=str(folder))
    image = load_image(image_files["coffee"])
    by_point = segmenter.predict_levels(image, points=torch.tensor([[300.0, 200.0], [100.0, 100.0]]))
    assert len(by_point) == 2
    for levels in by_point:
        assert 1 <= len(levels) <= 3 and list(levels.areas) == sorted(levels.areas)
        assert levels.masks.shape[1:] == (400, 600)
        # each level is one of the decoder's candidate masks, the same as decoding them directly
        (emb,) = segmenter.encode([image])
    low, _ = segmenter._decode_raw(emb, points=torch.tensor([[300.0, 200.0]]), multimask=True)
    candidates = segmenter._upsample(low[0][:, None], emb)
    assert all(any(torch.equal(m, c) for c in candidates) for m in by_point[0].masks)
    box = torch.tensor([[50.0, 40.0, 380.0, 300.0]])
    every = segmenter.predict_levels(image, boxes=box)[0]
    whole = segmenter.predict_levels(image, boxes=box, levels="whole")[0]
    part = segmenter.predict_levels(image, boxes=box, levels="part")[0]
    assert torch.equal(whole.masks[0], every.masks[-1]) and torch.equal(part.masks[0], every.masks[0])
    # predict() is the interface shared with Semantic-SAM
    same = segmenter.predict(image, boxes=box, levels=[1, len(every)])[0]
    assert same.levels == (1, len(every)) and torch.equal(same.masks[-1], every.masks[-1])


def test_segmenter_granularity_part_and_whole(tiny_sam, image_files):
    image = load_image(image_files["coffee"])
    box = torch.tensor([[50.0, 40.0, 380.0, 300.0]])
    det = Detections(box, torch.ones(1), torch.zeros(1, dtype=torch.int64), ("x",), ("x",), image.size)
    areas = {
        g: int(SAM(model=str(tiny_sam), granularity=g).segment([image], [det])[0].masks.sum())
        for g in ("part", "whole")
    }
    levels = SAM(model=str(tiny_sam)).predict_levels(image, boxes=box)[0]
    assert areas["part"] == levels.areas[0] and areas["whole"] == levels.areas[-1]


def test_granularity_cli_draws_every_level_with_a_legend(tiny_sam, image_files, tmp_path):
    out = tmp_path / "levels"
    argv = [
        "granularity",
        str(image_files["coffee"]),
        "--point",
        "300,200",
        "--segmenter",
        str(tiny_sam),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    doc = json.loads((out / "coffee_levels.json").read_text())
    (prompt,) = doc["prompts"]
    assert prompt["point"] == [300.0, 200.0]
    levels = prompt["levels"]
    assert [lv["level"] for lv in levels] == list(range(1, len(levels) + 1))
    assert [lv["area"] for lv in levels] == sorted(lv["area"] for lv in levels)
    for lv in levels:
        assert int(decode_rle(lv["segmentation"]).sum()) == lv["area"]
    drawing = np.array(Image.open(out / "coffee_levels.png"))
    original = np.array(Image.open(image_files["coffee"]).convert("RGB"))
    assert drawing.shape == original.shape
    finest = decode_rle(levels[0]["segmentation"])
    assert not np.array_equal(drawing[finest], original[finest])  # the finest level is coloured
    assert (
        main(
            [
                "granularity",
                str(image_files["coffee"]),
                "--point",
                "9999,1",
                "--segmenter",
                str(tiny_sam),
                "--out",
                str(out),
            ]
        )
        == 2
    )
