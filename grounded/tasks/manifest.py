"""The run manifest of ``grounded annotate``: one SQLite file in the output folder, one row per image.

Each image's result (or its error) is committed in its own transaction as soon as it is known, with
``synchronous=FULL``, so a run stopped by Ctrl-C or ``kill -9`` loses at most the images in flight; the same
command then resumes with the images that have no row. The run's settings are stored with the first row: a
resume with other settings is refused rather than mixing two runs in one dataset. The dataset files are
written from the manifest alone, in file order, so they do not depend on how often a run was interrupted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_NAME", "Manifest", "ManifestError", "ManifestRow"]

MANIFEST_NAME = "manifest.sqlite"
_SCHEMA = 1


class ManifestError(Exception):
    """The manifest belongs to another run (other settings) or cannot be used."""


@dataclass(frozen=True)
class ManifestRow:
    """One image of the run: ``status`` is ``"done"`` (``result`` holds its annotations) or ``"error"``."""

    file: str
    status: str
    error: str | None
    result: dict[str, Any] | None


class Manifest:
    """Open (creating if needed) the manifest of the run in ``out_dir``."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]) -> None:
        self.path = Path(out_dir) / MANIFEST_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS images (file TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "error TEXT, result TEXT)"
        )
        wanted = json.dumps({"schema": _SCHEMA, **settings}, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('settings', ?)", (wanted,))
        elif row[0] != wanted:
            stored = json.loads(row[0])
            changed = sorted(
                k for k in set(stored) | set(json.loads(wanted)) if stored.get(k) != json.loads(wanted).get(k)
            )
            self._db.close()
            raise ManifestError(
                f"{self.path} was written by a run with other settings ({', '.join(changed)} differ); "
                "resume with the same options, or choose another --out (or delete the manifest to start over)"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def commit_done(self, file: str, result: dict[str, Any]) -> None:
        """Record one image's annotations (one transaction, durable when this returns)."""
        text = json.dumps(result, sort_keys=True, separators=(",", ":"), allow_nan=False)
        self._db.execute("INSERT OR REPLACE INTO images VALUES (?, 'done', NULL, ?)", (file, text))

    def commit_error(self, file: str, error: str) -> None:
        """Record that an image failed, with the one-line reason."""
        self._db.execute("INSERT OR REPLACE INTO images VALUES (?, 'error', ?, NULL)", (file, error))

    # ------------------------------------------------------------------ reading
    def status(self) -> dict[str, str]:
        """File → ``"done"`` or ``"error"`` for every image with a row."""
        return dict(self._db.execute("SELECT file, status FROM images").fetchall())

    def rows(self) -> Iterator[ManifestRow]:
        """Every row, in file order."""
        for file, status, error, result in self._db.execute(
            "SELECT file, status, error, result FROM images ORDER BY file"
        ):
            yield ManifestRow(file, status, error, None if result is None else json.loads(result))

    def errors(self) -> list[tuple[str, str]]:
        """``(file, error)`` of the images that failed."""
        return [(r.file, r.error or "") for r in self.rows() if r.status == "error"]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])
