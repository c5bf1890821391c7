"""Text-prompted video segmentation and tracking (``grounded track`` / ``grounded.track``).

The pipeline YAML names a ``tracker`` node (a :class:`~grounded.adapters.video.VideoTracker`) and, unless
the tracker is text-driven, the detector nodes (``detector`` [+ ``segmenter``]) that run on key frames.
Frames stream from the video one at a time. Every ``detect_every``-th frame is a key frame: the detector
runs, its detections are matched to the tracks' propagated masks (mask IoU, optimal assignment:
:class:`~grounded.core.tracks.TrackBook`), unmatched detections start new tracks (and, with
``reverse``, are followed backwards over the frames since the previous key frame), matched ones correct
their track's mask (``refresh``), and tracks missed at more than ``max_lost`` key frames in a row end.
Frames are yielded one key-frame segment at a time (at most ``detect_every`` frames are held), so memory
stays flat on long videos.

Checkpoints: at the end of each key-frame segment (once the consumer has taken its frames) ``track`` asks
its ``checkpoints`` whether one is due and hands it a :class:`TrackState` (the tracker's and the tracks'
state and the masks of the key frame that opens the next segment); ``track(..., resume=state)`` continues
from one, in a new process, with the same frames and detections after it as an uninterrupted run. Detectors
are taken to be pure functions of the frame (the same frame gives the same detections); they hold no state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from grounded.adapters.video import Masks, VideoTracker
from grounded.core.detections import Detections
from grounded.core.errors import UserError
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.core.rle import encode_masks
from grounded.core.tracks import TrackBook, box_iou_matrix, mask_iou_matrix
from grounded.core.video import VideoSource, open_video
from grounded.engine import Pipeline, get_adapter
from grounded.engine.pipeline import PipelineError
from grounded.engine.serialization import pipeline_from_dict, read_pipeline_spec

__all__ = [
    "Checkpoints",
    "TrackFrame",
    "TrackState",
    "Tracking",
    "build_tracking",
    "resolve_options",
    "track",
]

TRACKER_NODE = "tracker"
#: the defaults of ``detect_every`` and ``max_lost`` for trackers fed by a key-frame detector
DETECT_EVERY, MAX_LOST = 10, 2


@dataclass(frozen=True)
class TrackFrame:
    """One frame of a tracked video: its index, pixels and detections (masks, ``track_ids``)."""

    index: int
    image: LoadedImage
    detections: Detections


@dataclass
class TrackState:
    """Where a run stands at the end of a key-frame segment: the frames before ``next_index`` are done;
    frame ``next_index`` has been stepped (and detected, if a key frame) and its masks wait in
    ``pending`` (``None`` for text-driven trackers, which checkpoint before the frame)."""

    next_index: int
    pending: Masks | None
    tracker: dict[str, Any]
    book: dict[str, Any]


class Checkpoints(Protocol):
    """What :func:`track` asks at each segment end: is a checkpoint due, and take this state."""

    def due(self, index: int) -> bool:
        """Whether to save a state whose next frame is ``index``."""
        ...

    def save(self, state: TrackState) -> None:
        """Save ``state`` (the frames before ``state.next_index`` have all been consumed)."""
        ...


@dataclass
class Tracking:
    """A built tracker and, for mask-propagating trackers, the key-frame detector pipeline."""

    tracker: VideoTracker
    detector: Pipeline | None
    settings: dict[str, Any]


def build_tracking(
    pipeline: str | Path = "track_grounded_sam2",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
) -> Tracking:
    """Load a tracking pipeline YAML: its ``tracker`` node and the detector pipeline made of the others."""
    spec = read_pipeline_spec(pipeline)
    nodes = dict(spec.get("nodes") or {})
    if TRACKER_NODE not in nodes:
        raise PipelineError(
            f"pipeline {spec.get('name', pipeline)!r} has no {TRACKER_NODE!r} node; a tracking pipeline names "
            "its video tracker (sam2_video, sam3_video) as the node 'tracker'"
        )
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(nodes)
    if unknown:
        raise PipelineError(f"overrides name unknown nodes {sorted(unknown)}; nodes: {sorted(nodes)}")
    tracker_spec = nodes.pop(TRACKER_NODE)
    cls = get_adapter(str(tracker_spec["type"]))
    if not issubclass(cls, VideoTracker):
        raise PipelineError(f"node 'tracker' ({tracker_spec['type']}) is not a video tracker")
    params = dict(tracker_spec.get("params") or {})
    params.update({k: v for k, v in (shared or {}).items() if k in ("device", "precision")})
    params.update(overrides.pop(TRACKER_NODE, {}))
    try:
        tracker = cls(**params)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"node 'tracker' ({tracker_spec['type']}): {exc}") from None
    detector = None
    if not cls.text_driven:
        if not nodes:
            raise PipelineError(f"tracker {tracker_spec['type']!r} needs detector nodes on key frames")
        detector = pipeline_from_dict({**spec, "nodes": nodes}, overrides, shared)
    settings = {
        "pipeline": str(spec.get("name", pipeline)),
        "tracker": {"type": tracker_spec["type"], **tracker.get_params()},
        "detector": detector.to_dict()["nodes"] if detector is not None else None,
    }
    return Tracking(tracker=tracker, detector=detector, settings=settings)


def resolve_options(
    tracker: VideoTracker, detect_every: int | None, max_lost: int | None, reverse: bool
) -> tuple[int, int | None]:
    """``(detect_every, max_lost)`` in use: the defaults where not given. A text-driven tracker detects on
    every frame (1) and ends its tracks itself (``None``), forward only: asking it for key frames,
    ``max_lost`` or a reverse pass is refused in one line rather than ignored."""
    if tracker.text_driven:
        asked = [
            flag
            for flag, given in (
                ("--detect-every", detect_every not in (None, 1)),
                ("--max-lost", max_lost is not None),
                ("--reverse", reverse),
            )
            if given
        ]
        if asked:
            name = tracker.registry_name or type(tracker).__name__
            raise UserError(
                f"{' and '.join(asked)} {'does' if len(asked) == 1 else 'do'} not apply to the text-driven "
                f"{name} tracker: it detects on "
                "every frame, forward only, and ends tracks itself (set tracker.forget_after instead of "
                "--max-lost)"
            )
        return 1, None
    return (
        DETECT_EVERY if detect_every is None else detect_every,
        MAX_LOST if max_lost is None else max_lost,
    )


def _box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _frame_detections(book: TrackBook, masks: Masks, prompt: Prompt, size: tuple[int, int]) -> Detections:
    """The visible tracks of one frame as :class:`Detections` (by track id)."""
    ids = sorted(tid for tid, m in masks.items() if m.any() and (tid in book.live or tid in book.ended))
    if not ids:
        return Detections.empty(size, prompt.classes).with_track_ids([])
    tracks = [book.live.get(t) or book.ended[t] for t in ids]
    stack = torch.from_numpy(np.stack([masks[t] for t in ids]).astype(bool))
    return Detections(
        boxes=torch.tensor([_box_of(masks[t]) for t in ids], dtype=torch.float32),
        scores=torch.tensor([t.score for t in tracks], dtype=torch.float32),
        class_ids=torch.tensor([t.class_id for t in tracks], dtype=torch.int64),
        classes=prompt.classes,
        phrases=tuple(prompt.classes[t.class_id] for t in tracks),
        image_size=size,
        masks=stack,
        track_ids=torch.tensor(ids, dtype=torch.int64),
    )


def _key_frame_overlaps(
    masks: Masks, ids: list[int], detections: Detections
) -> tuple[np.ndarray, np.ndarray | None]:
    """IoU of the live tracks' propagated masks and the detections (masks, else boxes), and, with masks,
    the share of each detection inside each track; both ``(tracks, detections)``."""
    if not ids or not len(detections):
        return np.zeros((len(ids), len(detections))), None
    if detections.has_masks:
        empty = np.zeros(detections.image_size, dtype=bool)
        track_rles = encode_masks(np.stack([masks.get(t, empty) for t in ids]))
        det_rles = detections.rles()
        return mask_iou_matrix(track_rles, det_rles), mask_iou_matrix(det_rles, track_rles, cover=True).T
    track_boxes = np.asarray([_box_of(masks[t]) if t in masks else [0.0] * 4 for t in ids])
    return box_iou_matrix(track_boxes, detections.boxes.detach().float().cpu().numpy()), None


def track(
    video: str | Path | VideoSource,
    prompt: str | Prompt,
    tracking: Tracking,
    *,
    detect_every: int | None = None,
    max_lost: int | None = None,
    min_iou: float = 0.3,
    reverse: bool = False,
    refresh: bool = True,
    book: TrackBook | None = None,
    checkpoints: Checkpoints | None = None,
    resume: TrackState | None = None,
) -> Iterator[TrackFrame]:
    """Track the prompt's classes through ``video``; yields one :class:`TrackFrame` per frame, in order.

    ``book`` (a fresh :class:`TrackBook` by default) holds the tracks; pass one to read the summary after.
    ``checkpoints`` is offered a :class:`TrackState` at every segment end (``tracker.resumable`` trackers
    only); ``resume`` continues from one: the frames before ``resume.next_index`` are skipped (not yielded).
    ``detect_every`` and ``max_lost`` default to 10 and 2 (see :func:`resolve_options`).
    """
    detect_every, lost = resolve_options(tracking.tracker, detect_every, max_lost, reverse)
    if detect_every < 1:
        raise UserError("--detect-every must be at least 1")
    if lost is not None and lost < 0:
        raise UserError("--max-lost must be at least 0")
    source = video if isinstance(video, VideoSource) else open_video(video)
    prompt = Prompt.of(prompt)
    book = book if book is not None else TrackBook()
    book.max_lost, book.min_iou = (MAX_LOST if lost is None else lost), min_iou
    tracker = tracking.tracker
    if (checkpoints is not None or resume is not None) and not tracker.resumable:
        raise UserError(
            f"the tracker {type(tracker).__name__} cannot save its state: no checkpoints or resume"
        )
    tracker.start(source.size, prompt)
    start, pending = 0, None
    if resume is not None:
        tracker.load_state_dict(resume.tracker)
        book.load_state_dict(resume.book)
        start, pending = resume.next_index, resume.pending
    if tracker.text_driven:
        yield from _text_driven(source, prompt, tracker, book, detect_every, checkpoints, start)
        return
    assert tracking.detector is not None
    segment: list[tuple[int, LoadedImage, Masks]] = []
    for index, image in enumerate(source.frames(start=start), start=start):
        if index == start and pending is not None:  # stepped and detected before the checkpoint
            segment.append((index, image, pending))
            continue
        masks = tracker.step(index, image)  # every frame, also before the first object (add() needs it)
        if index % detect_every == 0:
            detections = tracking.detector.run(images=[image], prompt=prompt)["detections"][0].to("cpu")
            live = sorted(book.live)
            iou, cover = _key_frame_overlaps(masks, live, detections)
            update = book.key_frame(
                index, iou, live, detections.class_ids.tolist(), detections.scores.tolist(), cover
            )
            tracker.drop(update.ended)
            for tid in update.ended:
                masks.pop(tid, None)
            chosen = dict(update.new)
            if refresh:
                chosen.update(update.matched)
            prompts = {
                tid: (detections.mask_array(i) if detections.has_masks else detections.boxes[i].numpy())
                for i, tid in chosen.items()
            }
            if prompts:
                masks = tracker.add(index, prompts)
            if reverse and update.new and segment:
                new_masks = {tid: masks[tid] for tid in update.new.values() if tid in masks}
                filled = tracker.backfill([(i, im) for i, im, _ in segment], index, new_masks)
                segment = [(i, im, {**m, **filled.get(i, {})}) for i, im, m in segment]
            yield from _emit(segment, book, prompt, source.size)
            segment = [(index, image, masks)]
            if checkpoints is not None and index > start and checkpoints.due(index):
                checkpoints.save(TrackState(index, masks, tracker.state_dict(), book.state_dict()))
            continue
        segment.append((index, image, masks))
    yield from _emit(segment, book, prompt, source.size)


def _emit(
    segment: list[tuple[int, LoadedImage, Masks]], book: TrackBook, prompt: Prompt, size: tuple[int, int]
) -> Iterator[TrackFrame]:
    for index, image, masks in segment:
        book.observe(index, {tid: bool(m.any()) for tid, m in masks.items()})
        yield TrackFrame(index=index, image=image, detections=_frame_detections(book, masks, prompt, size))


def _text_driven(
    source: VideoSource,
    prompt: Prompt,
    tracker: VideoTracker,
    book: TrackBook,
    detect_every: int,
    checkpoints: Checkpoints | None,
    start: int,
) -> Iterator[TrackFrame]:
    """A tracker that finds and numbers objects itself: record its tracks in ``book`` as they come
    (checkpoints every ``detect_every`` frames, before the frame)."""
    from grounded.core.tracks import Track

    for index, image in enumerate(source.frames(start=start), start=start):
        if checkpoints is not None and index > start and index % detect_every == 0 and checkpoints.due(index):
            checkpoints.save(TrackState(index, None, tracker.state_dict(), book.state_dict()))
        det = tracker.detect(index, image).to("cpu")
        if det.track_ids is None:
            raise PipelineError(f"{type(tracker).__name__}.detect returned detections without track_ids")
        for tid, cid, score in zip(
            det.track_ids.tolist(), det.class_ids.tolist(), det.scores.tolist(), strict=True
        ):
            if tid not in book.live:
                book.live[tid] = Track(id=tid, class_id=cid, score=score, first_frame=index)
                book.next_id = max(book.next_id, tid + 1)
            book.live[tid].score = score
        present = dict.fromkeys(det.track_ids.tolist(), True)
        if det.has_masks:
            present = {
                tid: area > 0 for tid, area in zip(det.track_ids.tolist(), det.mask_areas(), strict=True)
            }
        book.observe(index, present)
        yield TrackFrame(index=index, image=image, detections=det)
