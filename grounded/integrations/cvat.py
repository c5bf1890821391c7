"""A CVAT auto-annotation detection function (``cvat_sdk.auto_annotation``): text prompt → masks, polygons or boxes.

``cvat-cli task auto-annotate TASK --function-module grounded.integrations.cvat -p prompt=str:"person, car"``
loads it through :func:`create`. The prompt is an ontology (``"person, dog"`` or ``"car: automobile, sedan;
person"``, as for ``grounded annotate``): its class names are the function's labels, which CVAT matches by
name to the task's labels. ``--conf-threshold`` becomes the detector's box threshold (and no detection below
it is returned); with ``--conv-mask-to-poly`` masks are returned as polygons.

Parameters (``-p name=type:value``): ``prompt`` (str, required), ``shape`` (``mask`` | ``polygon`` |
``rectangle``), ``pipeline``, ``detector``, ``segmenter``, ``device`` (str), ``box_threshold``,
``text_threshold``, ``polygon_tolerance`` (float, pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grounded.core.errors import UserError
from grounded.core.images import load_image
from grounded.core.ontology import Ontology
from grounded.integrations.annotator import Annotator
from grounded.integrations.shapes import outline_polygons

__all__ = ["SHAPES", "GroundedDetectionFunction", "create", "mask_polygons"]

#: what the function returns per detection (its labels' CVAT type)
SHAPES = ("mask", "polygon", "rectangle")


def mask_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """A mask's regions as CVAT polygons (flat ``[x0, y0, x1, y1, ...]`` pixels), one per part (holes joined
    to their part by zero-width bridges, as COCO polygons are), simplified within ``tolerance`` pixels."""
    return [[round(float(v), 2) for v in ring.reshape(-1)] for ring in outline_polygons(mask, tolerance)]


class GroundedDetectionFunction:
    """The detection function: ``spec`` (one label per ontology class) and ``detect(context, image)``."""

    def __init__(
        self,
        annotator: Annotator,
        ontology: Ontology,
        shape: str = "mask",
        box_threshold: float | None = None,
        text_threshold: float | None = None,
        polygon_tolerance: float = 0.0,
    ) -> None:
        if shape not in SHAPES:
            raise UserError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
        if polygon_tolerance < 0:
            raise UserError("polygon_tolerance must be at least 0 pixels")
        self.annotator = annotator
        self.ontology = ontology
        self.shape = shape
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.polygon_tolerance = polygon_tolerance
        self._spec: Any = None

    @property
    def spec(self) -> Any:
        """``DetectionFunctionSpec``: label ``i`` is ontology class ``i``, of type :attr:`shape`."""
        if self._spec is None:
            import cvat_sdk.auto_annotation as cvataa

            self._spec = cvataa.DetectionFunctionSpec(
                labels=[
                    cvataa.label_spec(name, i, type=self.shape) for i, name in enumerate(self.ontology.names)
                ]
            )
        return self._spec

    def detect(self, context: Any, image: Any) -> list[Any]:
        """The image's detections as CVAT shapes (``frame=0``, label ids from :attr:`spec`)."""
        import cvat_sdk.auto_annotation as cvataa
        from cvat_sdk.masks import encode_mask

        conf = context.conf_threshold
        params = {
            "box_threshold": conf if conf is not None else self.box_threshold,
            "text_threshold": self.text_threshold,
        }
        loaded = load_image(image, name=context.frame_name)
        det = self.annotator.detect(
            loaded, self.ontology, masks=self.shape != "rectangle", detector_params=params
        )
        polygons = self.shape == "polygon" or (self.shape == "mask" and context.conv_mask_to_poly)
        shapes: list[Any] = []
        boxes = det.boxes.detach().cpu().tolist()
        for i in range(len(det)):
            if conf is not None and float(det.scores[i]) < conf:
                continue
            label = int(det.class_ids[i])
            if self.shape == "rectangle":
                shapes.append(cvataa.rectangle(label, [float(v) for v in boxes[i]]))
                continue
            mask = det.mask_array(i)
            if not mask.any():
                continue
            if polygons:
                shapes += [cvataa.polygon(label, p) for p in mask_polygons(mask, self.polygon_tolerance)]
            else:
                shapes.append(cvataa.mask(label, encode_mask(mask)))
        return shapes


def create(
    prompt: str,
    shape: str = "mask",
    pipeline: str = "grounded_sam",
    detector: str | None = None,
    segmenter: str | None = None,
    device: str = "auto",
    box_threshold: float | None = None,
    text_threshold: float | None = None,
    polygon_tolerance: float = 0.0,
) -> GroundedDetectionFunction:
    """The function for ``cvat-cli ... --function-module grounded.integrations.cvat -p prompt=str:...``."""
    annotator = Annotator(pipeline, detector=detector, segmenter=segmenter, device=device)
    return GroundedDetectionFunction(
        annotator,
        Ontology.load(prompt),
        shape=shape,
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        polygon_tolerance=polygon_tolerance,
    )
