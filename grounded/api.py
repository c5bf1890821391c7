"""The public Python API in one place: ``grounded.api.segment``, ``grounded.api.build_pipeline`` and
``grounded.api.track``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grounded.core.prompts import Prompt
from grounded.tasks.segment import ImageSource, build_pipeline, segment

if TYPE_CHECKING:  # the video job is imported when first used: segmenting images never loads it
    from grounded.tasks.track import TrackFrame, Tracking

__all__ = ["ImageSource", "TrackFrame", "build_pipeline", "build_tracking", "segment", "track"]


def build_tracking(
    pipeline: str | Path = "track_grounded_sam2",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
) -> Tracking:
    """Load a tracking pipeline (its ``tracker`` node and key-frame detector) once, to reuse in :func:`track`."""
    from grounded.tasks.track import build_tracking as build

    return build(pipeline, overrides, shared)


def track(
    video: str | Path,
    prompt: str | Prompt,
    *,
    pipeline: str | Path | Tracking = "track_grounded_sam2",
    detect_every: int | None = None,
    max_lost: int | None = None,
    reverse: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | None = None,
) -> Iterator[TrackFrame]:
    """Track the prompt's classes through a video file or frames folder, one frame at a time.

    Yields a :class:`~grounded.tasks.track.TrackFrame` per frame (``index``, ``image``, ``detections`` with
    ``track_ids`` and masks); frames stream, so memory stays flat on long videos. ``pipeline`` is a tracking
    pipeline name or YAML (see ``grounded/pipelines/track_*.yaml``) or one built with :func:`build_tracking`.
    """
    from grounded.tasks.track import Tracking
    from grounded.tasks.track import track as run_track

    if isinstance(pipeline, Tracking):
        tracking = pipeline
    else:
        tracking = build_tracking(pipeline, overrides, {"device": device} if device else None)
    yield from run_track(
        video, prompt, tracking, detect_every=detect_every, max_lost=max_lost, reverse=reverse
    )


def __getattr__(name: str) -> Any:
    if name == "TrackFrame":
        from grounded.tasks.track import TrackFrame

        return TrackFrame
    raise AttributeError(f"module 'grounded.api' has no attribute {name!r}")
