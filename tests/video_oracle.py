"""Synthetic videos with known masks, and an oracle detector and tracker that read them (tests only).

A :class:`Scene` is shapes moving over a plain background (they enter, leave, cross and occlude each
other); :func:`write_mp4` encodes it with PyAV. The oracle detector returns the true masks of the visible
objects on a key frame (eroded or dilated by a pixel as noise, in shuffled order); the oracle tracker
follows each object it is given by the true object its first mask overlaps most, and returns that
object's true masks on later frames. So the tracking logic is tested independently of model quality.

The oracle detector is a pure function of the frame (its noise is seeded by the frame index, as a real
detector gives the same boxes for the same frame), and the oracle trackers are resumable, so checkpoints
and resume are tested with them; ``ORACLE_STALL_AT=N`` in the environment makes the tracker hang at frame
``N`` (a run to kill at a known point).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from grounded.adapters.video import VideoTracker
from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import Adapter, register_adapter

SCENES: dict[str, Scene] = {}


@dataclass(frozen=True)
class Shape:
    """A rectangle of ``size`` (h, w) moving from ``start`` to ``end`` (top-left x, y) over frames
    ``first``..``last``; ``depth``: larger is drawn on top."""

    class_id: int
    size: tuple[int, int]
    start: tuple[float, float]
    end: tuple[float, float]
    first: int
    last: int
    depth: int = 0
    color: tuple[int, int, int] = (200, 60, 60)


@dataclass
class Scene:
    shapes: Sequence[Shape]
    frames: int
    size: tuple[int, int] = (64, 96)
    classes: tuple[str, ...] = ("car", "pedestrian")

    def masks(self, t: int) -> dict[int, np.ndarray]:
        """Visible part of each shape (index -> mask) on frame ``t``, occlusion applied."""
        h, w = self.size
        full: dict[int, np.ndarray] = {}
        for k, s in enumerate(self.shapes):
            if not s.first <= t <= s.last:
                continue
            a = (t - s.first) / max(1, s.last - s.first)
            x = round(s.start[0] + a * (s.end[0] - s.start[0]))
            y = round(s.start[1] + a * (s.end[1] - s.start[1]))
            m = np.zeros((h, w), dtype=bool)
            m[max(0, y) : max(0, y + s.size[0]), max(0, x) : max(0, x + s.size[1])] = True
            full[k] = m
        visible = {}
        for k, m in full.items():
            above = [full[j] for j in full if self.shapes[j].depth > self.shapes[k].depth]
            v = m & ~np.logical_or.reduce(above) if above else m
            if v.sum() >= 4:
                visible[k] = v
        return visible

    def pixels(self, t: int) -> np.ndarray:
        img = np.full((*self.size, 3), 40, dtype=np.uint8)
        for k, m in sorted(self.masks(t).items(), key=lambda kv: self.shapes[kv[0]].depth):
            img[m] = self.shapes[k].color
        return img


CAR, PED = 0, 1


def crossing_scene() -> Scene:
    """Two pedestrians cross (the first walks in front), a car passes through and leaves, another arrives."""
    return Scene(
        shapes=[
            Shape(PED, (16, 12), (2, 20), (80, 20), 0, 39, depth=1, color=(220, 60, 60)),
            Shape(PED, (16, 12), (80, 24), (2, 24), 0, 39, depth=0, color=(60, 220, 60)),
            Shape(CAR, (10, 20), (-8, 48), (60, 48), 12, 27, color=(60, 60, 220)),
            Shape(CAR, (10, 16), (70, 48), (76, 48), 31, 39, color=(220, 220, 60)),
        ],
        frames=40,
    )


def write_mp4(scene: Scene, path: Any, fps: int = 10) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = scene.size
        stream.pix_fmt = "yuv420p"
        for t in range(scene.frames):
            frame = av.VideoFrame.from_ndarray(scene.pixels(t), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_index(image: LoadedImage) -> int:
    return int(image.name.rsplit("_", 1)[1])


def _noisy(mask: np.ndarray, rng: random.Random) -> np.ndarray:
    """Grow or shrink the mask by one pixel at random."""
    shifted = [np.roll(mask, s, axis=a) for a in (0, 1) for s in (-1, 1)]
    if rng.random() < 0.5:
        return mask | np.logical_or.reduce(shifted)
    out = mask & np.logical_and.reduce(shifted)
    return out if out.any() else mask


@register_adapter("oracle_detector")
class OracleDetector(Adapter):
    """The true masks of a scene's visible objects, noisy and shuffled."""

    outputs: ClassVar[dict[str, Any]] = {"detections": list[Detections]}

    def __init__(self, scene: str = "", seed: int = 0, drop: Sequence[list[int]] = ()) -> None:
        self.calls = 0

    def run(self, images: list[LoadedImage], prompt: Prompt) -> dict[str, Any]:
        scene = SCENES[self.scene]
        out = []
        for image in images:
            self.calls += 1
            t = frame_index(image)
            rng = random.Random(f"{self.seed}-{t}")  # the same frame gives the same detections
            found = [(k, m) for k, m in scene.masks(t).items() if [t, k] not in [list(d) for d in self.drop]]
            rng.shuffle(found)
            masks = [_noisy(m, rng) for _, m in found]
            boxes = []
            for m in masks:
                ys, xs = np.nonzero(m)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            n = len(found)
            out.append(
                Detections(
                    boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                    scores=torch.linspace(0.9, 0.5, n) if n else torch.zeros(0),
                    class_ids=torch.tensor([scene.shapes[k].class_id for k, _ in found], dtype=torch.int64),
                    classes=Prompt.of(prompt).classes,
                    phrases=tuple(scene.classes[scene.shapes[k].class_id] for k, _ in found),
                    image_size=scene.size,
                    masks=torch.from_numpy(np.stack(masks))
                    if n
                    else torch.zeros((0, *scene.size), dtype=torch.bool),
                )
            )
        return {"detections": out}


@register_adapter("color_detector")
class ColorDetector(Adapter):
    """Finds a scene's objects in the pixels by their colours (so a frame decoded the wrong way round
    gives masks in the wrong place)."""

    outputs: ClassVar[dict[str, Any]] = {"detections": list[Detections]}

    def __init__(self, scene: str = "") -> None:
        pass

    def run(self, images: list[LoadedImage], prompt: Prompt) -> dict[str, Any]:
        scene = SCENES[self.scene]
        out = []
        for image in images:
            found, boxes = [], []
            for shape in scene.shapes:
                mask = (np.abs(image.pixels.astype(int) - shape.color) < 48).all(axis=-1)
                if mask.sum() >= 4:
                    ys, xs = np.nonzero(mask)
                    found.append((shape.class_id, mask))
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            n = len(found)
            out.append(
                Detections(
                    boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                    scores=torch.full((n,), 0.9),
                    class_ids=torch.tensor([c for c, _ in found], dtype=torch.int64),
                    classes=Prompt.of(prompt).classes,
                    phrases=tuple(scene.classes[c] for c, _ in found),
                    image_size=image.size,
                    masks=torch.from_numpy(np.stack([m for _, m in found]))
                    if n
                    else torch.zeros((0, *image.size), dtype=torch.bool),
                )
            )
        return {"detections": out}


@register_adapter("oracle_tracker")
class OracleTracker(VideoTracker):
    """Follows each given object as the true object its first mask overlaps most."""

    resumable = True

    def __init__(self, scene: str = "") -> None:
        self.bound: dict[int, int] = {}
        self.dropped: list[int] = []
        self.index = -1

    def start(self, size: tuple[int, int], prompt: Prompt) -> None:
        self.bound, self.dropped, self.index = {}, [], -1

    def _masks(self, index: int) -> dict[int, np.ndarray]:
        scene = SCENES[self.scene]
        truth = scene.masks(index)
        empty = np.zeros(scene.size, dtype=bool)
        return {tid: truth.get(k, empty) for tid, k in self.bound.items()}

    def step(self, index: int, image: LoadedImage) -> dict[int, np.ndarray]:
        assert index == self.index + 1, "frames arrive in order, none skipped"
        if os.environ.get("ORACLE_STALL_AT") == str(index):
            time.sleep(600)  # a run to be killed here
        self.index = index
        return self._masks(index)

    def add(self, index: int, objects: Any) -> dict[int, np.ndarray]:
        assert index == self.index
        truth = SCENES[self.scene].masks(index)
        for tid, mask in objects.items():
            if tid not in self.bound:
                ious = {k: (m & mask).sum() / (m | mask).sum() for k, m in truth.items()}
                self.bound[tid] = max(ious, key=ious.__getitem__)
        return self._masks(index)

    def drop(self, ids: Any) -> None:
        for tid in ids:
            self.bound.pop(tid, None)
            self.dropped.append(tid)

    def backfill(self, frames: Any, index: int, objects: Any) -> dict[int, dict[int, np.ndarray]]:
        scene = SCENES[self.scene]
        out = {}
        for i, _ in frames:
            truth = scene.masks(i)
            out[i] = {tid: truth.get(self.bound[tid], np.zeros(scene.size, bool)) for tid in objects}
        return out

    def state_size(self) -> int:
        return len(self.bound)

    def state_dict(self) -> dict[str, Any]:
        return {"bound": dict(self.bound), "dropped": list(self.dropped), "index": self.index}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bound = {int(k): int(v) for k, v in state["bound"].items()}
        self.dropped, self.index = list(state["dropped"]), int(state["index"])


@register_adapter("oracle_text_tracker")
class OracleTextTracker(VideoTracker):
    """A text-driven tracker: finds and numbers the true objects itself (id = object index + 1)."""

    text_driven = True
    resumable = True

    def __init__(self, scene: str = "") -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}  # it reads the truth afresh on every frame

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def start(self, size: tuple[int, int], prompt: Prompt) -> None:
        self.prompt = prompt

    def detect(self, index: int, image: LoadedImage) -> Detections:
        scene = SCENES[self.scene]
        found = sorted(scene.masks(index).items())
        n = len(found)
        boxes = [
            [
                *np.nonzero(m)[1][[0]],
                *np.nonzero(m)[0][[0]],
                1 + np.nonzero(m)[1].max(),
                1 + np.nonzero(m)[0].max(),
            ]
            for _, m in found
        ]
        return Detections(
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
            scores=torch.full((n,), 0.8),
            class_ids=torch.tensor([scene.shapes[k].class_id for k, _ in found], dtype=torch.int64),
            classes=self.prompt.classes,
            phrases=tuple(self.prompt.classes[scene.shapes[k].class_id] for k, _ in found),
            image_size=scene.size,
            masks=torch.from_numpy(np.stack([m for _, m in found]))
            if n
            else torch.zeros((0, *scene.size), dtype=torch.bool),
            track_ids=torch.tensor([k + 1 for k, _ in found], dtype=torch.int64),
        )
