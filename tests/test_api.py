"""The Python API returns one Detections per image, without writing files."""

import torch

import grounded
from grounded.api import build_pipeline


def test_segment_returns_detections_with_masks(tiny_gdino, tiny_sam, image_files, astronaut, tmp_path):
    results = grounded.segment(
        [image_files["coffee"], astronaut],
        "cup . person",
        detector=str(tiny_gdino),
        segmenter=str(tiny_sam),
        overrides={"detector": {"box_threshold": 0.0, "top_k": 4}},
    )
    assert [r.image_size for r in results] == [(400, 600), (512, 512)]
    for r in results:
        assert isinstance(r, grounded.Detections) and len(r) == 4
        assert r.masks is not None and r.masks.shape == (4, *r.image_size) and r.mask_scores.shape == (4,)
        assert r.classes == ("cup", "person")
    assert not list(tmp_path.iterdir())


def test_a_built_pipeline_is_reused_and_equals_a_fresh_one(tiny_gdino, tiny_sam, image_files):
    pipe = build_pipeline(
        detector=str(tiny_gdino), segmenter=str(tiny_sam), overrides={"detector": {"box_threshold": 0.0}}
    )
    first = grounded.segment(image_files["chelsea"], "cat", pipeline=pipe)[0]
    model = pipe.adapter("detector")._model
    second = grounded.segment(image_files["chelsea"], ["cat"], pipeline=pipe)[0]
    assert pipe.adapter("detector")._model is model  # not reloaded
    assert torch.equal(first.masks, second.masks) and torch.equal(first.boxes, second.boxes)
