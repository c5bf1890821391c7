"""Auto-annotation: image folders in, labelled datasets out (COCO, YOLO segmentation, Pascal VOC, Label Studio).

The classes come from a fixed ontology (``"person, dog"`` or ``"car: automobile, sedan; person"``) or from a
tagger (each image's caption's noun phrases, or its RAM tags). The images run in chunks of the sorted file
list; each image's outcome is committed to a :class:`~grounded.tasks.manifest.Manifest` as soon as it is
known, so a run resumes where it stopped, and the dataset files are written from the manifest at the end,
identical to those of an uninterrupted run. This module holds the parts both engines share and the local
engine; :mod:`grounded.tasks.annotate_ray` runs the same chunks on Ray Data actors, and
:mod:`grounded.tasks.annotate_job` runs a whole job with either.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grounded.core.checks import batches
from grounded.core.errors import UserError

if TYPE_CHECKING:
    from grounded.core.ontology import Ontology
    from grounded.engine import Pipeline

__all__ = [
    "IMAGE_SUFFIXES",
    "LIST_SUFFIXES",
    "Outcome",
    "annotate_local",
    "build_annotator",
    "collect_images",
    "commit_outcome",
    "export_datasets",
    "name_records",
    "pending_chunks",
    "progress_bar",
    "read_image_list",
    "run_chunk",
    "run_settings",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
LIST_SUFFIXES = frozenset({".parquet", ".jsonl"})
_log = logging.getLogger(__name__)
# One image's outcome: its key, its result (or the one-line error) and the line to print for an error.
Outcome = tuple[str, dict[str, Any] | str, str | None]


# ---------------------------------------------------------------------- inputs
def collect_images(inputs: Sequence[Path], exclude: Path | None = None) -> dict[str, Path]:
    """Key (path relative to its folder, or the file name) → file, sorted by key; ``exclude`` is skipped."""
    found: dict[str, Path] = {}
    skip = exclude.resolve() if exclude is not None else None

    def add(key: str, path: Path) -> None:
        if key in found and found[key] != path:
            raise UserError(f"two inputs have the same name {key!r}: {found[key]} and {path}")
        found[key] = path

    for item in inputs:
        if item.is_dir():
            for path in _folder_images(item):
                if skip is None or not Path(os.path.realpath(path)).is_relative_to(skip):
                    add(path.relative_to(item).as_posix(), path)
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            for key, path in read_image_list(item):
                add(key, path)
        elif item.exists() or item.suffix.lower() in IMAGE_SUFFIXES:
            add(item.name, item)  # a missing file is kept: it is reported as a failed image
        else:
            raise UserError(f"{item}: no such folder, image file or .parquet/.jsonl list")
    return dict(sorted(found.items()))


def _folder_images(folder: Path) -> list[Path]:
    """The image files under ``folder``, hidden names skipped; symlinked folders are not followed (so a link
    loop cannot recurse), and a broken or looping link or a non-regular file (FIFO, device) is skipped with a
    warning naming it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                _log.warning("%s: skipped (%s)", path, reason)
                continue
            if not stat.S_ISREG(mode):
                _log.warning("%s: skipped (not a regular file)", path)
                continue
            found.append(path)
    return found


def _list_entry(base: Path, path: str, key: str | None) -> tuple[str, Path]:
    """A list entry's key and file: ``key`` as given, else the path relative to the list's folder
    (or the file name when the path lies outside it)."""
    file = Path(path)
    # normalised, not resolved: "sub/../a.png" is "a.png", and a symlink keeps its own name
    resolved = Path(os.path.normpath(file if file.is_absolute() else base / file))
    if key is None:
        rel = Path(os.path.relpath(os.path.abspath(resolved), os.path.abspath(base)))
        key = file.name if rel.parts[:1] == ("..",) else rel.as_posix()
    return key, resolved


def read_image_list(list_file: Path) -> list[tuple[str, Path]]:
    """``(key, path)`` of each image named by a ``.parquet`` (column ``path``, optional ``key``) or ``.jsonl``
    (one object a line with ``path`` and optionally ``key``) list; relative paths resolve against its folder."""
    base = list_file.parent
    rows: list[tuple[Any, Any]] = []
    if list_file.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(
                f"{list_file}: reading Parquet lists needs pyarrow (pip install pyarrow)"
            ) from None
        try:
            table = pq.read_table(list_file)
        except Exception as exc:
            raise UserError(f"{list_file}: not a readable Parquet file ({exc})".splitlines()[0]) from None
        if "path" not in table.column_names:
            raise UserError(
                f"{list_file}: a list of images needs a 'path' column; it has {', '.join(table.column_names)}"
            )
        paths = table.column("path").to_pylist()
        keys = table.column("key").to_pylist() if "key" in table.column_names else [None] * len(paths)
        rows = list(zip(paths, keys, strict=True))
    else:
        with list_file.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{list_file}:{number}: not JSON ({exc.msg})") from None
                if not isinstance(entry, dict) or "path" not in entry:
                    raise UserError(
                        f'{list_file}:{number}: each line needs a \'path\' field, like {{"path": "a.jpg"}}'
                    )
                rows.append((entry["path"], entry.get("key")))
    out = []
    for i, (path, key) in enumerate(rows):
        if not isinstance(path, str) or not path:
            raise UserError(f"{list_file}: entry {i}: 'path' must be a non-empty string, got {path!r}")
        if "://" in path:
            raise UserError(
                f"{list_file}: entry {i}: {path!r} is a URL; only local (or mounted) paths are read for now"
            )
        if key is not None and (
            not isinstance(key, str) or not key or key.startswith("/") or ".." in key.split("/")
        ):
            raise UserError(
                f"{list_file}: entry {i}: 'key' must be a relative name like 'a/b.jpg', got {key!r}"
            )
        out.append(_list_entry(base, path, key))
    return out


# ---------------------------------------------------------------------- the pipeline
def build_annotator(
    classes: str | None = None,
    tagger: str | None = None,
    *,
    pipeline: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
) -> tuple[Pipeline, Ontology | None]:
    """The pipeline and the ontology (``None`` with a tagger) for the ontology ``classes`` (text or a file) or
    the ``tagger`` (``blip``, ``ram``); ``pipeline`` defaults to ``grounded_sam`` / ``TAGGER_grounded_sam``."""
    from grounded.core.ontology import Ontology
    from grounded.tasks.segment import build_pipeline

    ontology = Ontology.load(classes) if classes is not None else None
    name = pipeline or ("grounded_sam" if ontology is not None else f"{tagger}_grounded_sam")
    built = build_pipeline(name, overrides=overrides, shared=shared)
    if ontology is not None and "prompt" not in built.inputs:
        raise UserError(f"pipeline {built.name!r} takes no prompt input, so --classes cannot feed it")
    if ontology is None and ("tags" not in built.outputs or "prompt" in built.inputs):
        raise UserError(f"pipeline {built.name!r} has no tagger (a 'tags' output and no 'prompt' input)")
    return built, ontology


def run_settings(pipeline: Any, ontology: Any) -> dict[str, Any]:
    """What decides the results (stored in the manifest; a resume must match it)."""
    from grounded.tasks.outputs import pipeline_settings

    return {
        "pipeline": pipeline_settings(pipeline),
        "ontology": None if ontology is None else ontology.to_spec(),
    }


# ---------------------------------------------------------------------- one chunk
def _result(key: str, image: Any, det: Any, caption: str | None, tags: Any) -> dict[str, Any]:
    if not det.has_masks:
        raise UserError("the pipeline gives no masks; annotate needs a segmenter")
    annotations = []
    for rec in det.to_coco_records():
        ann = {k: rec[k] for k in ("category", "bbox", "score", "phrase", "segmentation", "area")}
        if "mask_score" in rec:
            ann["mask_score"] = rec["mask_score"]
        annotations.append(ann)
    height, width = image.size
    out: dict[str, Any] = {"file": key, "height": height, "width": width, "annotations": annotations}
    if caption is not None:
        out["caption"] = caption
        out["tags"] = list(tags.classes)
    return out


def _run_batch(pipeline: Any, ontology: Any, batch: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    images = [im for _, im in batch]
    if ontology is not None:
        outputs = pipeline.run(images=images, prompt=ontology.prompt())
        dets = [ontology.assign(d) for d in outputs["detections"]]
        captions: list[Any] = [None] * len(batch)
        tags: list[Any] = [None] * len(batch)
    else:
        outputs = pipeline.run(images=images)
        dets = outputs["detections"]
        tags = outputs["tags"]
        captions = outputs.get("captions") or [" . ".join(t.classes) for t in tags]
    return [
        _result(key, im, det, cap, tag)
        for (key, im), det, cap, tag in zip(batch, dets, captions, tags, strict=True)
    ]


def _decode(chunk: list[tuple[str, Path]]) -> list[tuple[str, Any]]:
    from grounded.core.images import ImageLoadError, load_image

    out: list[tuple[str, Any]] = []
    for key, path in chunk:
        try:
            out.append((key, load_image(path)))
        except ImageLoadError as exc:
            out.append((key, exc))
    return out


def run_chunk(pipeline: Any, ontology: Any, decoded: list[tuple[str, Any]]) -> list[Outcome]:
    """Every image's outcome for one decoded chunk (an exception in place of an image is its error).

    The images that decoded run as one batch; if that batch fails, one by one, so one bad image does not
    sink the others. Both engines call this with the same chunks, so they compute the same results.
    """
    outcomes: list[Outcome] = [(k, str(im), str(im)) for k, im in decoded if isinstance(im, Exception)]
    batch = [(k, im) for k, im in decoded if not isinstance(im, Exception)]
    if not batch:
        return outcomes
    try:
        results = _run_batch(pipeline, ontology, batch)
        outcomes.extend((key, res, None) for (key, _), res in zip(batch, results, strict=True))
    except UserError:
        raise
    except Exception:  # one bad image must not sink the batch: retry one by one
        for key, im in batch:
            try:
                outcomes.append((key, _run_batch(pipeline, ontology, [(key, im)])[0], None))
            except UserError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                outcomes.append((key, error, f"{key}: {error}"))
    return outcomes


def pending_chunks(files: dict[str, Path], status: dict[str, str], size: int) -> list[list[tuple[str, Path]]]:
    """The chunks ``files[i*size:(i+1)*size]`` (sorted file list) that hold an image without a done row.

    Chunks always run whole, so every image is computed in the same batch whether or not the run was
    interrupted before, and whichever engine runs it.
    """
    items = list(files.items())
    chunks = [list(c) for c in batches(items, size)]
    return [c for c in chunks if any(status.get(k) != "done" for k, _ in c)]


def commit_outcome(manifest: Any, progress: Any, outcome: Outcome) -> None:
    """Write one image's outcome to the manifest (printing its error) and advance the progress bar."""
    key, res, note = outcome
    if isinstance(res, str):
        manifest.commit_error(key, res)
        progress.write(f"grounded: error: {note or f'{key}: {res}'}", file=sys.stderr)
    else:
        manifest.commit_done(key, res)
    progress.update(1)


def progress_bar(total: int, quiet: bool) -> Any:
    """The tqdm bar of the images to annotate (on stderr; off with ``--quiet`` or when not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=quiet or None, file=sys.stderr, dynamic_ncols=True)


def annotate_local(
    pipeline: Any,
    ontology: Any,
    manifest: Any,
    files: dict[str, Path],
    *,
    batch_size: int = 4,
    workers: int = 2,
    quiet: bool = False,
) -> int:
    """Run every chunk that has an image without a done row in this process, ``workers`` threads decoding
    ahead; returns the number of images committed."""
    status = manifest.status()
    chunks = pending_chunks(files, status, batch_size)
    progress = progress_bar(sum(1 for c in chunks for k, _ in c if status.get(k) != "done"), quiet)
    committed = 0
    if chunks:
        pipeline.warm_up()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ahead: deque[Future[list[tuple[str, Any]]]] = deque()
        queue = iter(chunks)
        for chunk in queue:
            ahead.append(pool.submit(_decode, chunk))
            if len(ahead) > max(1, workers):
                break
        while ahead:
            decoded = ahead.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                ahead.append(pool.submit(_decode, nxt))
            for outcome in run_chunk(pipeline, ontology, decoded):
                if status.get(outcome[0]) != "done":
                    commit_outcome(manifest, progress, outcome)
                    committed += 1
    progress.close()
    return committed


# ---------------------------------------------------------------------- exports
def export_datasets(
    out: Path,
    manifest: Any,
    files: dict[str, Path],
    ontology: Any,
    formats: Sequence[str],
    rle: bool = False,
    val_fraction: float = 0.0,
    link: bool = False,
) -> dict[str, Any]:
    """Write and validate every requested format from the manifest; returns the validation summary."""
    from grounded.core.files import atomic_write_text, compact_json
    from grounded.tasks import datasets as dx

    records = [dict(r.result) for r in manifest.rows() if r.status == "done" and r.file in files]
    records.sort(key=lambda r: r["file"])
    name_records(records)
    if ontology is not None:
        categories = list(ontology.names)
    else:
        categories = sorted({a["category"] for r in records for a in r["annotations"]})
    assignment = dx.split_files([r["file"] for r in records], val_fraction)
    report = dx.export_records(out, records, categories, formats, files, assignment, rle=rle, link=link)
    errors = manifest.errors()
    report["failed"] = [{"file": f, "error": e} for f, e in errors if f in files]
    atomic_write_text(out / "validation.json", compact_json(report))
    return report


def name_records(records: list[dict[str, Any]]) -> None:
    """Give each record its dataset ``name``: its key without the suffix, ``/`` as ``__``, made unique."""
    from grounded.core.images import unique_names

    names = unique_names([Path(r["file"]).with_suffix("").as_posix().replace("/", "__") for r in records])
    for rec, name in zip(records, names, strict=True):
        rec["name"] = name
