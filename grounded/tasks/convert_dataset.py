"""``grounded convert-dataset``: a COCO dataset (or a run's ``coco.json``) rewritten as COCO, YOLO, VOC or
Label Studio tasks by the writers of :mod:`grounded.tasks.datasets`, so older exports get today's layout and
conventions.

The input is a COCO instances file, or a folder with ``annotations/instances_<subset>.json`` (each subset
becomes a split). Images are looked for in ``--images``, else ``images/<subset>/``, ``images/`` and the
file's own folder; each must have the size its COCO entry records once its EXIF rotation is applied (the
size the masks were drawn at). Polygon and RLE masks are both read (by pycocotools); annotations without a
mask are left out and counted. Scores, mask scores and phrases are taken from ``attributes`` or from
top-level fields.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from grounded.core.errors import UserError

__all__ = ["ConvertedDataset", "convert_dataset", "read_coco"]


class ConvertedDataset(NamedTuple):
    """What :func:`convert_dataset` did."""

    images: int  #: images written
    skipped: int  #: annotations without a mask, left out
    report: dict[str, Any]  #: the validation summary of each format


def _coco_files(source: Path) -> list[tuple[str, Path]]:
    if source.is_file():
        stem = source.stem
        return [(stem.split("_", 1)[1] if stem.startswith("instances_") else "train", source)]
    if source.is_dir():
        found = sorted((source / "annotations").glob("instances_*.json"))
        if found:
            return [(p.stem.split("_", 1)[1], p) for p in found]
    raise UserError(f"{source}: no COCO file (give a .json, or a folder with annotations/instances_*.json)")


def _image_folders(source: Path, coco_file: Path, subset: str, images: Path | None) -> list[Path]:
    if images is not None:
        return [images]
    root = source if source.is_dir() else coco_file.parent
    return [root / "images" / subset, root / "images", coco_file.parent]


def _displayed_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
        width, height = im.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


def read_coco(
    source: Path, images: Path | None = None
) -> tuple[list[dict[str, Any]], list[str], dict[str, str], dict[str, Path], int]:
    """Records, categories, split assignment and image files of a COCO dataset; the last value is the number
    of annotations left out for having no mask."""
    from pycocotools.coco import COCO

    from grounded.core.rle import annotation_rle, rle_to_json

    records: list[dict[str, Any]] = []
    assignment: dict[str, str] = {}
    sources: dict[str, Path] = {}
    categories: list[str] = []
    skipped = 0
    files = _coco_files(Path(source))
    for subset, coco_file in files:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(str(coco_file))
        except Exception as exc:
            raise UserError(
                f"{coco_file}: not a COCO file ({type(exc).__name__}: {exc})".splitlines()[0]
            ) from None
        names = {int(c["id"]): str(c["name"]) for c in coco.dataset.get("categories", [])}
        for cid in sorted(names):
            if names[cid] not in categories:
                categories.append(names[cid])
        folders = _image_folders(Path(source), coco_file, subset, images)
        for image_id in sorted(coco.imgs):
            info = coco.imgs[image_id]
            file_name = str(info["file_name"])
            path = next((f / file_name for f in folders if (f / file_name).is_file()), None)
            if path is None:
                raise UserError(
                    f"{coco_file}: image {file_name!r} not found in {', '.join(map(str, folders))}"
                )
            height, width = int(info["height"]), int(info["width"])
            if _displayed_size(path) != (width, height):
                raise UserError(
                    f"{path}: {_displayed_size(path)[0]}x{_displayed_size(path)[1]} pixels once rotated by its "
                    f"EXIF orientation, but {coco_file.name} records {width}x{height}"
                )
            key = f"{subset}/{file_name}"
            annotations = []
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
                if not ann.get("segmentation"):
                    skipped += 1
                    continue
                if int(ann["category_id"]) not in names:
                    raise UserError(
                        f"{coco_file}: annotation {ann.get('id')} has unknown category {ann['category_id']}"
                    )
                attrs = dict(ann.get("attributes") or {})
                out: dict[str, Any] = {
                    "category": names[int(ann["category_id"])],
                    "segmentation": rle_to_json(annotation_rle(ann["segmentation"], height, width)),
                    "score": float(attrs.get("score", ann.get("score", 1.0))),
                    "phrase": str(attrs.get("phrase", ann.get("phrase", names[int(ann["category_id"])]))),
                }
                mask_score = attrs.get("mask_score", ann.get("mask_score"))
                if mask_score is not None:
                    out["mask_score"] = float(mask_score)
                annotations.append(out)
            records.append({"file": key, "height": height, "width": width, "annotations": annotations})
            assignment[key] = subset
            sources[key] = path
    plain = [r["file"].split("/", 1)[1] for r in records]
    if len(set(plain)) == len(plain):  # file names unique across the subsets: keys without the subset
        for rec, key in zip(records, plain, strict=True):
            assignment[key] = assignment.pop(rec["file"])
            sources[key] = sources.pop(rec["file"])
            rec["file"] = key
    records.sort(key=lambda r: r["file"])
    return records, categories, assignment, sources, skipped


def convert_dataset(
    source: Path,
    out: Path,
    formats: Sequence[str],
    *,
    images: Path | None = None,
    rle: bool = False,
    link: bool = False,
) -> ConvertedDataset:
    """Read the COCO dataset ``source`` and write ``formats`` into ``out/<format>/`` (validated)."""
    from grounded.core.files import OutputFolder, atomic_write_text, compact_json
    from grounded.tasks.annotate import name_records
    from grounded.tasks.datasets import export_records

    records, categories, assignment, sources, skipped = read_coco(Path(source), images)
    resolved = Path(source).resolve()
    for fmt in formats:
        target = (Path(out) / fmt).resolve()
        if resolved == target or target in resolved.parents:
            raise UserError(f"{out / fmt} holds the input {source}; write to another --out")
    name_records(records)
    with OutputFolder(out):
        report = export_records(
            Path(out), records, categories, formats, sources, assignment, rle=rle, link=link
        )
        atomic_write_text(Path(out) / "validation.json", compact_json(report))
    return ConvertedDataset(len(records), skipped, report)
