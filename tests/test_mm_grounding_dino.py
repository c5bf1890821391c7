"""MM-Grounding-DINO (and LLMDet, which loads as it) through the Grounding DINO adapter and ports."""

import json

import pytest
import torch

from grounded.adapters import GroundingDINO, MMGroundingDINO
from grounded.cli import main
from grounded.core.images import load_image
from grounded.core.prompts import Prompt
from grounded.models.sources import ModelSourceError


def test_mm_grounding_dino_detects_with_real_classes(tiny_mm_gdino, astronaut):
    detector = MMGroundingDINO(model=str(tiny_mm_gdino), box_threshold=0.0, top_k=10, nms_threshold=None)
    (det,) = detector.detect([load_image(astronaut)], "person . red car . flag")
    assert type(detector._model).__name__ == "MMGroundingDinoForObjectDetection"
    assert len(det) == 10 and det.classes == ("person", "red car", "flag")
    text = detector.encode_prompt(Prompt.of("person . red car . flag"))[0]
    pixels = detector._processor.image_processor([astronaut], return_tensors="pt")
    probs, _ = detector._forward(pixels, text)
    best, best_class = torch.stack([probs[0][:, text.pos_map[c]].amax(-1) for c in range(3)], -1).max(-1)
    order = best.argsort(descending=True, stable=True)[:10]
    assert torch.allclose(det.scores, best[order], atol=1e-6) and torch.equal(
        det.class_ids, best_class[order]
    )


def test_detector_adapters_check_the_model_type(tiny_sam, tiny_mm_gdino):
    with pytest.raises(ModelSourceError, match="takes grounding-dino or mm-grounding-dino"):
        GroundingDINO(model=str(tiny_sam)).warm_up()
    GroundingDINO(model=str(tiny_mm_gdino)).warm_up()  # the same adapter family loads both


def test_mm_grounded_hq_sam_pipeline_from_the_cli(tiny_mm_gdino, tiny_sam_hq, image_files, tmp_path):
    out = tmp_path / "out"
    argv = [
        "run",
        "mm_grounded_hq_sam",
        str(image_files["coffee"]),
        "--prompt",
        "cup . spoon",
        "--out",
        str(out),
        "-q",
    ]
    argv += ["--set", f"detector.model={tiny_mm_gdino}", "--set", f"segmenter.model={tiny_sam_hq}"]
    argv += ["--set", "detector.box_threshold=0.0", "--set", "detector.top_k=4"]
    assert main(argv) == 0
    records = json.loads((out / "coffee.json").read_text())["detections"]
    assert len(records) == 4 and {r["category"] for r in records} <= {"cup", "spoon"}
