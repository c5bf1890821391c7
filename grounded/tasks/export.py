"""Writing results: per-image JSON, overlay PNG and 16-bit label PNG, or one COCO file for a whole run.

Every file is written atomically (temporary file in the same directory, ``fsync``, ``os.replace``), so an
interrupted run never leaves a half-written result behind. Writers read masks one at a time (dense or RLE,
see :mod:`grounded.core.detections`); the overlay of a very large image is drawn at most
:data:`OVERLAY_PIXELS` in size (and :data:`~grounded.core.detections.DENSE_MASK_BYTES` of masks) and scaled
up to the image's size, so memory stays bounded.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from grounded.core import detections as _detections
from grounded.core.detections import Detections
from grounded.core.files import atomic_write_bytes, atomic_write_text, compact_json, encode_png
from grounded.core.images import LoadedImage
from grounded.tasks.outputs import MARKER

__all__ = [
    "OVERLAY_PIXELS",
    "CocoWriter",
    "image_json",
    "label_image",
    "overlay_image",
    "overlay_scale",
    "write_image_results",
]


#: the largest overlay drawn at full size; a larger image's overlay is drawn smaller and scaled up
OVERLAY_PIXELS = 4096 * 4096


def label_image(det: Detections) -> np.ndarray:
    """uint16 ``(H, W)`` instance map: 0 is background, detection ``i`` is ``i + 1``.

    Where masks overlap the higher-scoring detection wins (ties go to the earlier detection).
    """
    if not det.has_masks:
        raise ValueError("label_image needs masks, but these detections have none")
    n = len(det)
    if n > 65535:
        raise ValueError(f"a uint16 label image holds at most 65535 instances, got {n}")
    scores = det.scores.detach().float().cpu().numpy()
    order = np.lexsort((-np.arange(n), scores))  # ascending score; among ties the earliest is painted last
    last = _last_painted((det.mask_array(int(i)) for i in order), det.image_size, n)
    values = np.zeros(n + 1, dtype=np.uint16)
    values[1:] = order + 1
    return values[last]


def _last_painted(masks: Iterator[np.ndarray], size: tuple[int, int], count: int) -> np.ndarray:
    """For ``count`` bool masks painted one over the other in the order given, each pixel's 1-based paint
    position of the last mask painted over it (0: none): the maximum of position x mask, one branch-free
    pass a mask (``canvas[mask] = value`` is several times slower on ragged masks)."""
    dtype = np.dtype(np.uint16 if count < 2**16 else np.uint32)
    last = np.zeros(size, dtype=dtype)
    scaled = np.empty(size, dtype=dtype)
    for position, mask in enumerate(masks, start=1):
        np.multiply(mask.view(np.uint8), dtype.type(position), out=scaled)
        np.maximum(last, scaled, out=last)
    return last


def overlay_image(image: LoadedImage, det: Detections) -> np.ndarray:
    """The image with masks, boxes and ``"class score"`` labels drawn on it, colored by class (uint8 RGB)."""
    _check_size(image, det)
    if len(det) == 0:
        return image.pixels.copy()
    scale = overlay_scale(image.size, len(det) if det.has_masks else 0)
    if scale < 1.0:
        return _overlay_reduced(image, det, scale)
    return _draw(image, det)


def _draw(image: LoadedImage, det: Detections) -> np.ndarray:
    """The overlay drawn by ``supervision`` at the image's size."""
    with warnings.catch_warnings():  # supervision warns at import that it falls back to NumPy without OpenCV
        warnings.filterwarnings("ignore", message=".*OpenCV.*not installed", category=UserWarning)
        import supervision as sv

    sv_det = det.to_supervision()
    height, width = image.size
    thickness = sv.calculate_optimal_line_thickness((width, height))
    text_scale = max(0.4, sv.calculate_optimal_text_scale((width, height)))
    labels = [f"{name} {score:.2f}" for name, score in zip(det.class_names, det.scores.tolist(), strict=True)]
    lookup = sv.ColorLookup.CLASS
    # supervision draws colors in OpenCV's BGR order, so annotate a BGR copy and flip back.
    scene = np.ascontiguousarray(image.pixels[..., ::-1])
    if det.has_masks:
        scene = sv.MaskAnnotator(color_lookup=lookup).annotate(scene, _top_masks(sv, sv_det))
    scene = sv.BoxAnnotator(thickness=thickness, color_lookup=lookup).annotate(scene, sv_det)
    scene = sv.LabelAnnotator(
        color_lookup=lookup,
        text_scale=text_scale,
        text_thickness=max(1, thickness // 2),
        text_padding=thickness * 3,
    ).annotate(scene, sv_det, labels=labels)
    return np.ascontiguousarray(scene[..., ::-1])


def _top_masks(sv: Any, detections: Any) -> Any:
    """``supervision`` detections whose masks paint the same colour layer as ``detections``' masks do in
    ``MaskAnnotator``, one disjoint mask a class: the pixels whose top mask is of that class.

    ``MaskAnnotator`` paints every mask in its colour (by class), largest area first, so a pixel takes the
    colour of the last mask painted over it; painting class numbers in that same order (its own
    ``np.flip(np.argsort(area))``, :func:`_last_painted`) gives each pixel its top mask, and the class
    masks then take one colour paint each instead of one a detection. Each class mask's box is the union of
    its detections' boxes (masks with pixels only), so the annotator's region is the same union of boxes."""
    masks, class_ids = detections.mask, detections.class_id
    if masks is None or len(masks) < 2 or class_ids is None:
        return detections
    area = detections.area
    order = np.flip(np.argsort(area))
    last = _last_painted((np.asarray(masks[i], dtype=bool) for i in order), masks.shape[1:], len(order))
    painted = area > 0
    classes = np.unique(class_ids[painted])
    if not len(classes):
        return detections
    boxes = []
    for c in classes:
        own = detections.xyxy[painted & (class_ids == c)]
        boxes.append([own[:, 0].min(), own[:, 1].min(), own[:, 2].max(), own[:, 3].max()])
    # paint position → 1 + the index in ``classes`` of the class painted there (0: none, or an empty mask)
    lookup = np.zeros(len(order) + 1, dtype=np.uint16 if len(classes) < 2**16 else np.uint32)
    lookup[1:] = np.where(painted[order], np.searchsorted(classes, class_ids[order]) + 1, 0)
    top = lookup[last]
    return sv.Detections(
        xyxy=np.asarray(boxes, dtype=detections.xyxy.dtype),
        mask=np.stack([top == k + 1 for k in range(len(classes))]),
        class_id=classes,
    )


def overlay_scale(image_size: tuple[int, int], masks: int) -> float:
    """The scale the overlay is drawn at: 1, or less so that the drawing holds at most :data:`OVERLAY_PIXELS`
    pixels and ``masks`` masks at most ``DENSE_MASK_BYTES``."""
    pixels = image_size[0] * image_size[1]
    scale = min(1.0, math.sqrt(OVERLAY_PIXELS / pixels))
    if masks:
        scale = min(scale, math.sqrt(_detections.DENSE_MASK_BYTES / (masks * pixels)))
    return scale


def _overlay_reduced(image: LoadedImage, det: Detections, scale: float) -> np.ndarray:
    """:func:`overlay_image` drawn on the image scaled by ``scale`` (masks reduced one at a time), then
    scaled back up to the image's size."""
    import torch
    from PIL import Image

    height, width = image.size
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image.pixels).resize(size, Image.Resampling.BILINEAR))
    factors = torch.tensor([size[0] / width, size[1] / height] * 2)
    masks = None
    if det.has_masks:
        masks = torch.zeros((len(det), size[1], size[0]), dtype=torch.bool)
        for i in range(len(det)):
            full = Image.fromarray(det.mask_array(i).view(np.uint8))
            masks[i] = torch.from_numpy(np.asarray(full.resize(size, Image.Resampling.NEAREST)) > 0)
            del full
    reduced = Detections(
        boxes=det.boxes.detach().float().cpu() * factors,
        scores=det.scores.detach().cpu(),
        class_ids=det.class_ids.detach().cpu(),
        classes=det.classes,
        phrases=det.phrases,
        image_size=(size[1], size[0]),
        masks=masks,
        mask_scores=None if det.mask_scores is None else det.mask_scores.detach().cpu(),
    )
    drawn = _draw(LoadedImage(np.ascontiguousarray(small), image.name), reduced)
    return np.asarray(Image.fromarray(drawn).resize((width, height), Image.Resampling.BILINEAR))


def _check_size(image: LoadedImage, det: Detections) -> None:
    if tuple(det.image_size) != image.size:
        raise ValueError(f"detections are for size {det.image_size} but image {image.name!r} is {image.size}")


# ---------------------------------------------------------------------- per-image results
def _file_name(image: LoadedImage) -> str:
    return image.path.name if image.path is not None else image.name


def image_json(image: LoadedImage, det: Detections) -> dict[str, Any]:
    """The JSON document of one image: image info, the prompt's classes and COCO-style detection records.

    ``category_id`` is 1-based (the class's index in ``classes`` plus one), as in the COCO files; ``bbox`` is
    the mask's extent where there is a mask (``box``: the detector's box), as in every dataset export.
    """
    _check_size(image, det)
    height, width = image.size
    records = det.to_coco_records()
    return {
        "image": {"file_name": _file_name(image), "height": height, "width": width},
        "classes": list(det.classes),
        "detections": [_result_record(r, _dense_mask_box(det, i, r)) for i, r in enumerate(records)],
    }


# compressed RLE counts (characters) beyond which a dense mask's box is read off the mask, not its RLE
_LONG_RLE = 4096


def _dense_mask_box(det: Detections, i: int, record: dict[str, Any]) -> list[float] | None:
    """Detection ``i``'s mask box read off its dense mask (:func:`~grounded.tasks.datasets.mask_box`, the
    same numbers as pycocotools' ``toBbox`` of its RLE) where its RLE is long: decoding a ragged mask's
    many runs costs more than two reductions of the mask. None: read it off the RLE."""
    from grounded.tasks.datasets import mask_box

    segmentation = record.get("segmentation")
    if det.masks is None or segmentation is None or len(segmentation["counts"]) < _LONG_RLE:
        return None
    return mask_box(det.mask_array(i))


def _result_record(record: dict[str, Any], mask_box: list[float] | None = None) -> dict[str, Any]:
    """A detection record with the 1-based category id and the mask's box (the detector's box kept as
    ``box``): ``mask_box`` where given, else read off the RLE."""
    from grounded.tasks.datasets import rle_box

    out = dict(record, category_id=record["category_id"] + 1)
    if "segmentation" in record:
        out["box"] = record["bbox"]
        out["bbox"] = rle_box(record["segmentation"]) if mask_box is None else mask_box
    return out


def write_image_results(
    out_dir: Path, name: str, image: LoadedImage, det: Detections, marker: Mapping[str, Any] | None = None
) -> list[Path]:
    """Write ``NAME.png`` (overlay), ``NAME_labels.png`` (uint16, when there are masks), then ``NAME.json``.

    Creates ``out_dir`` if needed and returns the paths written. ``marker``: the run's settings, recorded in
    each file (:mod:`grounded.tasks.outputs`).
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"invalid output name {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = None if marker is None else {MARKER: compact_json(marker)}
    written = [out_dir / f"{name}.png"]
    atomic_write_bytes(written[0], encode_png(overlay_image(image, det), text))
    if det.has_masks:
        written.append(out_dir / f"{name}_labels.png")
        atomic_write_bytes(written[-1], encode_png(label_image(det), text))
    # the JSON goes last: its presence marks the image as complete (``grounded segment --skip-existing``)
    written.append(out_dir / f"{name}.json")
    doc = image_json(image, det)
    if marker is not None:
        doc[MARKER] = dict(marker)
    atomic_write_text(written[-1], compact_json(doc))
    return written


# ---------------------------------------------------------------------- one COCO file per run
class CocoWriter:
    """Collects the detections of a whole run into one COCO dataset (images, categories, annotations).

    Categories are the union of every image's classes in first-seen order; an annotation's
    ``category_id`` is the run-level id of its class *name*, so images prompted with different class lists
    still map consistently. Masks are RLE, so ``iscrowd`` is 1 (COCO's definition of RLE; 0 for box-only
    detections); ``bbox`` is the mask's extent; ``score`` stays a top-level field (pycocotools' ``loadRes``
    and datumaro read it there), ``mask_score`` and ``phrase`` go in ``attributes`` (datumaro's convention).
    ``grounded convert-dataset coco.json --from coco --to coco,yolo,...`` lays it out as a dataset with
    its images.
    """

    def __init__(self) -> None:
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        self._categories: dict[str, int] = {}

    def add(self, image: LoadedImage, det: Detections) -> int:
        """Add one image and its detections; returns its image id (1-based, in the order added)."""
        _check_size(image, det)
        image_id = len(self._images) + 1
        height, width = image.size
        self._images.append(
            {"id": image_id, "file_name": _file_name(image), "height": height, "width": width}
        )
        for name in det.classes:
            self._categories.setdefault(name, len(self._categories) + 1)
        for record in det.to_coco_records():
            record = _result_record(record)
            box = record["bbox"]
            annotation: dict[str, Any] = {
                "id": len(self._annotations) + 1,
                "image_id": image_id,
                "category_id": self._categories[record["category"]],
                "bbox": box,
                "area": record.get("area", round(box[2] * box[3], 3)),
                "iscrowd": 1 if "segmentation" in record else 0,  # RLE: COCO's crowd form
                "score": record["score"],
            }
            if "segmentation" in record:
                annotation["segmentation"] = record["segmentation"]
            annotation["attributes"] = {k: record[k] for k in ("mask_score", "phrase") if k in record}
            self._annotations.append(annotation)
        return image_id

    def to_dict(self) -> dict[str, Any]:
        """The COCO dataset as a JSON-ready dict."""
        return {
            "images": [dict(im) for im in self._images],
            "annotations": [dict(ann) for ann in self._annotations],
            "categories": [{"id": cid, "name": name} for name, cid in self._categories.items()],
        }

    def write(self, path: Path, marker: Mapping[str, Any] | None = None) -> None:
        """Write the COCO JSON atomically (creating the parent directory if needed); ``marker`` as for
        :func:`write_image_results`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = self.to_dict()
        if marker is not None:
            doc[MARKER] = dict(marker)
        atomic_write_text(path, compact_json(doc))
