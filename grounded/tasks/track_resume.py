"""Checkpoints of ``grounded track``: an interrupted run resumes with outputs identical to an uninterrupted one.

While a run is unfinished, ``OUT/checkpoint/`` holds the streams being written (``frames.jsonl``,
``mots.txt``, and with an mp4 ``render.jsonl``: the exact detections of every frame done, from which the
mp4 is drawn again on resume: an H.264 stream cannot be continued) and, from the first checkpoint on,
``state.pt``: the settings, the frame to continue at, the tracker's and the tracks' state
(:class:`~grounded.tasks.track.TrackState`) and the length of each stream at that moment. A checkpoint is
taken at the end of a key-frame segment: the streams are flushed and synced, then ``state.pt`` is replaced
atomically, so a kill at any point leaves the previous checkpoint or the new one, never half of one. On
resume each stream is cut back to its recorded length (what a killed run wrote after its last checkpoint
is written again, identically) and per-frame files are rewritten from the checkpoint's frame on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from grounded.core.detections import Detections
from grounded.core.errors import UserError
from grounded.core.files import atomic_write_bytes
from grounded.core.video import VideoSource
from grounded.tasks.track import TrackState

__all__ = [
    "CHECKPOINT_DIR",
    "Checkpoint",
    "CheckpointWriter",
    "Stream",
    "detections_from_line",
    "detections_line",
    "input_fingerprint",
    "load_checkpoint",
    "settings_diff",
]

CHECKPOINT_DIR = "checkpoint"
STATE = "state.pt"
VERSION = 1
_EDGE = 1 << 20  # bytes hashed at each end of a video file


def input_fingerprint(source: VideoSource) -> dict[str, Any]:
    """What identifies the input: its path, size and a hash of its first and last MiB (a video file), or
    its frame files' names and sizes (a folder)."""
    digest = hashlib.sha256()
    path = source.path
    if path.is_dir():
        files = list(source._files or [])
        for f in files:
            digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        size = sum(f.stat().st_size for f in files)
    else:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            digest.update(stream.read(_EDGE))
            stream.seek(max(0, size - _EDGE))
            digest.update(stream.read(_EDGE))
    return {
        "path": str(path.resolve()),
        "bytes": size,
        "sha256": digest.hexdigest(),
        "frames": source.frame_count,
        "size": list(source.size),
        "fps": str(source.fps),
    }


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def settings_diff(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The (dotted) keys whose values differ between two settings records."""
    a, b = _flat(json.loads(json.dumps(saved, default=str))), _flat(json.loads(json.dumps(now, default=str)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class Stream:
    """A text file in the checkpoint folder, moved to ``final`` by :meth:`finish`; ``resume_at``: continue
    an existing one cut back to that many bytes (negative: not recorded, a damaged checkpoint)."""

    def __init__(self, path: Path, final: Path, resume_at: int | None = None) -> None:
        self.path, self.final = path, final
        if resume_at is None:
            self.file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by finish/close
            return
        if resume_at < 0 or not path.is_file() or path.stat().st_size < resume_at:
            raise UserError(
                f"the checkpoint in {path.parent} is damaged ({path.name} is shorter than recorded); "
                "use --overwrite to start over"
            )
        os.truncate(path, resume_at)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, text: str) -> None:
        self.file.write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        self.file.writelines(lines)

    def mark(self) -> int:
        """Flush and sync; the length in bytes."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def finish(self) -> None:
        """Sync, close and move into place."""
        self.mark()
        self.file.close()
        os.replace(self.path, self.final)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


@dataclass
class Checkpoint:
    """A saved run: its settings, where it stands, and its streams' lengths (name -> bytes)."""

    settings: dict[str, Any]
    state: TrackState
    streams: dict[str, int]


def _masks_out(masks: Mapping[int, np.ndarray] | None) -> dict[int, torch.Tensor] | None:
    if masks is None:
        return None
    return {int(k): torch.from_numpy(np.ascontiguousarray(v, dtype=bool)) for k, v in masks.items()}


def _masks_in(masks: Mapping[int, torch.Tensor] | None) -> dict[int, np.ndarray] | None:
    if masks is None:
        return None
    return {int(k): v.numpy().astype(bool) for k, v in masks.items()}


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    """Write ``folder/state.pt`` atomically."""
    state = checkpoint.state
    payload = {
        "version": VERSION,
        "settings": json.dumps(checkpoint.settings, sort_keys=True, default=str),
        "next_index": state.next_index,
        "pending": _masks_out(state.pending),
        "tracker": state.tracker,
        "book": state.book,
        "streams": dict(checkpoint.streams),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(folder / STATE, buffer.getvalue())


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder`` (``None`` when there is none); one line when it cannot be read."""
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("version") != VERSION:
            raise ValueError(f"version {payload.get('version')}, this grounded writes {VERSION}")
        state = TrackState(
            next_index=int(payload["next_index"]),
            pending=_masks_in(payload["pending"]),
            tracker=payload["tracker"],
            book=payload["book"],
        )
        return Checkpoint(json.loads(payload["settings"]), state, dict(payload["streams"]))
    except Exception as exc:  # a foreign or damaged file: say so in one line
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(
            f"cannot read the checkpoint {path} ({reason}); use --overwrite to start over"
        ) from None


class CheckpointWriter:
    """The :class:`~grounded.tasks.track.Checkpoints` of a files run: due every ``every`` seconds (0: at
    every key-frame segment); a save syncs the ``streams`` and replaces ``state.pt``."""

    def __init__(
        self, folder: Path, settings: dict[str, Any], streams: Mapping[str, Stream], every: float
    ) -> None:
        self.folder, self.settings, self.streams, self.every = folder, settings, streams, every
        self.last = time.monotonic()
        self.saved = 0

    def due(self, index: int) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(self, state: TrackState) -> None:
        lengths = {name: stream.mark() for name, stream in self.streams.items()}
        save_checkpoint(self.folder, Checkpoint(self.settings, state, lengths))
        self.last = time.monotonic()
        self.saved += 1


def detections_line(det: Detections) -> str:
    """One frame's detections as one exact JSON line (float32 values written in full, RLE masks)."""
    record: dict[str, Any] = {
        "boxes": det.boxes.detach().float().cpu().tolist(),
        "scores": det.scores.detach().float().cpu().tolist(),
        "class_ids": det.class_ids.tolist(),
        "phrases": list(det.phrases),
        "track_ids": None if det.track_ids is None else det.track_ids.tolist(),
        "masks": [r["counts"] for r in det.rles()] if det.has_masks else None,
        "mask_scores": None if det.mask_scores is None else det.mask_scores.detach().float().cpu().tolist(),
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def detections_from_line(line: str, classes: tuple[str, ...], size: tuple[int, int]) -> Detections:
    """The :class:`Detections` a :func:`detections_line` was written from."""
    record = json.loads(line)
    n = len(record["scores"])
    det = Detections(
        boxes=torch.tensor(record["boxes"], dtype=torch.float32).reshape(n, 4),
        scores=torch.tensor(record["scores"], dtype=torch.float32),
        class_ids=torch.tensor(record["class_ids"], dtype=torch.int64),
        classes=classes,
        phrases=tuple(record["phrases"]),
        image_size=size,
        track_ids=None
        if record["track_ids"] is None
        else torch.tensor(record["track_ids"], dtype=torch.int64),
    )
    scores = record["mask_scores"]
    if record["masks"] is not None:
        rles = [{"size": list(size), "counts": c} for c in record["masks"]]
        det = det.with_mask_rles(rles, None if scores is None else torch.tensor(scores, dtype=torch.float32))
    return det
