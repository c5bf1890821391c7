"""Which files a job may write into its output folder: its results carry the settings they were made with.

Every result file of ``segment`` / ``run`` / ``granularity`` records the job's settings (the prompt or
prompts, the pipeline with its model ids and thresholds: what changes the results) under the key
:data:`MARKER`, in the JSON document or in a PNG text chunk. Before any model is loaded, :func:`check_results`
looks at the files the job would write: a result of the same settings may be replaced, a result of other
settings or a file grounded did not write is refused with one line naming it, unless ``overwrite``. An image
JSON without recorded settings (written by an earlier grounded version) counts as a result of the same settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grounded.core.errors import UserError

__all__ = ["MARKER", "NAME_MAX", "check_results", "fit_name", "normalized", "pipeline_settings", "recorded"]

#: the JSON key / PNG text key holding a result's settings
MARKER = "grounded"
#: bytes in a file name on common file systems (ext4, XFS, APFS, NTFS in UTF-16 units)
NAME_MAX = 255
_NOT_FINGERPRINTED = ("batch_size", "device")  # may change between a run and its resume
_LEGACY = "legacy"  # a result written before settings were recorded


def pipeline_settings(pipeline: Any) -> dict[str, Any]:
    """The pipeline's description (nodes, models, parameters, edges) without what may change between a run
    and its resume (batch size, device)."""
    spec = pipeline.to_dict()
    for node in spec["nodes"].values():
        for key in _NOT_FINGERPRINTED:
            node["params"].pop(key, None)
    return normalized(spec)


def normalized(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as read back from a file (tuples as lists, paths as strings), so that it compares equal."""
    return dict(json.loads(json.dumps(settings, sort_keys=True, default=str)))


def fit_name(name: str, suffix_bytes: int) -> str:
    """``name`` itself, or (when ``name`` plus the longest suffix it gets would exceed :data:`NAME_MAX` bytes)
    its start and a hash of the whole: the same name gives the same short name."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) + suffix_bytes <= NAME_MAX:
        return name
    digest = hashlib.blake2b(encoded, digest_size=4).hexdigest()
    keep = encoded[: NAME_MAX - suffix_bytes - len(digest) - 1].decode("utf-8", "ignore")
    return f"{keep}~{digest}"


def recorded(path: Path) -> dict[str, Any] | str | None:
    """The settings recorded in result file ``path``; :data:`_LEGACY` for an image JSON of a grounded version
    that did not record them; ``None`` when ``path`` is not a grounded result (or is unreadable)."""
    from PIL import Image

    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as png:
                text = png.info.get(MARKER)
            return json.loads(text) if isinstance(text, str) else None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # SyntaxError: some broken PNGs
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get(MARKER), dict):
        return dict(doc[MARKER])
    image = doc.get("image")
    return _LEGACY if isinstance(image, dict) and "file_name" in image else None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def check_results(
    targets: Iterable[Path], settings: Mapping[str, Any] | None, *, overwrite: bool = False
) -> dict[Path, str]:
    """Check the files a job would write before it runs; returns ``{path: "same" | "legacy" | "other"}`` for
    those that exist ("other": other settings or not a result, kept only when ``overwrite``).

    Without ``overwrite`` a file that is not a result of these ``settings`` (or of a grounded version that
    did not record settings) is refused with a :class:`~grounded.core.errors.UserError` naming it;
    ``settings=None`` (a job whose outputs carry no settings, such as ``edit``) refuses every existing file.
    """
    found: dict[Path, str] = {}
    for path in targets:
        try:
            if not path.exists():
                continue
        except OSError:  # a name too long for the file system: the write reports it for that image
            continue
        old = recorded(path) if settings is not None and path.is_file() else None
        if old is not None and old in (_LEGACY, settings):
            found[path] = "legacy" if old == _LEGACY else "same"
            continue
        found[path] = "other"
        if overwrite:
            continue
        if isinstance(old, dict) and settings is not None:
            changed = _differences(old, settings)
            shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
            raise UserError(
                f"{path} holds results of a run with other settings ({shown} differ{'s' if len(changed) == 1 else ''}); rerun "
                "with the same options, choose another --out, or pass --overwrite to replace them"
            )
        raise UserError(
            f"{path} already exists and is not a result of this grounded job; choose another output, "
            "or pass --overwrite to replace it"
        )
    return found
