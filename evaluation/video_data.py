"""The video datasets ``grounded eval video`` reads: DAVIS 2017 (semi-supervised VOS) and MOTSChallenge (MOTS).

DAVIS 2017 (``--format davis``), as released (``DAVIS-2017-trainval-480p.zip``)::

    DIR/JPEGImages/480p/SEQ/00000.jpg ...     the frames
    DIR/Annotations/480p/SEQ/00000.png ...    indexed PNGs: 0 background, 1..N the objects, 255 void
    DIR/ImageSets/2017/val.txt                the sequences of a split (or give the sequences)

MOTSChallenge (``--format mots``), as released (``MOTS20/train``) and as TrackEval's ``MOTSChallenge`` reads it::

    DIR/SEQ/seqinfo.ini                       [Sequence] imDir, seqLength
    DIR/SEQ/gt/gt.txt                         time_frame id class_id img_height img_width rle (frames from 1)
    DIR/SEQ/img1/000001.jpg ...               the frames

Everything that can be checked without reading every frame is checked here, so a wrong folder fails at once
with one line (:class:`~grounded.evaluation.datasets.DatasetError`), before any model runs.
"""

from __future__ import annotations

import configparser
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grounded.core.video import IMAGE_SUFFIXES
from grounded.evaluation.datasets import DatasetError

__all__ = [
    "MOTS_CLASSES",
    "DavisSequence",
    "MotsSequence",
    "find_davis",
    "find_mots",
    "read_label_png",
]

#: the classes MOTSChallenge evaluates: class id in the txt files -> name (10 marks ignore regions)
MOTS_CLASSES: dict[int, str] = {2: "pedestrian"}
VOID = 255  # DAVIS: pixels not scored


def _images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def read_label_png(path: Path) -> np.ndarray:
    """An indexed (palette) or grey PNG as its ``(H, W)`` integer values (DAVIS annotations and results;
    uint8, or uint16 / int32 for 16-bit PNGs)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I;16", "I"):
                raise DatasetError(
                    f"{path}: a {image.mode} PNG; DAVIS masks are indexed (palette) or grey PNGs whose values "
                    "are object ids"
                )
            return np.asarray(image)  # uint8 for palette / grey: a sequence's frames stay small in memory
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot read the PNG ({exc})") from None


@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: its frames and their annotations (same names), and the objects of its first frame."""

    name: str
    images: tuple[Path, ...]
    annotations: tuple[Path, ...]
    objects: tuple[int, ...]

    @property
    def frames(self) -> int:
        return len(self.images)


def find_davis(
    root: str | Path,
    *,
    split: str = "val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
) -> list[DavisSequence]:
    """The sequences of a DAVIS 2017 folder (``split`` from ``ImageSets/2017``, or the ``sequences`` named),
    checked: every frame has an annotation, at least 3 frames (the first and last are not scored) and at
    least one object on the first frame."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root}: no such folder")
    images_root, masks_root = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    for folder in (images_root, masks_root):
        if not folder.is_dir():
            raise DatasetError(
                f"{root}: not a DAVIS 2017 folder (no {folder.relative_to(root)}; expected JPEGImages/"
                f"{resolution}/SEQ/*.jpg and Annotations/{resolution}/SEQ/*.png)"
            )
    if sequences:
        names = list(dict.fromkeys(sequences))
    else:
        listing = root / "ImageSets" / "2017" / f"{split}.txt"
        if not listing.is_file():
            raise DatasetError(f"{root}: no ImageSets/2017/{split}.txt; give another --split or --sequences")
        names = list(dict.fromkeys(line.strip() for line in listing.read_text().splitlines() if line.strip()))
        if not names:
            raise DatasetError(f"{listing}: lists no sequences")
    found = []
    for name in names:
        frames_dir, masks_dir = images_root / name, masks_root / name
        if not frames_dir.is_dir() or not masks_dir.is_dir():
            raise DatasetError(
                f"{root}: sequence {name!r} has no JPEGImages/{resolution}/{name} or Annotations folder"
            )
        images = _images(frames_dir)
        annotations = _images(masks_dir, (".png",))
        if [p.stem for p in images] != [p.stem for p in annotations]:
            raise DatasetError(
                f"{masks_dir}: {len(annotations)} annotation PNG(s) for {len(images)} frame(s), or other names; "
                "every frame needs its annotation to be scored"
            )
        if len(images) < 3:
            raise DatasetError(
                f"{frames_dir}: {len(images)} frame(s); DAVIS scores frames 2..N-1, so at least 3"
            )
        first = read_label_png(annotations[0])
        objects = tuple(int(v) for v in np.unique(first) if v not in (0, VOID))
        if not objects:
            raise DatasetError(f"{annotations[0]}: no object on the first frame (nothing to follow)")
        found.append(DavisSequence(name, tuple(images), tuple(annotations), objects))
    return found


@dataclass(frozen=True)
class MotsSequence:
    """One MOTSChallenge sequence: its frames folder, ground-truth txt, length and frame size."""

    name: str
    images: Path
    gt: Path
    frames: int
    size: tuple[int, int]  # (height, width)


def _seqinfo(folder: Path) -> tuple[str, int | None]:
    """``imDir`` and ``seqLength`` of ``seqinfo.ini`` (``img1`` and ``None`` without one)."""
    ini = folder / "seqinfo.ini"
    if not ini.is_file():
        return "img1", None
    parser = configparser.ConfigParser()
    try:
        parser.read(ini)
        section = parser["Sequence"]
        return section.get("imDir", "img1"), int(section["seqLength"])
    except (configparser.Error, KeyError, ValueError) as exc:
        raise DatasetError(f"{ini}: not a MOTSChallenge seqinfo.ini ([Sequence] seqLength): {exc}") from None


def _first_gt_size(gt: Path) -> tuple[int, int] | None:
    with gt.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise DatasetError(
                    f"{gt}:{number}: {len(fields)} field(s); MOTS txt lines are "
                    "'time_frame id class_id img_height img_width rle'"
                )
            try:
                return int(fields[3]), int(fields[4])
            except ValueError:
                raise DatasetError(f"{gt}:{number}: img_height img_width are not integers") from None
    return None


def find_mots(root: str | Path, *, sequences: Sequence[str] | None = None) -> list[MotsSequence]:
    """The sequences of a MOTSChallenge split folder (every ``SEQ/gt/gt.txt``, or the ``sequences`` named),
    checked: ``seqLength`` frames in ``imDir``, the annotations' frame size is the images'."""
    from grounded.core.images import ImageLoadError, load_image

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root}: no such folder")
    names = (
        list(dict.fromkeys(sequences))
        if sequences
        else sorted(p.name for p in root.iterdir() if (p / "gt" / "gt.txt").is_file())
    )
    if not names:
        raise DatasetError(
            f"{root}: not a MOTSChallenge folder (no SEQ/gt/gt.txt; expected SEQ/seqinfo.ini, SEQ/gt/gt.txt, "
            "SEQ/img1/*.jpg per sequence)"
        )
    found = []
    for name in names:
        folder = root / name
        gt = folder / "gt" / "gt.txt"
        if not gt.is_file():
            raise DatasetError(f"{root}: sequence {name!r} has no gt/gt.txt")
        im_dir, length = _seqinfo(folder)
        images_dir = folder / im_dir
        images = _images(images_dir) if images_dir.is_dir() else []
        if not images:
            raise DatasetError(f"{images_dir}: no frame images")
        if length is not None and len(images) != length:
            raise DatasetError(
                f"{images_dir}: {len(images)} frame(s) but seqinfo.ini says seqLength={length}"
            )
        try:
            size = load_image(images[0]).size
        except ImageLoadError as exc:
            raise DatasetError(str(exc)) from None
        gt_size = _first_gt_size(gt)
        if gt_size is not None and gt_size != size:
            raise DatasetError(
                f"{gt}: masks of {gt_size[1]}x{gt_size[0]} for frames of {size[1]}x{size[0]} ({images[0].name})"
            )
        found.append(MotsSequence(name, images_dir, gt, len(images), size))
    return found
