"""Video tracks: matching key-frame detections to live tracks, and the tracks' life cycle.

At a key frame the detections are matched to the live tracks by **mask IoU** (boxes when a side has no
masks) with an optimal one-to-one assignment (the Hungarian method, ``scipy.optimize.linear_sum_assignment``),
not first-come: a pair is kept when its IoU reaches ``min_iou`` (and, class-aware, when the classes agree).
A second round matches what is left by *coverage* (the share of a detection inside a track's mask, at
least ``min_cover``): an object partly hidden behind another keeps its id although its thin visible part
overlaps its detection by little IoU. A detection still left that lies mostly inside a live track of its
class (coverage >= ``min_cover``) is a duplicate and starts nothing; the others start new tracks. A track
missing from ``max_lost`` + 1 key frames in a row ends. Ids start at 1, grow by one per new track and are
never reused within a video.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "KeyFrameUpdate",
    "Track",
    "TrackBook",
    "assign",
    "box_iou_matrix",
    "greedy_assign",
    "mask_iou_matrix",
]


def mask_iou_matrix(
    a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], cover: bool = False
) -> np.ndarray:
    """``(len(a), len(b))`` IoU of two lists of COCO RLE masks (pycocotools' RLE IoU: no dense masks);
    ``cover=True``: the fraction of each ``a`` mask inside each ``b`` mask instead (intersection / area of a)."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    from pycocotools import mask as mask_utils

    def coded(rles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "size": list(r["size"]),
                "counts": r["counts"].encode() if isinstance(r["counts"], str) else r["counts"],
            }
            for r in rles
        ]

    crowd = [int(cover)] * len(b)  # pycocotools divides by the area of a where b is a "crowd"
    return np.asarray(mask_utils.iou(coded(a), coded(b), crowd), dtype=np.float64).reshape(len(a), len(b))


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of ``x0, y0, x1, y1`` boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


Matching = tuple[list[tuple[int, int]], list[int], list[int]]


def assign(iou: np.ndarray, min_iou: float) -> Matching:
    """Optimal one-to-one matching of rows to columns maximising the total IoU (Hungarian); pairs below
    ``min_iou`` are dropped. Returns ``(pairs, unmatched_rows, unmatched_cols)``."""
    from scipy.optimize import linear_sum_assignment

    iou = np.asarray(iou, dtype=np.float64)
    pairs: list[tuple[int, int]] = []
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
    return _rest(pairs, iou.shape)


def greedy_assign(iou: np.ndarray, min_iou: float) -> Matching:
    """First-come matching (each row in order takes its best free column): the baseline :func:`assign`
    improves on; kept for comparison."""
    iou = np.asarray(iou, dtype=np.float64)
    taken: set[int] = set()
    pairs = []
    for r in range(iou.shape[0]):
        free = [c for c in np.argsort(-iou[r], kind="stable").tolist() if c not in taken]
        if free and iou[r, free[0]] >= min_iou:
            pairs.append((r, free[0]))
            taken.add(free[0])
    return _rest(pairs, iou.shape)


def _rest(pairs: list[tuple[int, int]], shape: tuple[int, ...]) -> Matching:
    rows = {r for r, _ in pairs}
    cols = {c for _, c in pairs}
    return (
        sorted(pairs),
        [r for r in range(shape[0]) if r not in rows],
        [c for c in range(shape[1]) if c not in cols],
    )


@dataclass
class Track:
    """One object followed through a video."""

    id: int
    class_id: int
    score: float  # detector confidence at its last match
    first_frame: int
    last_frame: int = -1  # the last frame where its mask was non-empty
    frames_seen: int = 0  # frames with a non-empty mask
    lost: int = 0  # key frames in a row without a matching detection
    end_frame: int | None = None  # the key frame at which it ended

    def record(self, classes: Sequence[str]) -> dict[str, Any]:
        """The summary record: id, class, first and last frame, frames seen, the frame it ended at."""
        return {
            "track_id": self.id,
            "category_id": self.class_id,
            "category": classes[self.class_id] if 0 <= self.class_id < len(classes) else str(self.class_id),
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames_seen": self.frames_seen,
            "ended_at": self.end_frame,
        }


@dataclass(frozen=True)
class KeyFrameUpdate:
    """What one key frame changed: detection index → track id for matched and new tracks, and ended ids."""

    matched: dict[int, int]
    new: dict[int, int]
    ended: list[int]


@dataclass
class TrackBook:
    """The tracks of one video: association at key frames, aging, summary.

    Args:
        max_lost: a track not re-detected at this many key frames in a row is kept; one more ends it.
        min_iou: the least IoU of a detection and a track's propagated mask for them to match.
        class_aware: only detections of the track's class may match it.
        min_cover: the least share of a detection inside a track for the coverage round and duplicates.
        greedy: use first-come matching instead of the optimal assignment (for comparison only).
    """

    max_lost: int = 2
    min_iou: float = 0.3
    class_aware: bool = True
    min_cover: float = 0.5
    greedy: bool = False
    live: dict[int, Track] = field(default_factory=dict)
    ended: dict[int, Track] = field(default_factory=dict)
    next_id: int = 1

    def key_frame(
        self,
        frame: int,
        iou: np.ndarray,
        track_ids: Sequence[int],
        det_class_ids: Sequence[int],
        det_scores: Sequence[float],
        cover: np.ndarray | None = None,
    ) -> KeyFrameUpdate:
        """Match detections to the live tracks ``track_ids`` given their ``(tracks, detections)`` IoU and,
        optionally, coverage (the share of each detection inside each track)."""
        shape = (len(track_ids), len(det_class_ids))
        iou = np.asarray(iou, dtype=np.float64).reshape(shape)
        cover = np.zeros(shape) if cover is None else np.asarray(cover, dtype=np.float64).reshape(shape)
        if self.class_aware and iou.size:
            same = np.asarray([[self.live[t].class_id == c for c in det_class_ids] for t in track_ids])
            iou = np.where(same, iou, 0.0)
            cover = np.where(same, cover, 0.0)
        pairs, lost_rows, new_cols = (greedy_assign if self.greedy else assign)(iou, self.min_iou)
        if lost_rows and new_cols:  # second round: partly hidden objects, by coverage
            sub = cover[np.ix_(lost_rows, new_cols)]
            more, _, _ = assign(sub, self.min_cover)
            pairs = sorted([*pairs, *((lost_rows[r], new_cols[c]) for r, c in more)])
            taken_r = {r for r, _ in pairs}
            taken_c = {c for _, c in pairs}
            lost_rows = [r for r in lost_rows if r not in taken_r]
            new_cols = [c for c in new_cols if c not in taken_c]
        # duplicates: detections mostly inside a live track start nothing
        new_cols = [c for c in new_cols if not (cover.shape[0] and cover[:, c].max() >= self.min_cover)]
        matched: dict[int, int] = {}
        for r, c in pairs:
            track = self.live[track_ids[r]]
            track.lost = 0
            track.score = float(det_scores[c])
            track.class_id = int(det_class_ids[c])
            matched[c] = track.id
        ended = []
        for r in lost_rows:
            track = self.live[track_ids[r]]
            track.lost += 1
            if track.lost > self.max_lost:
                ended.append(track.id)
        for tid in ended:
            self.end(tid, frame)
        new: dict[int, int] = {}
        for c in new_cols:
            track = Track(
                id=self.next_id, class_id=int(det_class_ids[c]), score=float(det_scores[c]), first_frame=frame
            )
            self.next_id += 1
            self.live[track.id] = track
            new[c] = track.id
        return KeyFrameUpdate(matched=matched, new=new, ended=ended)

    def end(self, track_id: int, frame: int) -> None:
        """End a live track (its id is never used again)."""
        track = self.live.pop(track_id)
        track.end_frame = frame
        self.ended[track_id] = track

    def observe(self, frame: int, present: Mapping[int, bool]) -> None:
        """Record which tracks have a non-empty mask on ``frame`` (frames arrive in order per track; a
        reverse pass may report earlier frames, which move ``first_frame`` back)."""
        for tid, visible in present.items():
            track = self.live.get(tid) or self.ended.get(tid)
            if track is None or not visible:
                continue
            track.frames_seen += 1
            track.first_frame = min(track.first_frame, frame)
            track.last_frame = max(track.last_frame, frame)

    def state_dict(self) -> dict[str, Any]:
        """The tracks and the next id as plain values (the settings are not part of it)."""
        return {
            "live": [asdict(t) for t in self.live.values()],
            "ended": [asdict(t) for t in self.ended.values()],
            "next_id": self.next_id,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the tracks and the next id by a :meth:`state_dict`'s."""
        self.live = {int(t["id"]): Track(**t) for t in state["live"]}
        self.ended = {int(t["id"]): Track(**t) for t in state["ended"]}
        self.next_id = int(state["next_id"])

    def summary(self, classes: Sequence[str]) -> list[dict[str, Any]]:
        """One record per track that was ever visible, by id."""
        tracks = sorted([*self.live.values(), *self.ended.values()], key=lambda t: t.id)
        return [t.record(classes) for t in tracks if t.frames_seen]
