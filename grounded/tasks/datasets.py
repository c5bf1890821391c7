"""Dataset exports of ``grounded annotate``: COCO instances, YOLO segmentation, Pascal-VOC-style PNG masks.

Every writer reads the per-image results stored in the run manifest (:mod:`grounded.tasks.manifest`), in file
order, and writes atomically; nothing depends on the order or number of runs that produced them, so an
interrupted and resumed run writes the same bytes as an uninterrupted one. Each format is validated by reading
it back (:func:`validate_coco`, :func:`validate_yolo`, :func:`validate_voc`).

Polygons come from ``skimage.measure.find_contours`` (OpenCV is not needed; supervision's polygon helpers
call OpenCV): the 0.5 iso-line of the mask padded by one pixel, so every contour is closed, in pixel-corner
coordinates (pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``, COCO's convention).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grounded.core.files import atomic_write_bytes, atomic_write_text, compact_json, temp_path
from grounded.core.rle import decode_rle

__all__ = [
    "FORMATS",
    "coco_polygons",
    "mask_iou",
    "mask_to_polygons",
    "polygons_to_mask",
    "split_files",
    "validate_coco",
    "validate_voc",
    "validate_yolo",
    "write_coco",
    "write_voc",
    "write_yolo",
    "yolo_polygon",
]

FORMATS = ("coco", "yolo", "voc")
Record = Mapping[str, Any]  # one image: file, name, height, width, annotations [...]


# ---------------------------------------------------------------------- geometry
def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """Closed contours of a boolean mask as flat ``[x0, y0, x1, y1, ...]`` lists (outer and hole contours).

    ``tolerance`` > 0 simplifies each contour (Douglas-Peucker, in pixels). Contours of fewer than 3 points
    are dropped.
    """
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        if tolerance > 0:
            contour = approximate_polygon(contour, tolerance)
        if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
            contour = contour[:-1]
        if len(contour) < 3:
            continue
        # padded (row, col) of the iso-line between pixel centres → corner coordinates of the original image
        xy = np.stack([contour[:, 1] - 0.5, contour[:, 0] - 0.5], axis=1)
        polygons.append([round(float(v), 2) for v in xy.reshape(-1)])
    return polygons


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (union, as ``pycocotools`` does for ``annToMask``)."""
    from pycocotools import mask as mask_utils

    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def yolo_polygon(polygons: Sequence[Sequence[float]]) -> list[float]:
    """Several contours as one polygon, joined by zero-width bridges to the first contour's start.

    Each bridge is walked out and back, so under the even-odd rule the joined polygon covers exactly the
    contours' XOR: the outer regions, with their holes left open.
    """
    if not polygons:
        return []
    first = list(polygons[0])
    out = [*first, first[0], first[1]]
    for poly in polygons[1:]:
        out += [*poly, poly[0], poly[1], first[0], first[1]]
    return out


def _signed_area(polygon: Sequence[float]) -> float:
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def coco_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """COCO ``segmentation`` polygons of a mask: one polygon per region when the mask has no hole; with holes,
    one polygon of all contours joined by :func:`yolo_polygon` (``pycocotools`` fills a polygon by the
    even-odd rule, so the holes stay open, whereas a list of polygons is filled as their union)."""
    polygons = mask_to_polygons(mask, tolerance)
    if len(polygons) > 1:
        signs = {_signed_area(p) > 0 for p in polygons}
        if len(signs) > 1:  # outer contours and holes run in opposite directions
            return [yolo_polygon(polygons)]
    return polygons


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---------------------------------------------------------------------- splits
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
    return [s for s in ("train", "val") if s in assignment.values()] or ["train"]


def _masks(record: Record) -> list[np.ndarray]:
    return [decode_rle(a["segmentation"]) for a in record["annotations"]]


# ---------------------------------------------------------------------- COCO
def _coco_doc(
    records: Sequence[Record], categories: Sequence[str], polygons: bool, tolerance: float
) -> dict[str, Any]:
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, rec in enumerate(records, start=1):
        images.append(
            {"id": image_id, "file_name": rec["file"], "height": rec["height"], "width": rec["width"]}
        )
        for ann in rec["annotations"]:
            out: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_ids[ann["category"]],
                "bbox": ann["bbox"],
                "area": ann["area"],
                "iscrowd": 0,
                "score": ann["score"],
            }
            if polygons:
                out["segmentation"] = coco_polygons(decode_rle(ann["segmentation"]), tolerance)
            else:
                out["segmentation"] = ann["segmentation"]
            for key in ("mask_score", "phrase"):
                if key in ann:
                    out[key] = ann[key]
            annotations.append(out)
    return {
        "info": {"description": "written by grounded annotate", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_ids[name], "name": name, "supercategory": "object"} for name in categories],
    }


def write_coco(
    out_dir: Path,
    records: Sequence[Record],
    categories: Sequence[str],
    assignment: Mapping[str, str],
    polygons: bool = False,
    tolerance: float = 0.0,
) -> list[Path]:
    """``annotations/instances_<split>.json`` per split (RLE masks, or polygons with ``polygons=True``)."""
    written = []
    for split in _splits(assignment):
        part = [r for r in records if assignment[r["file"]] == split]
        path = Path(out_dir) / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, compact_json(_coco_doc(part, categories, polygons, tolerance)))
        written.append(path)
    return written


def validate_coco(paths: Sequence[Path], records: Sequence[Record]) -> dict[str, Any]:
    """Load each file with ``pycocotools`` and compare every annotation's mask with the original.

    Returns counts and the minimum and mean mask IoU (1.0 for RLE, which must match exactly).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO

    by_file = {r["file"]: r for r in records}
    ious: list[float] = []
    n_images = 0
    for path in paths:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        for image_id, info in coco.imgs.items():
            n_images += 1
            rec = by_file[info["file_name"]]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            if len(anns) != len(rec["annotations"]):
                raise ValueError(
                    f"{path}: {info['file_name']} has {len(anns)} annotations, expected {len(rec['annotations'])}"
                )
            for ann, original in zip(anns, _masks(rec), strict=True):
                ious.append(mask_iou(coco.annToMask(ann).astype(bool), original))
    return _summary(n_images, ious)


def _summary(n_images: int, ious: Sequence[float]) -> dict[str, Any]:
    return {
        "images": n_images,
        "instances": len(ious),
        "min_iou": round(min(ious), 6) if ious else 1.0,
        "mean_iou": round(float(np.mean(ious)), 6) if ious else 1.0,
    }


# ---------------------------------------------------------------------- YOLO segmentation
def _place_image(source: Path, target: Path) -> None:
    """Hard-link (or copy) an image into the dataset; an existing file of the same size is kept."""
    if target.exists() and target.stat().st_size == source.stat().st_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target.parent)  # a short name, whatever the target's
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_yolo(
    out_dir: Path,
    records: Sequence[Record],
    categories: Sequence[str],
    assignment: Mapping[str, str],
    sources: Mapping[str, Path],
    tolerance: float = 0.0,
) -> list[Path]:
    """``data.yaml``, ``images/<split>/`` (hard links or copies) and ``labels/<split>/NAME.txt``.

    One line per instance: ``class x1 y1 x2 y2 ...`` normalised to ``[0, 1]``; an instance of several
    contours is joined into one polygon (:func:`yolo_polygon`). Class ids are 0-based.
    """
    from grounded.core.safe_yaml import dump_yaml

    out_dir = Path(out_dir)
    cls_ids = {name: i for i, name in enumerate(categories)}
    written = []
    for rec in records:
        split = assignment[rec["file"]]
        source = sources[rec["file"]]
        _place_image(source, out_dir / "images" / split / f"{rec['name']}{source.suffix.lower()}")
        h, w = rec["height"], rec["width"]
        lines = []
        for ann, mask in zip(rec["annotations"], _masks(rec), strict=True):
            poly = yolo_polygon(mask_to_polygons(mask, tolerance))
            if not poly:
                continue
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2) / np.array([w, h])
            coords = " ".join(f"{v:.6f}" for v in np.clip(xy, 0.0, 1.0).reshape(-1))
            lines.append(f"{cls_ids[ann['category']]} {coords}")
        path = out_dir / "labels" / split / f"{rec['name']}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    splits = _splits(assignment)
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val" if "val" in splits else "images/train",
        "nc": len(categories),
        "names": {i: name for i, name in enumerate(categories)},
    }
    (out_dir / "images" / "train").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "data.yaml", dump_yaml(data, allow_unicode=True))
    return [out_dir / "data.yaml", *written]


def validate_yolo(out_dir: Path, records: Sequence[Record], categories: Sequence[str]) -> dict[str, Any]:
    """Read ``data.yaml`` and every label file back, re-rasterise each polygon (even-odd) and compare it with
    the original mask; an instance whose mask had no contour must be absent."""
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
        kept = [(a, m) for a, m in zip(rec["annotations"], _masks(rec), strict=True) if m.any()]
        if len(lines) != len(kept):
            raise ValueError(f"{matches[0]}: {len(lines)} lines, expected {len(kept)}")
        h, w = rec["height"], rec["width"]
        for line, (ann, mask) in zip(lines, kept, strict=True):
            values = line.split()
            if data["names"][int(values[0])] != ann["category"]:
                raise ValueError(f"{matches[0]}: class {values[0]} is not {ann['category']!r}")
            xy = np.asarray(values[1:], dtype=np.float64).reshape(-1, 2) * np.array([w, h])
            ious.append(mask_iou(polygons_to_mask([xy.reshape(-1).tolist()], h, w), mask))
    return _summary(len(records), ious)


# ---------------------------------------------------------------------- Pascal VOC style PNG masks
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


def _paint(record: Record, values: Sequence[int]) -> np.ndarray:
    """uint8 image: instance ``i``'s pixels get ``values[i]``; higher scores on top (ties: earlier first)."""
    out = np.zeros((record["height"], record["width"]), dtype=np.uint8)
    scores = [a["score"] for a in record["annotations"]]
    masks = _masks(record)
    for i in sorted(range(len(masks)), key=lambda i: (scores[i], -i)):
        out[masks[i]] = values[i]
    return out


def _voc_images(record: Record, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    cls_ids = {name: i + 1 for i, name in enumerate(categories)}
    anns = record["annotations"]
    # instances beyond 254 (VOC's 8-bit object PNG; 255 is the "void" value) are left out of the object map
    order = sorted(range(len(anns)), key=lambda i: (-anns[i]["score"], i))
    rank = {i: r for r, i in enumerate(order)}
    objects = [rank[i] + 1 if rank[i] < 254 else 0 for i in range(len(anns))]
    return _paint(record, [cls_ids[a["category"]] for a in anns]), _paint(record, objects)


def _palette_png(values: np.ndarray, palette: list[int]) -> bytes:
    import io

    image = Image.fromarray(values, mode="L").convert("P")
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_voc(
    out_dir: Path, records: Sequence[Record], categories: Sequence[str], assignment: Mapping[str, str]
) -> list[Path]:
    """``SegmentationClass/NAME.png`` (class index, 0 background), ``SegmentationObject/NAME.png`` (instance
    index by descending score), both 8-bit palette PNGs with the VOC colour map; ``ImageSets/Segmentation/
    <split>.txt`` and ``labels.txt`` (index: name)."""
    if len(categories) > 254:
        raise ValueError(f"VOC class PNGs hold at most 254 classes, got {len(categories)}")
    out_dir = Path(out_dir)
    palette = voc_palette()
    written = []
    for folder in ("SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for rec in records:
        class_map, object_map = _voc_images(rec, categories)
        for folder, values in (("SegmentationClass", class_map), ("SegmentationObject", object_map)):
            path = out_dir / folder / f"{rec['name']}.png"
            atomic_write_bytes(path, _palette_png(values, palette))
            written.append(path)
    for split in _splits(assignment):
        names = [r["name"] for r in records if assignment[r["file"]] == split]
        path = out_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        atomic_write_text(path, "".join(n + "\n" for n in names))
        written.append(path)
    labels = ["0: background", *(f"{i}: {name}" for i, name in enumerate(categories, start=1))]
    atomic_write_text(out_dir / "labels.txt", "\n".join(labels) + "\n")
    return [out_dir / "labels.txt", *written]


def validate_voc(out_dir: Path, records: Sequence[Record], categories: Sequence[str]) -> dict[str, Any]:
    """Read every PNG back: its pixel values must equal the class and object maps rebuilt from the masks."""
    out_dir = Path(out_dir)
    n = 0
    for rec in records:
        class_map, object_map = _voc_images(rec, categories)
        for folder, expected in (("SegmentationClass", class_map), ("SegmentationObject", object_map)):
            with Image.open(out_dir / folder / f"{rec['name']}.png") as im:
                if im.mode != "P" or not np.array_equal(np.array(im), expected):
                    raise ValueError(f"{out_dir / folder / rec['name']}.png does not match the masks")
        n += 1
    listed = {
        line
        for p in (out_dir / "ImageSets" / "Segmentation").glob("*.txt")
        for line in p.read_text().splitlines()
    }
    if listed != {r["name"] for r in records}:
        raise ValueError(f"{out_dir}/ImageSets/Segmentation lists other images than the dataset's")
    return {"images": n, "instances": sum(len(r["annotations"]) for r in records), "exact": True}
