"""Dataset exports: COCO instances, YOLO segmentation, Pascal VOC and Label Studio tasks, each in the layout
and conventions its reference tool reads.

Every writer takes per-image records (``file``, ``name``, ``height``, ``width``, ``annotations``: ``category``,
``segmentation`` as COCO RLE, ``score``, ``phrase``, optional ``mask_score``) in file order and writes
atomically, so the same records always give the same bytes (an interrupted and resumed ``grounded annotate``
writes what an uninterrupted one does). Each format is validated by reading it back.

Conventions (decided from the readers' own code; README "Datasets" lists the figures):

- **Images** are copied (hard-linked with ``link=True``) into each dataset, in the orientation the masks were
  computed in: a file with an EXIF rotation is written rotated (same format, the orientation tag dropped),
  so ``width``/``height`` match the pixels every reader loads, with or without EXIF handling.
- **Boxes** are the mask's extent (COCO ``[x, y, w, h]`` of the pixel squares; VOC 1-based inclusive), so an
  instance has the same box in every format. An instance whose mask is empty is left out of every format.
- **COCO** (datumaro's layout): ``images/<subset>/`` and ``annotations/instances_<subset>.json``; 1-based
  category ids. Masks are polygons with ``iscrowd: 0`` (what training loaders, ultralytics' converter and
  Label Studio's importer read), traced in pycocotools' pixel-corner convention (:mod:`grounded.core.polygons`):
  one polygon per part, a part's holes joined to its outer ring (pycocotools fills a polygon even-odd, so the
  hole stays open). ``rle=True`` writes the masks as RLE instead, with ``iscrowd: 1`` as the COCO format
  defines it (readers then treat them as crowd regions). ``score``, ``mask_score`` and ``phrase`` go in
  ``attributes`` (datumaro's convention), not as top-level fields.
- **YOLO segmentation** (ultralytics): ``data.yaml`` without a ``path`` key (ultralytics then takes the folder
  of ``data.yaml`` as the root, whatever the working directory), ``images/<split>/``, ``labels/<split>/``; one
  line per instance, vertices at pixel centres (ultralytics and supervision fill them with ``cv2.fillPoly``)
  plus 1/64 pixel, so that readers that truncate (ultralytics) and that round (supervision) land on the same
  pixel; the parts and holes of one instance are joined into one polygon by zero-width bridges, as
  ultralytics' ``merge_multi_segment`` does (a bridge across the background is drawn as a 1-pixel line).
- **Pascal VOC** (the VOC devkit and datumaro): ``JPEGImages/``, ``Annotations/NAME.xml`` (1-based boxes, and a
  ``<polygon>`` per object as supervision reads it), ``SegmentationClass/`` and ``SegmentationObject/``
  palette PNGs, ``ImageSets/Main`` and ``ImageSets/Segmentation`` split lists, ``labelmap.txt`` naming every
  class (so readers do not fall back to VOC's 20 classes). VOC's PNGs hold one label a pixel: where masks
  overlap, the higher score wins.
- **Label Studio**: ``tasks.json`` (tasks with ``predictions``: one brush region a mask, label-studio-sdk's
  RLE), ``label_config.xml`` and ``images/``; :func:`grounded.core.label_studio.label_studio_regions` makes the
  regions.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageOps

from grounded.core.files import JsonText, atomic_write_bytes, atomic_write_text, compact_json, temp_path
from grounded.core.polygons import mask_polygons
from grounded.core.rle import annotation_rle, decode_rle

__all__ = [
    "FORMATS",
    "YOLO_OFFSET",
    "coco_polygons",
    "coco_polygons_json",
    "export_records",
    "mask_box",
    "mask_iou",
    "place_image",
    "polygons_to_mask",
    "rle_box",
    "split_files",
    "validate_coco",
    "validate_label_studio",
    "validate_voc",
    "validate_yolo",
    "voc_palette",
    "write_coco",
    "write_label_studio",
    "write_voc",
    "write_yolo",
    "yolo_polygon",
]

FORMATS = ("coco", "yolo", "voc", "label-studio")
Record = Mapping[str, Any]  # one image: file, name, height, width, annotations [...]
#: added to YOLO vertices (in pixels): truncating and rounding readers both land on the vertex's pixel
YOLO_OFFSET = 1 / 64
_ATTRIBUTES = ("score", "mask_score", "phrase")


# ---------------------------------------------------------------------- geometry
def coco_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO ``segmentation`` polygons of a mask (pixel-corner convention, one polygon per part with its holes
    joined in), as flat ``[x0, y0, x1, y1, ...]`` lists; a part of fewer than 3 vertices is padded by
    repeating its vertices (pycocotools fills it all the same)."""
    out = []
    for poly in mask_polygons(mask, "corner", join="holes"):
        flat = np.round(poly, 2).reshape(-1).tolist()  # quarter pixels: exact in 2 decimals
        while len(flat) < 6:
            flat += flat[:2]
        out.append(flat)
    return out


def coco_polygons_json(mask: np.ndarray) -> str:
    """:func:`coco_polygons` as the JSON text ``json.dumps`` writes of it (the same characters), each quarter-pixel
    coordinate's text looked up instead of formatted."""
    polygons = mask_polygons(mask, "corner", join="holes")
    if not polygons:
        return "[]"
    flat = np.concatenate(polygons).reshape(-1)
    quarters = np.rint(flat * 4)
    if quarters.min() < 0 or not np.array_equal(quarters / 4, flat):  # not quarter pixels (none are)
        return json.dumps(coco_polygons(mask), separators=(",", ":"))
    words = _quarter_words(int(quarters.max()) + 1)[quarters.astype(np.intp)].tolist()
    texts = []
    start = 0
    for poly in polygons:
        end = start + 2 * len(poly)
        part = words[start:end]
        while len(part) < 6:  # as coco_polygons pads a part of fewer than 3 vertices
            part += part[:2]
        texts.append("[" + ",".join(part) + "]")
        start = end
    return "[" + ",".join(texts) + "]"


@functools.lru_cache(maxsize=4)
def _quarter_table(size: int) -> np.ndarray:
    return np.array([repr(k / 4) for k in range(size)], dtype=object)


def _quarter_words(count: int) -> np.ndarray:
    """``repr`` (what ``json`` writes) of ``k / 4`` for ``k`` in ``0 .. count - 1`` at least (cached by power of 2)."""
    return _quarter_table(1 << max(10, (count - 1).bit_length()))


def yolo_polygon(mask: np.ndarray) -> np.ndarray:
    """The ``(N, 2)`` YOLO polygon of a mask: every part and hole joined, pixel-centre vertices."""
    polys = mask_polygons(mask, "centre", join="all")
    return polys[0] if polys else np.zeros((0, 2))


def mask_box(mask: np.ndarray) -> list[float]:
    """``[x, y, w, h]`` of the pixel squares a mask covers (COCO's box of the mask)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def rle_box(rle: Mapping[str, Any]) -> list[float]:
    """:func:`mask_box` of a COCO RLE, without decoding it (pycocotools' ``toBbox``)."""
    from pycocotools import mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(annotation_rle(dict(rle), *rle["size"]))]


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (union, as ``pycocotools`` does for ``annToMask``)."""
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    return decode_rle(annotation_rle([list(map(float, p)) for p in polygons], height, width))


def fill_polygon(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill one ``(N, 2)`` pixel-centre polygon as ultralytics' ``polygon2mask`` does (``cv2.fillPoly`` of the
    truncated vertices)."""
    import cv2

    out = np.zeros((height, width), dtype=np.uint8)
    if len(polygon):
        cv2.fillPoly(out, [np.asarray(polygon, dtype=np.float64).astype(np.int32)], 1)
    return out.astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---------------------------------------------------------------------- splits and records
def split_files(files: Sequence[str], val_fraction: float) -> dict[str, str]:
    """File → ``"train"`` or ``"val"``: the ``round(val_fraction * n)`` files with the smallest content-free
    hash of their name are ``val``, so the split depends only on the set of files."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val fraction must lie in [0, 1), got {val_fraction}")
    ranked = sorted(files, key=lambda f: (hashlib.blake2b(f.encode("utf-8"), digest_size=8).hexdigest(), f))
    n_val = round(val_fraction * len(files))
    val = set(ranked[:n_val])
    return {f: ("val" if f in val else "train") for f in files}


def _splits(assignment: Mapping[str, str]) -> list[str]:
    found = set(assignment.values())
    return [s for s in ("train", "val") if s in found] + sorted(found - {"train", "val"}) or ["train"]


def _instances(record: Record) -> list[tuple[Mapping[str, Any], np.ndarray]]:
    """``(annotation, mask)`` of every annotation whose mask has a pixel, in record order."""
    out = []
    for ann in record["annotations"]:
        mask = decode_rle(ann["segmentation"])
        if mask.any():
            out.append((ann, mask))
    return out


def _image_name(record: Record, source: Path) -> str:
    return f"{record['name']}{source.suffix.lower()}"


# ---------------------------------------------------------------------- images
def _orientation(source: Path) -> int:
    try:
        with Image.open(source) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # not readable here: copied as it is
        return 1


def place_image(source: Path, target: Path, link: bool = False) -> None:
    """Put ``source`` at ``target`` in its displayed orientation: a copy (a hard link with ``link``, where the
    file system allows) when it has no EXIF rotation, else the rotated pixels in the same format."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if _orientation(source) == 1:
        if target.exists() and target.stat().st_size == source.stat().st_size:
            return
        tmp = temp_path(target.parent)
        try:
            try:
                if not link:
                    raise OSError("copy")
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    with Image.open(source) as im:
        fmt = im.format or "PNG"
        rotated = ImageOps.exif_transpose(im)
        exif = rotated.getexif()
        exif.pop(0x0112, None)
        buffer = io.BytesIO()
        options: dict[str, Any] = {"exif": exif.tobytes()}
        if fmt == "JPEG":
            options.update(quality=95, subsampling=0)
            if rotated.mode not in ("RGB", "L", "CMYK"):
                rotated = rotated.convert("RGB")
        rotated.save(buffer, format=fmt, **options)
    atomic_write_bytes(target, buffer.getvalue())


# ---------------------------------------------------------------------- COCO
def coco_document(
    records: Sequence[Record],
    categories: Sequence[str],
    file_names: Sequence[str] | None = None,
    rle: bool = False,
    polygon_text: bool = False,
) -> dict[str, Any]:
    """The COCO instances document of ``records`` (``file_names``: each image's ``file_name``, default its
    ``file``). ``polygon_text``: each polygon ``segmentation`` as :class:`JsonText` (for :func:`compact_json`,
    which then writes the same characters faster)."""
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, rec in enumerate(records, start=1):
        name = file_names[image_id - 1] if file_names is not None else rec["file"]
        images.append({"id": image_id, "file_name": name, "height": rec["height"], "width": rec["width"]})
        for ann, mask in _instances(rec):
            out: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_ids[ann["category"]],
                "segmentation": ann["segmentation"]
                if rle
                else JsonText(coco_polygons_json(mask))
                if polygon_text
                else coco_polygons(mask),
                "area": int(mask.sum()),
                "bbox": mask_box(mask),
                "iscrowd": 1 if rle else 0,
                "attributes": {k: ann[k] for k in _ATTRIBUTES if k in ann},
            }
            annotations.append(out)
    return {
        "info": {"description": "written by grounded", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_ids[name], "name": name, "supercategory": ""} for name in categories],
    }


def write_coco(
    out_dir: Path,
    records: Sequence[Record],
    categories: Sequence[str],
    assignment: Mapping[str, str],
    sources: Mapping[str, Path],
    rle: bool = False,
    link: bool = False,
) -> list[Path]:
    """``images/<split>/NAME.ext`` and ``annotations/instances_<split>.json`` per split (polygons, or RLE with
    ``rle=True``)."""
    out_dir = Path(out_dir)
    written = []
    for split in _splits(assignment):
        part = [r for r in records if assignment[r["file"]] == split]
        names = [_image_name(r, Path(sources[r["file"]])) for r in part]
        for rec, name in zip(part, names, strict=True):
            place_image(sources[rec["file"]], out_dir / "images" / split / name, link)
        path = out_dir / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        document = coco_document(part, categories, names, rle, polygon_text=True)
        atomic_write_text(path, compact_json(document))
        written.append(path)
    return written


def validate_coco(paths: Sequence[Path], records: Sequence[Record]) -> dict[str, Any]:
    """Load each file with ``pycocotools``, check that its images exist with the recorded size, and compare
    every annotation's mask with the original; returns counts and the minimum and mean mask IoU."""
    import contextlib

    from pycocotools.coco import COCO

    by_name = {r["name"]: r for r in records}
    ious: list[float] = []
    n_images = 0
    for path in paths:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        folder = Path(path).parent.parent / "images" / Path(path).stem.split("_", 1)[1]
        for image_id, info in coco.imgs.items():
            n_images += 1
            rec = by_name[Path(info["file_name"]).stem]
            with Image.open(folder / info["file_name"]) as im:
                if im.size != (rec["width"], rec["height"]):
                    raise ValueError(f"{folder / info['file_name']}: {im.size}, expected the recorded size")
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            kept = _instances(rec)
            if len(anns) != len(kept):
                raise ValueError(
                    f"{path}: {info['file_name']} has {len(anns)} annotations, expected {len(kept)}"
                )
            for ann, (_, original) in zip(anns, kept, strict=True):  # annToMask's mask (union in a tree)
                back = decode_rle(annotation_rle(ann["segmentation"], info["height"], info["width"]))
                ious.append(mask_iou(back, original))
    return _summary(n_images, ious)


def _summary(n_images: int, ious: Sequence[float]) -> dict[str, Any]:
    return {
        "images": n_images,
        "instances": len(ious),
        "min_iou": round(min(ious), 6) if ious else 1.0,
        "mean_iou": round(float(np.mean(ious)), 6) if ious else 1.0,
    }


# ---------------------------------------------------------------------- YOLO segmentation
def _yolo_line(class_id: int, polygon: np.ndarray, height: int, width: int) -> str:
    """One YOLO-seg label line: ``class x1 y1 x2 y2 ...``, coordinates normalised, ``%.6f`` each."""
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    cells = np.rint(poly)
    if (
        len(poly)
        and np.array_equal(cells, poly)
        and cells.min() >= 0
        and cells[:, 0].max() <= width
        and cells[:, 1].max() <= height
    ):
        # pixel vertices (the tracer's): each coordinate's text looked up, formatted once per row/column
        ix, iy = cells[:, 0].astype(np.intp), cells[:, 1].astype(np.intp)
        words = np.empty(2 * len(poly), dtype=object)
        words[0::2] = _coordinate_words(width)[ix]
        words[1::2] = _coordinate_words(height)[iy]
        return f"{class_id} " + " ".join(words.tolist())
    xy = (poly + YOLO_OFFSET) / np.array([width, height])
    values = np.clip(xy, 0.0, 1.0).reshape(-1).tolist()
    return f"{class_id} " + ("%.6f " * len(values))[:-1] % tuple(values)


@functools.lru_cache(maxsize=8)
def _coordinate_words(size: int) -> np.ndarray:
    """``%.6f`` of the normalised coordinate of every pixel index ``0..size`` (as :func:`_yolo_line` writes)."""
    values = np.clip((np.arange(size + 1, dtype=np.float64) + YOLO_OFFSET) / size, 0.0, 1.0).tolist()
    return np.array([f"{v:.6f}" for v in values], dtype=object)


def write_yolo(
    out_dir: Path,
    records: Sequence[Record],
    categories: Sequence[str],
    assignment: Mapping[str, str],
    sources: Mapping[str, Path],
    link: bool = False,
) -> list[Path]:
    """``data.yaml``, ``images/<split>/`` and ``labels/<split>/NAME.txt`` (one line per instance:
    ``class x1 y1 x2 y2 ...`` normalised to ``[0, 1]``, 0-based class ids)."""
    from grounded.core.safe_yaml import dump_yaml

    out_dir = Path(out_dir)
    cls_ids = {name: i for i, name in enumerate(categories)}
    written = []
    for rec in records:
        split = assignment[rec["file"]]
        source = Path(sources[rec["file"]])
        place_image(source, out_dir / "images" / split / _image_name(rec, source), link)
        h, w = rec["height"], rec["width"]
        lines = [
            _yolo_line(cls_ids[ann["category"]], yolo_polygon(mask), h, w) for ann, mask in _instances(rec)
        ]
        path = out_dir / "labels" / split / f"{rec['name']}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    splits = _splits(assignment)
    data = {
        "train": "images/train" if "train" in splits else f"images/{splits[0]}",
        "val": "images/val"
        if "val" in splits
        else ("images/train" if "train" in splits else f"images/{splits[0]}"),
        "nc": len(categories),
        "names": {i: name for i, name in enumerate(categories)},
    }
    for split in splits:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "data.yaml", dump_yaml(data, allow_unicode=True))
    return [out_dir / "data.yaml", *written]


def validate_yolo(out_dir: Path, records: Sequence[Record], categories: Sequence[str]) -> dict[str, Any]:
    """Read ``data.yaml`` and every label file back, fill each polygon as ultralytics does and compare it with
    the original mask."""
    from grounded.core.safe_yaml import read_yaml

    out_dir = Path(out_dir)
    data = read_yaml(out_dir / "data.yaml")
    if [data["names"][i] for i in range(data["nc"])] != list(categories):
        raise ValueError(f"{out_dir / 'data.yaml'}: names differ from the categories")
    ious: list[float] = []
    for rec in records:
        matches = list(out_dir.glob(f"labels/*/{rec['name']}.txt"))
        if len(matches) != 1:
            raise ValueError(f"{rec['name']}: expected one label file, found {len(matches)}")
        lines = matches[0].read_text().splitlines()
        kept = _instances(rec)
        if len(lines) != len(kept):
            raise ValueError(f"{matches[0]}: {len(lines)} lines, expected {len(kept)}")
        h, w = rec["height"], rec["width"]
        for line, (ann, mask) in zip(lines, kept, strict=True):
            values = line.split()
            if data["names"][int(values[0])] != ann["category"]:
                raise ValueError(f"{matches[0]}: class {values[0]} is not {ann['category']!r}")
            xy = np.asarray(values[1:], dtype=np.float64).reshape(-1, 2) * np.array([w, h])
            ious.append(mask_iou(fill_polygon(xy, h, w), mask))
    return _summary(len(records), ious)


# ---------------------------------------------------------------------- Pascal VOC
def voc_palette() -> list[int]:
    """The Pascal VOC colour map (256 RGB entries, flattened)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _voc_maps(record: Record, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The class and object index maps: instance ``i`` of the kept instances (by descending score) is object
    ``i + 1``; higher scores are painted on top (ties: the earlier instance). Instances beyond 254 (VOC's
    8-bit object PNG; 255 is "void") are left out of the object map."""
    cls_ids = {name: i + 1 for i, name in enumerate(categories)}
    kept = _instances(record)
    order = sorted(range(len(kept)), key=lambda i: (-kept[i][0]["score"], i))
    class_map = np.zeros((record["height"], record["width"]), dtype=np.uint8)
    object_map = np.zeros_like(class_map)
    for rank, i in reversed(list(enumerate(order))):
        ann, mask = kept[i]
        class_map[mask] = cls_ids[ann["category"]]
        object_map[mask] = rank + 1 if rank < 254 else 0
    return class_map, object_map


def _palette_png(values: np.ndarray, palette: list[int]) -> bytes:
    image = Image.fromarray(values, mode="L").convert("P")
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _voc_xml(record: Record, file_name: str) -> bytes:
    """``Annotations/NAME.xml``: one object per kept instance, by descending score (the object map's order),
    its box 1-based inclusive and its mask as one ``<polygon>`` (pixel centres, 1-based: ``<x1>``, ``<y1>``,
    ...). Written as text: the bytes ``ElementTree`` writes of the same tree after ``ET.indent``
    (``tests/test_dataset_clients.py`` builds it and compares), without a tree of two elements a vertex."""
    lines = [
        "<annotation>",
        "  <folder>JPEGImages</folder>",
        f"  <filename>{escape(file_name)}</filename>",
        "  <size>",
        f"    <width>{record['width']}</width>",
        f"    <height>{record['height']}</height>",
        "    <depth>3</depth>",
        "  </size>",
        "  <segmented>1</segmented>",
    ]
    kept = _instances(record)
    for i in sorted(range(len(kept)), key=lambda i: (-kept[i][0]["score"], i)):
        ann, mask = kept[i]
        x, y, w, h = (int(v) for v in mask_box(mask))
        lines += [
            "  <object>",
            f"    <name>{escape(str(ann['category']))}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            "    <difficult>0</difficult>",
            "    <bndbox>",
            f"      <xmin>{x + 1}</xmin>",
            f"      <ymin>{y + 1}</ymin>",
            f"      <xmax>{x + w}</xmax>",
            f"      <ymax>{y + h}</ymax>",
            "    </bndbox>",
        ]
        vertices = yolo_polygon(mask) + 1
        if len(vertices):
            lines.append("    <polygon>")
            lines.append(_voc_polygon_lines(vertices))
            lines.append("    </polygon>")
        else:
            lines.append("    <polygon />")
        lines.append("  </object>")
    lines.append("</annotation>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _voc_polygon_lines(vertices: np.ndarray) -> str:
    """``<x1>..</x1>`` ``<y1>..</y1>`` ... of ``(N, 2)`` vertices (``%g`` of each), one line each: for whole
    pixels below 10^6 (the tracer's), formatted by one ``%`` of every vertex's numbers (a Python string per
    vertex is many seconds for a ragged mask's hundreds of thousands)."""
    n = len(vertices)
    whole = np.rint(vertices)
    if np.array_equal(whole, vertices) and np.abs(whole).max() < 1e6:  # %g of these is %d
        k = np.arange(1, n + 1)
        numbers = np.stack([k, whole[:, 0].astype(np.int64), k, k, whole[:, 1].astype(np.int64), k], axis=1)
        return ("      <x%d>%d</x%d>\n      <y%d>%d</y%d>\n" * n)[:-1] % tuple(numbers.ravel().tolist())
    return "\n".join(
        f"      <x{k}>{x:g}</x{k}>\n      <y{k}>{y:g}</y{k}>"
        for k, (x, y) in enumerate(vertices.tolist(), start=1)
    )


def _voc_object_names(path: Path) -> list[str | None]:
    """The ``<name>`` of every ``<object>`` of a VOC annotation. The whole file is checked well-formed by
    expat (C, no handlers), and the names are read by ``ElementTree`` from the file with each ``<polygon>``'s
    vertices left out: a ragged mask's polygon is two elements a vertex, and a tree of a 100-mask image's can
    take minutes and gigabytes (380 MB of XML: 79 s to parse whole, 5 s this way)."""
    from xml.parsers import expat

    data = Path(path).read_bytes()
    try:
        expat.ParserCreate().Parse(data, True)
    except expat.ExpatError as e:
        raise ValueError(f"{path}: not well-formed XML ({e})") from None
    pieces, at = [], 0
    while (start := data.find(b"<polygon>", at)) >= 0 and (end := data.find(b"</polygon>", start)) >= 0:
        pieces += [data[at:start], b"<polygon />"]
        at = end + len(b"</polygon>")
    pieces.append(data[at:])
    return [o.findtext("name") for o in ET.fromstring(b"".join(pieces)).iter("object")]


def write_voc(
    out_dir: Path,
    records: Sequence[Record],
    categories: Sequence[str],
    assignment: Mapping[str, str],
    sources: Mapping[str, Path],
    link: bool = False,
) -> list[Path]:
    """The VOC layout: ``JPEGImages/``, ``Annotations/``, ``SegmentationClass/``, ``SegmentationObject/``,
    ``ImageSets/{Main,Segmentation}/<split>.txt`` and ``labelmap.txt``."""
    if len(categories) > 254:
        raise ValueError(f"VOC class PNGs hold at most 254 classes, got {len(categories)}")
    out_dir = Path(out_dir)
    palette = voc_palette()
    written = []
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for rec in records:
        source = Path(sources[rec["file"]])
        name = _image_name(rec, source)
        place_image(source, out_dir / "JPEGImages" / name, link)
        atomic_write_bytes(out_dir / "Annotations" / f"{rec['name']}.xml", _voc_xml(rec, name))
        class_map, object_map = _voc_maps(rec, categories)
        for folder, values in (("SegmentationClass", class_map), ("SegmentationObject", object_map)):
            path = out_dir / folder / f"{rec['name']}.png"
            atomic_write_bytes(path, _palette_png(values, palette))
            written.append(path)
    for task in ("Main", "Segmentation"):
        (out_dir / "ImageSets" / task).mkdir(parents=True, exist_ok=True)
        for split in _splits(assignment):
            names = [r["name"] for r in records if assignment[r["file"]] == split]
            path = out_dir / "ImageSets" / task / f"{split}.txt"
            atomic_write_text(path, "".join(n + "\n" for n in names))
            written.append(path)
    lines = ["# label:color_rgb:parts:actions"]
    for i, name in enumerate(["background", *categories]):
        r, g, b = palette[3 * i : 3 * i + 3]
        lines.append(f"{name}:{r},{g},{b}::")
    atomic_write_text(out_dir / "labelmap.txt", "\n".join(lines) + "\n")
    return [out_dir / "labelmap.txt", *written]


def validate_voc(out_dir: Path, records: Sequence[Record], categories: Sequence[str]) -> dict[str, Any]:
    """Read every PNG and XML back: pixel values equal the class and object maps rebuilt from the masks, every
    XML names its objects' classes."""
    out_dir = Path(out_dir)
    n = 0
    for rec in records:
        class_map, object_map = _voc_maps(rec, categories)
        for folder, expected in (("SegmentationClass", class_map), ("SegmentationObject", object_map)):
            with Image.open(out_dir / folder / f"{rec['name']}.png") as im:
                if im.mode != "P" or not np.array_equal(np.array(im), expected):
                    raise ValueError(f"{out_dir / folder / rec['name']}.png does not match the masks")
        names = _voc_object_names(out_dir / "Annotations" / f"{rec['name']}.xml")
        kept = _instances(rec)
        expected_names = [
            kept[i][0]["category"] for i in sorted(range(len(kept)), key=lambda i: (-kept[i][0]["score"], i))
        ]
        if names != expected_names:
            raise ValueError(
                f"{out_dir / 'Annotations' / rec['name']}.xml: objects {names}, expected {expected_names}"
            )
        n += 1
    for task in ("Main", "Segmentation"):
        listed = {
            line for p in (out_dir / "ImageSets" / task).glob("*.txt") for line in p.read_text().splitlines()
        }
        if listed != {r["name"] for r in records}:
            raise ValueError(f"{out_dir}/ImageSets/{task} lists other images than the dataset's")
    return {"images": n, "instances": sum(len(_instances(r)) for r in records), "exact": True}


# ---------------------------------------------------------------------- Label Studio
def write_label_studio(
    out_dir: Path,
    records: Sequence[Record],
    categories: Sequence[str],
    sources: Mapping[str, Path],
    link: bool = False,
    image_root: str = "/data/local-files/?d=images/",
) -> list[Path]:
    """``images/``, ``tasks.json`` (one task a image, its masks as brush predictions) and
    ``label_config.xml``. ``image_root`` prefixes each image's file name in ``data.image`` (the default suits
    Label Studio's local-files storage with this folder as the document root)."""
    from grounded.core.label_studio import label_config, label_studio_regions

    out_dir = Path(out_dir)
    tasks = []
    for rec in records:
        source = Path(sources[rec["file"]])
        name = _image_name(rec, source)
        place_image(source, out_dir / "images" / name, link)
        kept = _instances(rec)
        regions = label_studio_regions(
            [a for a, _ in kept], rec["height"], rec["width"], masks=[m for _, m in kept]
        )
        scores = [float(a["score"]) for a, _ in kept]
        tasks.append(
            {
                "data": {"image": f"{image_root}{name}", "file": rec["file"]},
                "predictions": [
                    {
                        "model_version": "grounded",
                        "score": round(float(np.mean(scores)), 6) if scores else 0.0,
                        "result": regions,
                    }
                ],
            }
        )
    atomic_write_text(out_dir / "tasks.json", compact_json(tasks))
    atomic_write_text(out_dir / "label_config.xml", label_config(categories))
    return [out_dir / "tasks.json", out_dir / "label_config.xml"]


def validate_label_studio(out_dir: Path, records: Sequence[Record]) -> dict[str, Any]:
    """Decode every brush region of ``tasks.json`` back (as label-studio-sdk's ``decode_rle`` reads it:
    :mod:`grounded.core.brush_rle`) and compare it with the original mask."""
    import json

    from grounded.core.label_studio import region_mask

    tasks = json.loads((Path(out_dir) / "tasks.json").read_text())
    ious: list[float] = []
    for task, rec in zip(tasks, records, strict=True):
        regions = task["predictions"][0]["result"]
        kept = _instances(rec)
        if len(regions) != len(kept):
            raise ValueError(f"tasks.json: {rec['file']} has {len(regions)} regions, expected {len(kept)}")
        for region, (ann, mask) in zip(regions, kept, strict=True):
            if region["value"]["brushlabels"] != [ann["category"]]:
                raise ValueError(f"tasks.json: {rec['file']}: label {region['value']['brushlabels']}")
            ious.append(mask_iou(region_mask(region), mask))
    return _summary(len(tasks), ious)


# ---------------------------------------------------------------------- all formats
def export_records(
    out: Path,
    records: Sequence[Record],
    categories: Sequence[str],
    formats: Sequence[str],
    sources: Mapping[str, Path],
    assignment: Mapping[str, str] | None = None,
    *,
    rle: bool = False,
    link: bool = False,
) -> dict[str, Any]:
    """Write and validate each of ``formats`` into ``out/<format>/``; returns each one's validation summary."""
    assignment = assignment or {r["file"]: "train" for r in records}
    report: dict[str, Any] = {}
    if "coco" in formats:
        paths = write_coco(out / "coco", records, categories, assignment, sources, rle=rle, link=link)
        report["coco"] = validate_coco(paths, records)
    if "yolo" in formats:
        write_yolo(out / "yolo", records, categories, assignment, sources, link=link)
        report["yolo"] = validate_yolo(out / "yolo", records, categories)
    if "voc" in formats:
        write_voc(out / "voc", records, categories, assignment, sources, link=link)
        report["voc"] = validate_voc(out / "voc", records, categories)
    if "label-studio" in formats:
        write_label_studio(out / "label-studio", records, categories, sources, link=link)
        report["label-studio"] = validate_label_studio(out / "label-studio", records)
    return report
