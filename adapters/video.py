"""The interface of video trackers: what ``grounded track`` asks of a tracker backend.

A tracker follows objects through the frames of one video, fed one frame at a time (``start``, then
``step`` for each frame in order). Mask-propagating trackers (SAM 2 video) are told which objects to follow
by the job, which detects and associates on key frames (``add``, ``drop``); text-driven trackers (SAM 3
video) find, match and number the objects themselves (``text_driven = True``, :meth:`VideoTracker.detect`).
A tracker is not a node of a pipeline's data flow: the pipeline YAML names it as the node ``tracker``, and
the job uses it through these methods.

A ``resumable`` tracker can hand out its state (:meth:`VideoTracker.state_dict`: tensors, numbers,
strings, lists and dicts only, so ``torch.load(weights_only=True)`` reads it back) and take it back in a new
process (:meth:`VideoTracker.load_state_dict`, after ``start``): ``grounded track`` checkpoints an
interrupted run with it, and the frames after a resume come out as they would have without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import Adapter

__all__ = ["Masks", "ObjectPrompt", "VideoTracker"]

#: track id -> ``(H, W)`` bool mask on one frame (empty where the object is not visible)
Masks = dict[int, np.ndarray]
#: what starts or corrects an object on a frame: an ``(H, W)`` bool mask or an ``x0, y0, x1, y1`` box
ObjectPrompt = np.ndarray


class VideoTracker(Adapter):
    """Base of tracker backends (see the module docstring)."""

    outputs: ClassVar[dict[str, Any]] = {}
    #: True: the tracker detects and numbers objects itself from the text prompt (no detector)
    text_driven: ClassVar[bool] = False
    #: True: :meth:`state_dict` / :meth:`load_state_dict` work (checkpoints, resume)
    resumable: ClassVar[bool] = False

    def run(self) -> dict[str, Any]:
        """Trackers have no data-flow ports; the job calls the methods below."""
        return {}

    def start(self, size: tuple[int, int], prompt: Prompt) -> None:
        """Begin a video of frames ``(height, width)``; forgets any earlier video."""
        raise NotImplementedError

    def step(self, index: int, image: LoadedImage) -> Masks:
        """Take the next frame and return the followed objects' masks on it."""
        raise NotImplementedError

    def add(self, index: int, objects: Mapping[int, ObjectPrompt]) -> Masks:
        """Start (new ids) or correct (known ids) objects on frame ``index``, the last one stepped;
        returns the masks of all followed objects on that frame."""
        raise NotImplementedError

    def drop(self, ids: Iterable[int]) -> None:
        """Stop following these objects (their state is freed)."""
        raise NotImplementedError

    def backfill(
        self, frames: Sequence[tuple[int, LoadedImage]], index: int, objects: Mapping[int, np.ndarray]
    ) -> dict[int, Masks]:
        """Masks of objects first seen on frame ``index`` on the earlier ``frames`` (a reverse pass);
        frame index -> masks. A tracker that cannot go backwards returns nothing."""
        return {}

    def detect(self, index: int, image: LoadedImage) -> Detections:
        """Text-driven trackers: the next frame's objects, with masks and ``track_ids``."""
        raise NotImplementedError(f"{type(self).__name__} is not a text-driven tracker")

    def state_size(self) -> int:
        """How many per-frame entries the tracker holds now (to check that memory stays bounded)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state after the last frame it took, to save now (CPU tensors and plain values);
        what the model will not read again may be left out."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its state (not resumable)")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (of the same settings), after :meth:`start`: the next
        ``step`` is the frame after the one the state was taken at."""
        raise NotImplementedError(f"{type(self).__name__} cannot load a state (not resumable)")
