"""SAM 3 as a one-stage text → masks adapter, swappable for detector + segmenter in a pipeline."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grounded.adapters import SAM3
from grounded.cli import main
from grounded.core.images import load_image
from grounded.core.prompts import PromptError
from grounded.core.rle import decode_rle


def test_sam3_equals_the_documented_path_class_by_class(tiny_sam3, image_files):
    image = load_image(image_files["coffee"])
    model = SAM3(model=str(tiny_sam3), box_threshold=0.0, top_k=100, batch_size=3)
    (det,) = model.detect([image], "cup . spoon . table")
    assert det.masks.shape == (15, 400, 600) and det.masks.dtype == torch.bool  # 5 queries x 3 classes
    processor, sam3 = model._processor, model._model
    for class_id, name in enumerate(["cup", "spoon", "table"]):
        inputs = processor(images=image.pixels, text=name, return_tensors="pt")
        with torch.no_grad():
            out = sam3(**inputs)
        ref = processor.post_process_instance_segmentation(
            out, threshold=0.0, mask_threshold=0.5, target_sizes=[(400, 600)]
        )[0]
        mine = det[det.class_ids == class_id]
        order = ref["scores"].argsort(descending=True, stable=True)
        assert torch.allclose(mine.scores, ref["scores"][order], atol=1e-5)
        assert torch.equal(mine.masks, ref["masks"][order].bool())
        assert set(mine.phrases) == {name}


def test_sam3_top_k_and_threshold(tiny_sam3, image_files):
    image = load_image(image_files["coffee"])
    everything = SAM3(model=str(tiny_sam3), box_threshold=0.0, top_k=100).detect([image], "cup . spoon")[0]
    cut = float(everything.scores.median())
    strict = SAM3(model=str(tiny_sam3), box_threshold=cut, top_k=100).detect([image], "cup . spoon")[0]
    assert len(strict) == int((everything.scores > cut).sum())
    top3 = SAM3(model=str(tiny_sam3), box_threshold=0.0, top_k=3).detect([image], "cup . spoon")[0]
    assert torch.allclose(top3.scores, everything.scores[:3])


def test_sam3_refuses_over_long_classes(tiny_sam3, image_files):
    with pytest.raises(PromptError, match="SAM 3 reads at most 32"):
        SAM3(model=str(tiny_sam3)).detect([load_image(image_files["coffee"])], "x" * 40)


def test_sam3_alone_replaces_detector_and_segmenter(tiny_sam3, image_files, tmp_path):
    out = tmp_path / "out"
    argv = [
        "segment",
        str(image_files["chelsea"]),
        "--pipeline",
        "sam3",
        "--prompt",
        "cat . ear",
        "--out",
        str(out),
    ]
    argv += ["--detector", str(tiny_sam3), "--box-threshold", "0.0", "--top-k", "4", "-q"]
    assert main(argv) == 0
    records = json.loads((out / "chelsea.json").read_text())["detections"]
    labels = np.array(Image.open(out / "chelsea_labels.png"))
    assert len(records) == 4 and labels.shape == (300, 451)
    for i, rec in enumerate(records):
        assert rec["category"] in ("cat", "ear") and "mask_score" not in rec
        assert np.all(decode_rle(rec["segmentation"])[labels == i + 1])
