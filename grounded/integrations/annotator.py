"""The models behind the labeling-tool integrations: text prompt → classed detections, click / box → mask."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grounded.core.detections import Detections
from grounded.core.errors import UserError
from grounded.core.images import LoadedImage
from grounded.core.ontology import Ontology
from grounded.engine.adapter import temporary_params

__all__ = ["Annotator", "ClickMask"]


@dataclass(frozen=True)
class ClickMask:
    """One interactive answer: the mask ``(H, W)`` bool and its predicted IoU."""

    mask: torch.Tensor
    score: float


class Annotator:
    """A pipeline's ``detector`` and ``segmenter`` nodes, built on first use, one request at a time.

    Args:
        pipeline: bundled pipeline name or YAML file (a ``detector`` node, and a SAM-family ``segmenter``
            node for masks and clicks).
        detector, segmenter: models replacing the nodes' own (hub ids or local folders).
        device: ``auto``, ``cpu``, ``cuda``, ...
        overrides: node name → parameters, as for :func:`grounded.api.build_pipeline`.
    """

    def __init__(
        self,
        pipeline: str | Path = "grounded_sam",
        *,
        detector: str | None = None,
        segmenter: str | None = None,
        device: str = "auto",
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.settings: dict[str, Any] = {
            "pipeline": str(pipeline),
            "detector": detector,
            "segmenter": segmenter,
            "device": device,
            "overrides": {k: dict(v) for k, v in (overrides or {}).items()},
        }
        self.lock = threading.RLock()
        self._pipeline: Any = None

    @property
    def pipeline(self) -> Any:
        """The built pipeline (models load lazily, on their first call)."""
        with self.lock:
            if self._pipeline is None:
                from grounded.api import build_pipeline

                s = self.settings
                self._pipeline = build_pipeline(
                    s["pipeline"],
                    detector=s["detector"],
                    segmenter=s["segmenter"],
                    overrides=s["overrides"],
                    shared={"device": s["device"]},
                )
            return self._pipeline

    def _node(self, name: str) -> Any | None:
        return self.pipeline.adapter(name) if name in self.pipeline.graph else None

    @property
    def detector(self) -> Any:
        found = self._node("detector")
        if found is None or not hasattr(found, "detect"):
            raise UserError(f"pipeline {self.settings['pipeline']!r} has no 'detector' node")
        return found

    @property
    def segmenter(self) -> Any:
        """The SAM-family segmenter (clicks and boxes decode on its cached embeddings)."""
        found = self._node("segmenter")
        if found is None or not hasattr(found, "decode_prompt"):
            raise UserError(f"pipeline {self.settings['pipeline']!r} has no SAM-family 'segmenter' node")
        return found

    @property
    def has_segmenter(self) -> bool:
        found = self._node("segmenter")
        return found is not None and hasattr(found, "segment")

    def model_version(self) -> str:
        """A short name of the models and settings, for Label Studio's ``model_version``."""
        from grounded.core.version import __version__

        s = self.settings
        parts = [f"grounded-{__version__}", Path(s["pipeline"]).stem]
        parts += [Path(str(s[k])).name for k in ("detector", "segmenter") if s[k]]
        return "-".join(parts)

    def detect(
        self,
        image: LoadedImage,
        ontology: Ontology,
        *,
        masks: bool = True,
        detector_params: Mapping[str, Any] | None = None,
    ) -> Detections:
        """The ontology's detections (classes = the ontology's names), with masks when ``masks`` and the
        pipeline has a segmenter; ``detector_params`` (e.g. ``box_threshold``) hold for this call only."""
        with self.lock:
            detector = self.detector
            given = {k: v for k, v in (detector_params or {}).items() if v is not None}
            with temporary_params(detector, given, UserError):
                (det,) = detector.detect([image], ontology.prompt())
            if masks and self.has_segmenter:
                (det,) = self.pipeline.adapter("segmenter").segment([image], [det])
        return ontology.assign(det)

    def encode(self, image: LoadedImage) -> Any:
        """The segmenter's embedding of ``image`` (cached by content: encoded once)."""
        with self.lock:
            (embedding,) = self.segmenter.encode([image])
        return embedding

    def decode(
        self,
        embedding: Any,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        box: Sequence[float] | None = None,
    ) -> ClickMask:
        """SAM's best mask (highest predicted IoU of its 3) for positive (1) / negative (0) clicks and / or an
        xyxy box, in pixels, on an embedding from :meth:`encode` (the decoder only)."""
        if not points and box is None:
            raise UserError("a click needs points or a box")
        if len(labels) != len(points):
            raise UserError("one label (1 positive, 0 negative) per point")
        with self.lock:
            masks, iou, _ = self.segmenter.decode_prompt(
                embedding,
                points=torch.tensor(points, dtype=torch.float32).reshape(-1, 2) if points else None,
                labels=torch.tensor(list(labels), dtype=torch.long) if points else None,
                box=None if box is None else torch.tensor(box, dtype=torch.float32),
                multimask=True,
            )
        best = int(iou.argmax())
        return ClickMask(mask=masks[best].cpu(), score=float(iou[best]))

    def click(
        self,
        image: LoadedImage,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        box: Sequence[float] | None = None,
    ) -> ClickMask:
        """:meth:`decode` on :meth:`encode` of ``image``: a second click on the same image runs only the decoder."""
        return self.decode(self.encode(image), points, labels, box)
