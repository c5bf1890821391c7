"""SAM 2 behind the segmenter ports: box scaling, decoder batching, masks at the original size."""

import pytest
import torch

from grounded.adapters import SAM2
from grounded.core.detections import Detections
from grounded.core.images import load_image
from grounded.engine import load_pipeline
from grounded.models.sources import ModelSourceError


def _dets(boxes: torch.Tensor, size: tuple[int, int]) -> Detections:
    n = len(boxes)
    return Detections(boxes, torch.ones(n), torch.zeros(n, dtype=torch.int64), ("x",), ("x",) * n, size)


def test_sam2_masks_and_one_decoder_call_per_image(tiny_sam2, image_files):
    sam2 = SAM2(
        model=str(tiny_sam2), fast_kernels=False
    )  # transformers' decoder (the batched one: test_fast_decoder)
    sam2.warm_up()
    images = [load_image(image_files["coffee"]), load_image(image_files["chelsea"])]
    boxes = [
        torch.tensor([[10.0, 20.0, 200.0, 300.0], [300.0, 50.0, 590.0, 390.0]]),
        torch.tensor([[5.0, 5.0, 400.0, 290.0]]),
    ]
    calls = []
    original = sam2._model.forward
    sam2._model.forward = lambda *a, **k: calls.append(k["input_boxes"].shape) or original(*a, **k)
    out = sam2.segment(images, [_dets(b, im.size) for b, im in zip(boxes, images, strict=True)])
    assert calls == [torch.Size([1, 2, 4]), torch.Size([1, 1, 4])]
    assert out[0].masks.shape == (2, 400, 600) and out[1].masks.shape == (1, 300, 451)
    assert out[0].masks.dtype == torch.bool and out[0].mask_scores.shape == (2,)


def test_sam2_boxes_are_scaled_like_its_processor(tiny_sam2, image_files):
    sam2 = SAM2(model=str(tiny_sam2), fast_kernels=False)  # the boxes transformers' Sam2Model is given
    sam2.warm_up()
    image = load_image(image_files["coffee"])
    box = [[[10.0, 20.0, 200.0, 300.0]]]
    expected = sam2._processor(images=image.pixels, input_boxes=box, return_tensors="pt")["input_boxes"]
    sent = []
    original = sam2._model.forward
    sam2._model.forward = lambda *a, **k: sent.append(k["input_boxes"]) or original(*a, **k)
    (embedding,) = sam2.encode([image])
    sam2.decode(embedding, torch.tensor(box[0]))
    assert torch.allclose(sent[0].float(), expected.float(), atol=1e-4)
    assert [e.shape[1:] for e in embedding.intermediate] == [(4, 32, 32), (8, 16, 16), (32, 8, 8)]


def test_sam2_masks_equal_the_processor_path(tiny_sam2, image_files):
    """Our encode/decode equals Sam2Model called the documented way through Sam2Processor."""
    sam2 = SAM2(model=str(tiny_sam2))
    sam2.warm_up()
    image = load_image(image_files["coffee"])
    box = [[[10.0, 20.0, 200.0, 300.0]]]
    inputs = sam2._processor(images=image.pixels, input_boxes=box, return_tensors="pt")
    with torch.no_grad():
        ref = sam2._model(**inputs, multimask_output=False)
    ref_masks = sam2._processor.post_process_masks(ref.pred_masks, inputs["original_sizes"])[0][:, 0]
    ours = sam2.segment([image], [_dets(torch.tensor(box[0]), image.size)])[0]
    assert torch.equal(ours.masks, ref_masks)
    assert torch.allclose(ours.mask_scores, ref.iou_scores[0, :, 0], atol=1e-5)


def test_sam2_adapter_checks_its_model(tiny_sam, tiny_sam2):
    with pytest.raises(ModelSourceError, match="takes sam2"):
        SAM2(model=str(tiny_sam)).warm_up()
    with pytest.raises(ValueError, match="no HQ token"):
        SAM2(model=str(tiny_sam2), hq_token_only=True)


def test_grounded_sam2_pipeline_runs(tiny_gdino, tiny_sam2, image_files):
    pipe = load_pipeline(
        "grounded_sam2",
        {
            "detector": {"model": str(tiny_gdino), "box_threshold": 0.0, "top_k": 3},
            "segmenter": {"model": str(tiny_sam2)},
        },
    )
    (det,) = pipe.run(images=[load_image(image_files["astronaut"])], prompt="person . flag")["detections"]
    assert len(det) == 3 and det.masks.shape == (3, 512, 512)
