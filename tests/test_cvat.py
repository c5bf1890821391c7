"""The CVAT auto-annotation function and interactor, run through cvat-sdk's own driver and cvat-cli's loader
(no CVAT server: the task's dataset and upload are stand-ins; the driver's validation and remapping are real)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import pytest
from cvat_sdk.auto_annotation import driver
from cvat_sdk.masks import decode_mask
from PIL import Image

from grounded.core.images import load_image
from grounded.core.ontology import Ontology
from grounded.core.rle import decode_rle
from grounded.integrations.annotator import Annotator
from grounded.integrations.cvat import GroundedDetectionFunction
from grounded.integrations.cvat_interactor import GroundedInteractor
from grounded.tasks.datasets import mask_iou, polygons_to_mask

PROMPT = "cat: cat, kitten; person"


@pytest.fixture(scope="module")
def photo(astronaut) -> Image.Image:
    return Image.fromarray(astronaut).resize((160, 128))


@pytest.fixture(scope="module")
def annotator(tiny_gdino, tiny_sam) -> Annotator:
    return Annotator(
        detector=str(tiny_gdino),
        segmenter=str(tiny_sam),
        device="cpu",
        overrides={"detector": {"box_threshold": 0.0, "top_k": 6, "nms_threshold": None}},
    )


class _Task:
    """The parts of a CVAT client and task that ``annotate_task`` touches, recording the upload."""

    def __init__(self, labels: list[tuple[str, str]], images: list[Image.Image]) -> None:
        self.labels = [
            SimpleNamespace(name=n, id=100 + i, type=t, sublabels=[], attributes=[])
            for i, (n, t) in enumerate(labels)
        ]
        self.samples = [
            SimpleNamespace(
                frame_index=k, frame_name=f"frame_{k}.png", media=SimpleNamespace(load_image=lambda im=im: im)
            )
            for k, im in enumerate(images)
        ]
        self.uploaded: list = []
        api = SimpleNamespace(
            partial_update_annotations=lambda action, task_id, patched_labeled_data_request: (
                self.uploaded.append(patched_labeled_data_request)
            )
        )
        self.client = SimpleNamespace(logger=logging.getLogger("cvat-test"), tasks=SimpleNamespace(api=api))


def _annotate(monkeypatch, function, task: _Task, **kwargs) -> list:
    monkeypatch.setattr(driver, "TaskDataset", lambda client, task_id, load_annotations: task)
    driver.annotate_task(task.client, 7, function, **kwargs)
    (request,) = task.uploaded
    return list(request.shapes)


def test_masks_through_the_sdk_driver_decode_to_our_masks(monkeypatch, annotator, photo):
    function = GroundedDetectionFunction(annotator, Ontology.load(PROMPT))
    assert [(label.name, label.type) for label in function.spec.labels] == [
        ("cat", "mask"),
        ("person", "mask"),
    ]
    task = _Task([("person", "mask"), ("cat", "any"), ("dog", "mask")], [photo])
    shapes = _annotate(monkeypatch, function, task)
    det = annotator.detect(load_image(photo), Ontology.load(PROMPT))
    kept = [i for i in range(len(det)) if det.mask_array(i).any()]
    assert len(shapes) == len(kept) > 0
    ids = {"cat": 101, "person": 100}
    for shape, i in zip(shapes, kept, strict=True):
        assert shape.type.value == "mask" and shape.source == "auto" and shape.frame == 0
        assert shape.label_id == ids[det.classes[int(det.class_ids[i])]]
        decoded = decode_mask(shape.points, image_width=photo.width, image_height=photo.height)
        assert np.array_equal(decoded, decode_rle(det.rles()[i]))


def test_conf_threshold_and_polygons(monkeypatch, annotator, photo):
    function = GroundedDetectionFunction(annotator, Ontology.load(PROMPT), polygon_tolerance=0.0)
    full = annotator.detect(load_image(photo), Ontology.load(PROMPT))
    cut = float(full.scores.median())
    task = _Task([("person", "polygon"), ("cat", "polygon")], [photo])
    shapes = _annotate(monkeypatch, function, task, conf_threshold=cut, conv_mask_to_poly=True)
    det = annotator.detect(load_image(photo), Ontology.load(PROMPT), detector_params={"box_threshold": cut})
    kept = [i for i in range(len(det)) if float(det.scores[i]) >= cut and det.mask_array(i).any()]
    assert 0 < len(kept) < len(full)
    assert all(s.type.value == "polygon" for s in shapes)
    by_label: dict[int, list] = {}
    for s in shapes:
        assert len(s.points) >= 6 and len(s.points) % 2 == 0
        by_label.setdefault(s.label_id, []).append(s.points)
    union = {lid: polygons_to_mask(polys, photo.height, photo.width) for lid, polys in by_label.items()}
    for lid, mask in union.items():
        name = {100: "person", 101: "cat"}[lid]
        truth = np.zeros_like(mask)
        for i in kept:
            if det.classes[int(det.class_ids[i])] == name:
                truth |= det.mask_array(i)
        assert mask_iou(mask, truth) > 0.97


def test_rectangles(monkeypatch, annotator, photo):
    function = GroundedDetectionFunction(annotator, Ontology.load("person"), shape="rectangle")
    shapes = _annotate(monkeypatch, function, _Task([("person", "rectangle")], [photo]))
    det = annotator.detect(load_image(photo), Ontology.load("person"), masks=False)
    assert [s.type.value for s in shapes] == ["rectangle"] * len(det)
    assert np.allclose([s.points for s in shapes], det.boxes.tolist())


def test_mask_labels_refuse_a_rectangle_task(monkeypatch, annotator, photo):
    function = GroundedDetectionFunction(annotator, Ontology.load("person"))
    with pytest.raises(cvataa.BadFunctionError, match="type 'mask' in the function"):
        _annotate(monkeypatch, function, _Task([("person", "rectangle")], [photo]))


def test_cvat_cli_loads_the_module_with_its_parameters(tiny_gdino, tiny_sam):
    from cvat_cli._internal import common as cli
    from cvat_cli._internal.parsers import parse_function_parameter

    params = dict(
        parse_function_parameter(p)
        for p in (
            f"prompt=str:{PROMPT}",
            "shape=str:polygon",
            f"detector=str:{tiny_gdino}",
            f"segmenter=str:{tiny_sam}",
            "box_threshold=float:0.2",
        )
    )
    function = cli.FunctionLoader("grounded.integrations.cvat", None, params).load()
    assert [(label.name, label.type) for label in function.spec.labels] == [
        ("cat", "polygon"),
        ("person", "polygon"),
    ]
    assert function.box_threshold == 0.2
    interactor = cli.FunctionLoader(
        "grounded.integrations.cvat_interactor", None, {"segmenter": str(tiny_sam)}
    ).load()
    from cvat_cli._internal.agent import get_function_driver_class

    assert get_function_driver_class(interactor.spec).get_remote_function_fields(interactor.spec) == {
        "min_pos_points": 1,
        "min_neg_points": 0,
        "startswith_box_optional": True,
    }


def test_interactor_encodes_once_and_decodes_clicks(annotator, photo, monkeypatch):
    interactor = GroundedInteractor(annotator)
    segmenter = annotator.segmenter
    calls = []
    encode_batch = segmenter._encode_batch
    monkeypatch.setattr(
        segmenter, "_encode_batch", lambda batch: calls.append(len(batch)) or encode_batch(batch)
    )
    segmenter._cache.clear()
    prepared = interactor.preprocess_image(None, photo)
    prompts = SimpleNamespace(
        pos_points=[(80.0, 40.0)], neg_points=[(10.0, 120.0)], bounding_box=((20.0, 10.0), (140.0, 120.0))
    )
    (shape,) = interactor.detect(None, prepared, prompts)
    again = interactor.detect(
        None, prepared, SimpleNamespace(pos_points=[(60.0, 60.0)], neg_points=[], bounding_box=None)
    )
    assert calls == [1]
    assert shape.type == "mask" and 0.0 <= float(shape.attributes[0].value) <= 1.0
    mask = decode_mask(shape.points, image_width=photo.width, image_height=photo.height)
    want = annotator.click(
        load_image(photo), [(80.0, 40.0), (10.0, 120.0)], [1, 0], (20.0, 10.0, 140.0, 120.0)
    )
    assert calls == [1]  # the same image: its cached embedding
    assert np.array_equal(mask, want.mask.numpy())
    assert len(again) in (0, 1)


def test_polygon_tolerance_simplifies_hole_free_outlines_only():
    from grounded.integrations.cvat import mask_polygons

    yy, xx = np.mgrid[:80, :100]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 < 30**2
    (exact,), (simple,) = mask_polygons(disc), mask_polygons(disc, 1.5)
    assert len(simple) < len(exact) / 4
    assert np.array_equal(polygons_to_mask([exact], 80, 100), disc)
    filled = polygons_to_mask([simple], 80, 100)
    differ = np.argwhere(filled != disc)  # only pixels within tolerance + 1 px of the circle
    assert np.abs(np.hypot(differ[:, 0] - 40, differ[:, 1] - 50) - 30).max() <= 2.5
    ring = disc & ~((yy - 40) ** 2 + (xx - 50) ** 2 < 10**2)
    assert np.array_equal(polygons_to_mask(mask_polygons(ring, 1.5), 80, 100), ring)  # bridged: as traced
