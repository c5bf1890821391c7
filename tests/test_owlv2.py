"""OWLv2 behind the detector ports: per-class queries, the processor's box mapping, batching."""

import json

import pytest
import torch

from grounded.adapters import OWLv2
from grounded.cli import main
from grounded.core.images import load_image
from grounded.core.prompts import PromptError

PROMPT = "cup . spoon . table"


def test_owlv2_equals_the_documented_processor_path(tiny_owlv2, image_files):
    detector = OWLv2(model=str(tiny_owlv2), box_threshold=0.0, nms_threshold=None, top_k=1000)
    image = load_image(image_files["coffee"])
    (det,) = detector.detect([image], PROMPT)
    inputs = detector._processor(text=[["cup", "spoon", "table"]], images=[image.pixels], return_tensors="pt")
    with torch.no_grad():
        outputs = detector._model(**inputs)
    ref = detector._processor.post_process_grounded_object_detection(
        outputs, threshold=0.0, target_sizes=[(400, 600)]
    )[0]
    order = ref["scores"].argsort(descending=True, stable=True)
    assert torch.allclose(det.scores, ref["scores"][order], atol=1e-6)
    assert torch.equal(det.class_ids, ref["labels"][order])
    expected_boxes = ref["boxes"][order].clone()
    expected_boxes[:, 0::2] = expected_boxes[:, 0::2].clamp(0, 600)
    expected_boxes[:, 1::2] = expected_boxes[:, 1::2].clamp(0, 400)
    assert torch.allclose(det.boxes, expected_boxes, atol=1e-4)
    assert det.phrases == tuple(det.class_names)


def test_owlv2_batched_equals_unbatched_and_top_k(tiny_owlv2, image_files):
    images = [load_image(image_files[n]) for n in ("coffee", "astronaut", "chelsea")]
    batched = OWLv2(model=str(tiny_owlv2), box_threshold=0.0, top_k=5, batch_size=3).detect(images, PROMPT)
    for image, b in zip(images, batched, strict=True):
        (single,) = OWLv2(model=str(tiny_owlv2), box_threshold=0.0, top_k=5, batch_size=1).detect(
            [image], PROMPT
        )
        assert len(b) == 5 and b.image_size == image.size
        assert torch.allclose(b.scores, single.scores, atol=1e-5) and torch.equal(
            b.class_ids, single.class_ids
        )


def test_owlv2_refuses_queries_longer_than_its_text_encoder(tiny_owlv2, image_files):
    with pytest.raises(PromptError, match="OWLv2 reads at most 16"):
        OWLv2(model=str(tiny_owlv2)).detect(
            [load_image(image_files["coffee"])], "a very long class name indeed"
        )


def test_owlv2_sam2_pipeline_from_the_cli(tiny_owlv2, tiny_sam2, image_files, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "owlv2_sam2", str(image_files["coffee"]), "--prompt", PROMPT, "--out", str(out), "-q"]
    argv += ["--set", f"detector.model={tiny_owlv2}", "--set", f"segmenter.model={tiny_sam2}"]
    argv += ["--set", "detector.box_threshold=0.0", "--set", "detector.top_k=3"]
    assert main(argv) == 0
    records = json.loads((out / "coffee.json").read_text())["detections"]
    assert len(records) == 3 and all(r["category"] == r["phrase"] for r in records)
