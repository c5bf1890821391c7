"""Per-image cache of pipeline outputs in one SQLite file, so re-scoring is instant and killed runs resume.

Each entry is keyed on the image **content** (:attr:`grounded.core.images.LoadedImage.key`), the prompt's classes
and the pipeline's fingerprint (models and every parameter that changes outputs): a different image, prompt,
model or setting never hits a stale entry. A second table remembers each image file's content key by path,
size and modification time, so re-scoring a dataset does not decode its images again.

Writes are SQLite transactions (one per batch of images), so a run killed at any point leaves every finished
batch stored and nothing half-written; running the same command again resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PredictionCache", "entry_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (key TEXT PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, image_key TEXT NOT NULL
);
"""


def entry_key(fingerprint: str, image_key: str, classes: Sequence[str]) -> str:
    """The cache key of one image's predictions for one prompt and one pipeline."""
    text = json.dumps([fingerprint, image_key, list(classes)], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PredictionCache:
    """A SQLite file of per-image predictions (see the module docstring). Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30.0)
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def __enter__(self) -> PredictionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ predictions
    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT payload FROM predictions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        payload: dict[str, Any] = json.loads(zlib.decompress(row[0]).decode("utf-8"))
        return payload

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM predictions WHERE key = ?", (key,)).fetchone() is not None

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Store several entries in one transaction (all or none)."""
        rows = [
            (key, zlib.compress(json.dumps(value, separators=(",", ":")).encode("utf-8"), 6))
            for key, value in items
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO predictions (key, payload) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    # ------------------------------------------------------------------ file → content key
    def file_key(self, path: Path) -> str | None:
        """The content key remembered for this file, if its size and modification time are unchanged."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        row = self._db.execute(
            "SELECT image_key FROM files WHERE path = ? AND size = ? AND mtime_ns = ?",
            (str(Path(path).resolve()), st.st_size, st.st_mtime_ns),
        ).fetchone()
        return None if row is None else str(row[0])

    def remember_files(self, items: Iterable[tuple[Path, str]]) -> None:
        rows = []
        for path, key in items:
            try:
                st = os.stat(path)
            except OSError:
                continue
            rows.append((str(Path(path).resolve()), st.st_size, st.st_mtime_ns, key))
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO files (path, size, mtime_ns, image_key) VALUES (?, ?, ?, ?)", rows
            )
