"""``grounded segment`` / ``grounded run`` on files: images in, result files out, in batches, resumable."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from grounded.core.errors import UserError

__all__ = ["SegmentSummary", "check_no_overwrite", "finished", "output_names", "segment_files"]


class SegmentSummary(NamedTuple):
    """What :func:`segment_files` did."""

    processed: int
    detections: int
    failures: list[str]  #: one line per image that could not be read
    skipped: int  #: images a previous run had completed


def output_names(stems: Sequence[str]) -> list[str]:
    """Unique output names; ``x_labels`` is renamed when ``x`` is there too (``x_labels.png`` is taken)."""
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
    return names


def check_no_overwrite(images: Sequence[Path], names: Sequence[str], out: Path) -> None:
    """Refuse outputs that would replace an input image (e.g. ``--out`` set to the input folder)."""
    inputs = {p.resolve() for p in images if p.exists()}
    for name in names:
        for target in (out / f"{name}.png", out / f"{name}_labels.png", out / f"{name}.json"):
            if target.resolve() in inputs:
                raise UserError(f"output {target} would overwrite an input image; choose another --out")


def finished(json_path: Path, image_path: Path) -> bool:
    """Whether a previous run completed this image (its JSON, written last, names this file)."""
    try:
        return bool(json.loads(json_path.read_text())["image"]["file_name"] == image_path.name)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def segment_files(
    pipeline: Any,
    images: Sequence[Path],
    prompt: str,
    out: Path,
    *,
    format: str = "files",
    batch_size: int | None = None,
    quiet: bool = False,
    skip_existing: bool = False,
) -> SegmentSummary:
    """Run the pipeline over the images in batches, writing results as each batch completes.

    ``format="files"``: ``NAME.json``, ``NAME.png``, ``NAME_labels.png`` per image; ``"coco"``: one
    ``coco.json``. A bad image is reported on stderr and the others still complete.
    """
    from tqdm import tqdm

    from grounded.core.images import ImageLoadError, LoadedImage, load_image
    from grounded.core.prompts import Prompt
    from grounded.tasks.export import CocoWriter, write_image_results

    parsed = Prompt.of(prompt)
    pipeline.validate()
    names = output_names([p.stem for p in images])
    if format == "files":
        check_no_overwrite(images, names, out)
    out.mkdir(parents=True, exist_ok=True)
    todo = list(zip(images, names, strict=True))
    if skip_existing:
        if format != "files":
            raise UserError("--skip-existing works with --format files (one JSON per image)")
        todo = [(path, name) for path, name in todo if not finished(out / f"{name}.json", path)]
    coco = CocoWriter() if format == "coco" else None
    batch_size = batch_size or 4
    failures: list[str] = []
    total_detections = 0
    progress = tqdm(total=len(todo), unit="img", disable=quiet or None, file=sys.stderr)
    if todo:
        pipeline.warm_up()
    for start in range(0, len(todo), batch_size):
        batch: list[tuple[str, LoadedImage]] = []
        for path, name in todo[start : start + batch_size]:
            try:
                batch.append((name, load_image(path)))
            except ImageLoadError as exc:
                failures.append(str(exc))
                progress.write(f"grounded: error: {exc}", file=sys.stderr)
                progress.update(1)
        if not batch:
            continue
        detections = pipeline.run(images=[im for _, im in batch], prompt=parsed)["detections"]
        for (name, image), det in zip(batch, detections, strict=True):
            total_detections += len(det)
            if coco is not None:
                coco.add(image, det)
            else:
                write_image_results(out, name, image, det)
            progress.update(1)
    progress.close()
    if coco is not None:
        coco.write(out / "coco.json")
    return SegmentSummary(len(todo) - len(failures), total_detections, failures, len(images) - len(todo))
