"""``grounded segment`` / ``grounded run`` on files: images in, result files out, in batches, resumable."""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from grounded.core.checks import batches
from grounded.core.errors import UserError
from grounded.core.prompts import Prompt
from grounded.tasks.outputs import check_results, fit_name, normalized, pipeline_settings

if TYPE_CHECKING:
    from grounded.core.files import OutputFolder

__all__ = [
    "SegmentSummary",
    "check_no_overwrite",
    "finished",
    "output_names",
    "run_settings",
    "segment_files",
]

_LONGEST_SUFFIX = "_labels.png"


class SegmentSummary(NamedTuple):
    """What :func:`segment_files` did."""

    processed: int
    detections: int
    failures: list[str]  #: one line per image that could not be read
    skipped: int  #: images a previous run had completed


def output_names(stems: Sequence[str]) -> list[str]:
    """Unique output names; ``x_labels`` is renamed when ``x`` is there too (``x_labels.png`` is taken); a name
    too long for the file system once suffixed is shortened (its start and a hash of the whole)."""
    from grounded.core.images import unique_names

    names = unique_names(stems)
    taken = {n.lower() for n in names}
    for i, name in enumerate(names):
        if name.lower().endswith("_labels") and name[: -len("_labels")].lower() in taken:
            k = 1
            while f"{name}_{k}".lower() in taken:
                k += 1
            names[i] = f"{name}_{k}"
            taken.add(names[i].lower())
    return [fit_name(name, len(_LONGEST_SUFFIX)) for name in names]


def check_no_overwrite(images: Sequence[Path], names: Sequence[str], out: Path) -> None:
    """Refuse outputs that would replace an input image (e.g. ``--out`` set to the input folder)."""
    inputs = {p.resolve() for p in images if p.exists()}
    for name in names:
        for target in _targets(out, name):
            if target.resolve() in inputs:
                raise UserError(f"output {target} would overwrite an input image; choose another --out")


def _targets(out: Path, name: str) -> tuple[Path, Path, Path]:
    return out / f"{name}.png", out / f"{name}{_LONGEST_SUFFIX}", out / f"{name}.json"


def finished(json_path: Path, image_path: Path) -> bool:
    """Whether a previous run completed this image (its JSON, written last, names this file)."""
    try:
        return bool(json.loads(json_path.read_text())["image"]["file_name"] == image_path.name)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_settings(pipeline: Any, prompt: Prompt, format: str) -> dict[str, Any]:
    """What decides a run's results (recorded in each result file; a resume must match it)."""
    return normalized(
        {
            "job": "segment",
            "format": format,
            "prompt": list(prompt.classes),
            "pipeline": pipeline_settings(pipeline),
        }
    )


def segment_files(
    pipeline: Any,
    images: Sequence[Path],
    prompt: str,
    out: Path | OutputFolder,
    *,
    format: str = "files",
    batch_size: int | None = None,
    quiet: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
) -> SegmentSummary:
    """Run the pipeline over the images in batches, writing results as each batch completes.

    ``format="files"``: ``NAME.json``, ``NAME.png``, ``NAME_labels.png`` per image; ``"coco"``: one
    ``coco.json``. A bad image is reported on stderr and the others still complete. ``out`` is prepared as
    an :class:`~grounded.core.files.OutputFolder`; files there that this job's results would replace must be
    results of the same settings (:func:`~grounded.tasks.outputs.check_results`) unless ``overwrite``.
    """
    from grounded.core.files import open_folder

    parsed = Prompt.of(prompt)
    pipeline.validate()
    if skip_existing and format != "files":
        raise UserError("--skip-existing works with --format files (one JSON per image)")
    names = output_names([p.stem for p in images])
    with open_folder(out) as folder:
        if format == "files":
            check_no_overwrite(images, names, folder.path)
            targets = [t for name in names for t in _targets(folder.path, name)]
        else:
            targets = [folder.path / "coco.json"]
        settings = run_settings(pipeline, parsed, format)
        found = check_results(targets, settings, overwrite=overwrite)
        todo = list(zip(images, names, strict=True))
        if skip_existing:
            todo = [
                (path, name)
                for path, name in todo
                if found.get(json_path := folder.path / f"{name}.json") not in ("same", "legacy")
                or not finished(json_path, path)
            ]
        return _run(
            pipeline, parsed, todo, folder.path, settings, format, batch_size or 4, quiet, len(images)
        )


def _run(
    pipeline: Any,
    prompt: Prompt,
    todo: list[tuple[Path, str]],
    out: Path,
    settings: dict[str, Any],
    format: str,
    batch_size: int,
    quiet: bool,
    total: int,
) -> SegmentSummary:
    from tqdm import tqdm

    from grounded.core.images import ImageLoadError, LoadedImage, load_image
    from grounded.tasks.export import CocoWriter, write_image_results

    coco = CocoWriter() if format == "coco" else None
    failures: list[str] = []
    total_detections = 0
    progress = tqdm(total=len(todo), unit="img", disable=quiet or None, file=sys.stderr)

    def fail(message: str) -> None:
        failures.append(message)
        progress.write(f"grounded: error: {message}", file=sys.stderr)

    if todo:
        pipeline.warm_up()
    for chunk in batches(todo, batch_size):
        batch: list[tuple[Path, str, LoadedImage]] = []
        for path, name in chunk:
            try:
                batch.append((path, name, load_image(path)))
            except ImageLoadError as exc:
                fail(str(exc))
                progress.update(1)
        if not batch:
            continue
        detections = pipeline.run(images=[im for _, _, im in batch], prompt=prompt)["detections"]
        for (path, name, image), det in zip(batch, detections, strict=True):
            total_detections += len(det)
            if coco is not None:
                coco.add(image, det)
            else:
                try:
                    write_image_results(out, name, image, det, settings)
                except OSError as exc:
                    if exc.errno != errno.ENAMETOOLONG:
                        raise
                    total_detections -= len(det)
                    fail(f"{path}: output name {name!r} is too long for the file system of {out}")
            progress.update(1)
    progress.close()
    if coco is not None:
        coco.write(out / "coco.json", settings)
    return SegmentSummary(len(todo) - len(failures), total_detections, failures, total - len(todo))
