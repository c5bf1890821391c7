"""One auto-annotation job: open (or resume) the manifest, run the pending chunks on the local or the Ray
engine, then write and validate the datasets from the manifest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from grounded.core.errors import UserError

__all__ = ["ENGINES", "AnnotateRun", "annotate"]

ENGINES = ("local", "ray")


class AnnotateRun(NamedTuple):
    """What :func:`annotate` did."""

    committed: int  #: images annotated (or failed) by this run
    resumed: int  #: images a previous run had annotated
    report: dict[str, Any]  #: the validation summary of each format, and the ``failed`` images


def annotate(
    out: Path,
    files: dict[str, Path],
    pipeline: Any,
    ontology: Any,
    formats: Sequence[str] = ("coco",),
    *,
    engine: str = "local",
    batch_size: int = 4,
    workers: int = 2,
    quiet: bool = False,
    rle: bool = False,
    link: bool = False,
    val_fraction: float = 0.0,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    device: str | None = None,
) -> AnnotateRun:
    """Annotate ``files`` (key -> image, e.g. from :func:`~grounded.tasks.annotate.collect_images`) into the
    dataset folder ``out``, resuming from ``OUT/manifest.sqlite``; ``pipeline`` and ``ontology`` as
    :func:`~grounded.tasks.annotate.build_annotator` makes them."""
    from grounded.core.files import OutputFolder
    from grounded.tasks.annotate import annotate_local, export_datasets, run_settings
    from grounded.tasks.manifest import Manifest, ManifestError

    if engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    with OutputFolder(out):  # refused before any model is loaded unless it is a writable folder
        try:
            manifest = Manifest(out, run_settings(pipeline, ontology))
        except ManifestError as exc:
            raise UserError(str(exc)) from None
        with manifest:
            resumed = sum(1 for s in manifest.status().values() if s == "done")
            if engine == "ray":
                from grounded.tasks.annotate_ray import annotate_ray

                committed = annotate_ray(
                    pipeline,
                    ontology,
                    manifest,
                    files,
                    batch_size=batch_size,
                    quiet=quiet,
                    address=ray_address,
                    actors=ray_actors,
                    device=device,
                )
            else:
                committed = annotate_local(
                    pipeline, ontology, manifest, files, batch_size=batch_size, workers=workers, quiet=quiet
                )
            report = export_datasets(
                out, manifest, files, ontology, formats, rle=rle, val_fraction=val_fraction, link=link
            )
        return AnnotateRun(committed, resumed, report)
