"""COCO-format datasets for evaluation, and the SegInW folder layout (25 datasets, one COCO file each)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounded.core.prompts import Prompt, PromptError

__all__ = [
    "SEGINW_ANNOTATION",
    "SEGINW_DATASETS",
    "SEGINW_SPLIT",
    "CocoDataset",
    "DatasetError",
    "SeginwLayout",
    "find_seginw",
    "load_coco_dataset",
]

#: The 25 SegInW datasets, in the order of the published table (SysCV/sam-hq ``seginw/README.md``).
SEGINW_DATASETS: tuple[str, ...] = (
    "Airplane-Parts",
    "Bottles",
    "Brain-Tumor",
    "Chicken",
    "Cows",
    "Electric-Shaver",
    "Elephants",
    "Fruits",
    "Garbage",
    "Ginger-Garlic",
    "Hand-Metal",
    "Hand",
    "House-Parts",
    "HouseHold-Items",
    "Nutterfly-Squireel",
    "Phones",
    "Poles",
    "Puppies",
    "Rail",
    "Salmon-Fillet",
    "Strawberry",
    "Tablets",
    "Toolkits",
    "Trash",
    "Watermelon",
)
#: Each dataset is evaluated on ``NAME/valid/`` with this annotation file (the published protocol).
SEGINW_SPLIT = "valid"
SEGINW_ANNOTATION = "_annotations_min1cat.coco.json"


class DatasetError(Exception):
    """A dataset that cannot be evaluated as given (missing file, bad annotations, unusable class names)."""


@dataclass(frozen=True)
class CocoDataset:
    """One COCO-format dataset: the ground truth, its images and the prompt built from its categories.

    Attributes:
        name: short name used in reports and file names.
        annotation_file: the COCO JSON file.
        image_dir: the folder ``file_name`` entries are relative to.
        gt: the parsed COCO ground truth (``images``, ``annotations``, ``categories``).
    """

    name: str
    annotation_file: Path
    image_dir: Path
    gt: dict[str, Any] = field(repr=False)

    @property
    def categories(self) -> list[dict[str, Any]]:
        """Categories in file order: class ``i`` of the prompt is ``categories[i]``."""
        return list(self.gt["categories"])

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.gt["categories"]]

    @property
    def images(self) -> list[dict[str, Any]]:
        return list(self.gt["images"])

    @property
    def num_annotations(self) -> int:
        return len(self.gt.get("annotations", []))

    @property
    def has_masks(self) -> bool:
        """Whether the ground truth has segmentations (mask AP needs them)."""
        anns = self.gt.get("annotations", [])
        return bool(anns) and all(ann.get("segmentation") for ann in anns)

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.image_dir / str(image["file_name"])

    def prompt(self) -> Prompt:
        """The category names, in file order, as one prompt (``"a . b . c"``; the caption ends with ``" ."``).

        Names are used as written (whitespace runs collapse to one space, as the published caption builder
        splits names on spaces). Names that cannot be told apart by the detector (equal up to case) or that
        contain ``.`` (the class separator) are refused: class ``i`` must stay category ``i``.
        """
        names = [str(c["name"]) for c in self.gt["categories"]]
        try:
            prompt = Prompt.of(names)
        except PromptError as exc:
            raise DatasetError(f"{self.name}: category names cannot form a prompt: {exc}") from None
        if len(prompt.classes) != len(names):
            raise DatasetError(
                f"{self.name}: category names repeat (ignoring case): {names}; each class must be its own name"
            )
        return prompt

    def coco(self) -> Any:
        """A ``pycocotools.coco.COCO`` index of the ground truth (built quietly)."""
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.gt
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def _few(values: Sequence[Any], limit: int = 5) -> str:
    return ", ".join(map(repr, values[:limit])) + (", ..." if len(values) > limit else "")


def _as_id(value: Any) -> int | str | None:
    """A COCO id (an int or a string), or ``None`` for anything else."""
    return value if isinstance(value, (int, str)) else None


def _check_references(gt: dict[str, Any], annotations: Path) -> None:
    """Refuse ground truth that COCOeval would silently leave out (the AP would then be wrong): annotations
    that are not mappings or whose ``image_id`` / ``category_id`` no image / category has."""
    anns = gt["annotations"]
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise DatasetError(f"{annotations}: 'annotations' must be a list of mappings")
    problems = []
    for key, entries, what in (
        ("image_id", gt["images"], "image"),
        ("category_id", gt["categories"], "category"),
    ):
        known = {_as_id(e.get("id")) for e in entries if isinstance(e, dict)} - {None}
        bad = [a for a in anns if _as_id(a.get(key)) not in known]
        if bad:
            problems.append(
                f"{len(bad)} annotation(s) name an unknown {what} (ids {_few([a.get('id') for a in bad])}; "
                f"{key} {_few(sorted({str(a.get(key)) for a in bad}))})"
            )
    if problems:
        raise DatasetError(
            f"{annotations}: {'; '.join(problems)}; COCO evaluation would drop them and the AP would be wrong: "
            "fix the file"
        )


def load_coco_dataset(annotations: str | Path, images: str | Path, name: str | None = None) -> CocoDataset:
    """Read a COCO-format annotation file; ``images`` is the folder its ``file_name`` entries are in."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise DatasetError(f"annotation file {annotations} not found")
    if not images.is_dir():
        raise DatasetError(f"image folder {images} not found")
    try:
        gt = json.loads(annotations.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{annotations}: not a readable JSON file ({exc})") from None
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
        raise DatasetError(f"{annotations}: a COCO file needs an 'images' list")
    if not isinstance(gt.get("categories"), list) or not gt["categories"]:
        raise DatasetError(f"{annotations}: a COCO file needs a non-empty 'categories' list")
    gt.setdefault("annotations", [])
    ids = [c.get("id") for c in gt["categories"]]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{annotations}: category ids repeat: {ids}")
    _check_references(gt, annotations)
    return CocoDataset(name=name or annotations.stem, annotation_file=annotations, image_dir=images, gt=gt)


@dataclass(frozen=True)
class SeginwLayout:
    """What a SegInW root folder holds: datasets found, benchmark datasets missing, other folders ignored."""

    root: Path
    found: tuple[tuple[str, Path], ...]  # (name, annotation file)
    missing: tuple[str, ...]
    ignored: tuple[str, ...]


def find_seginw(root: str | Path, names: Sequence[str] | None = None) -> SeginwLayout:
    """Locate ``ROOT/NAME/valid/_annotations_min1cat.coco.json`` for the SegInW datasets (all 25 by default).

    Requested names must be SegInW names; a requested dataset without its annotation file is *missing*;
    folders that are not SegInW datasets are listed as *ignored*.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"SegInW folder {root} not found")
    wanted = list(SEGINW_DATASETS if names is None else names)
    unknown = [n for n in wanted if n not in SEGINW_DATASETS]
    if unknown:
        raise DatasetError(
            f"not SegInW datasets: {', '.join(unknown)}; the 25 are: {', '.join(SEGINW_DATASETS)}"
        )
    found, missing = [], []
    for name in wanted:
        path = root / name / SEGINW_SPLIT / SEGINW_ANNOTATION
        if path.is_file():
            found.append((name, path))
        else:
            missing.append(name)
    ignored = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in SEGINW_DATASETS)
    return SeginwLayout(root=root, found=tuple(found), missing=tuple(missing), ignored=tuple(ignored))
