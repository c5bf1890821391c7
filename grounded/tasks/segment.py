"""Segment by text in Python: the same job as ``grounded segment``, without files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grounded.core.detections import Detections
from grounded.core.images import LoadedImage, load_image
from grounded.core.prompts import Prompt
from grounded.engine import Pipeline, load_pipeline

__all__ = ["build_pipeline", "segment"]

ImageSource = str | Path | np.ndarray | LoadedImage | Any


def build_pipeline(
    pipeline: str | Path = "grounded_sam",
    *,
    detector: str | None = None,
    segmenter: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Load a bundled or YAML pipeline; ``detector`` / ``segmenter`` replace the model of those nodes.

    ``overrides`` maps node name → parameters, e.g. ``{"detector": {"box_threshold": 0.3}}``; ``shared``
    parameters (``device``, ``precision``, ``batch_size``) go to every node that accepts them.
    """
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (overrides or {}).items()}
    if detector is not None:
        merged.setdefault("detector", {})["model"] = detector
    if segmenter is not None:
        merged.setdefault("segmenter", {})["model"] = segmenter
    return load_pipeline(pipeline, merged, shared)


def segment(
    images: ImageSource | Sequence[ImageSource],
    prompt: str | Sequence[str] | Prompt,
    *,
    pipeline: str | Path | Pipeline = "grounded_sam",
    detector: str | None = None,
    segmenter: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Detections]:
    """Find the prompt's classes in each image; returns one :class:`Detections` (with masks) per image.

    ``images`` are paths, numpy arrays, PIL images or :class:`LoadedImage`; a bad file raises
    :class:`~grounded.core.images.ImageLoadError`. Pass a built :class:`Pipeline` to reuse loaded models.
    """
    if isinstance(images, (str, Path, np.ndarray, LoadedImage)) or not isinstance(images, Sequence):
        images = [images]
    loaded = [load_image(im) for im in images]
    if not isinstance(pipeline, Pipeline):
        pipeline = build_pipeline(pipeline, detector=detector, segmenter=segmenter, overrides=overrides)
    elif detector or segmenter or overrides:
        raise ValueError("detector/segmenter/overrides apply when building a pipeline, not to a built one")
    result = pipeline.run(images=loaded, prompt=Prompt.of(prompt))
    return list(result["detections"])
