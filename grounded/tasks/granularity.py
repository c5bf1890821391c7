"""Every mask level (part -> whole) for clicks or boxes, or the whole image at one level, written as a drawing
(one colour per level / mask) and JSON with RLE masks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grounded.core.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from grounded.core.detections import Detections

__all__ = ["ADAPTERS", "draw_levels", "everything_files", "level_files", "make_segmenter"]

#: the segmenter families that decode granularity levels
ADAPTERS = ("sam", "sam_hq", "sam2", "semantic_sam")
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def draw_levels(
    pixels: np.ndarray, levels: list[Any], prompts: Sequence[Sequence[float]] | None = None
) -> np.ndarray:
    """Each level filled in its colour (coarsest first, so finer levels stay visible), the prompts, a legend."""
    import numpy as np
    from PIL import Image, ImageDraw

    canvas = pixels.astype(np.float32).copy()
    for prompt_levels in levels:
        for k in reversed(range(len(prompt_levels))):
            colour = np.array(_PALETTE[(prompt_levels.levels[k] - 1) % len(_PALETTE)], np.float32)
            mask = prompt_levels.masks[k].cpu().numpy()
            canvas[mask] = 0.45 * canvas[mask] + 0.55 * colour
    image = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for prompt in prompts or []:
        if len(prompt) == 2:
            x, y = prompt
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(255, 255, 255), width=2)
        else:
            draw.rectangle(list(prompt), outline=(255, 255, 255), width=2)
    shown = sorted({lv for p in levels for lv in p.levels})
    for row, level in enumerate(shown):
        y = 6 + 18 * row
        draw.rectangle(
            [6, y, 20, y + 14], fill=_PALETTE[(level - 1) % len(_PALETTE)], outline=(255, 255, 255)
        )
        name = "finest" if level == 1 else ("coarsest" if level == max(shown) else "")
        draw.text((26, y), f"level {level} {name}".strip(), fill=(255, 255, 255))
    return np.asarray(image)


def _labels_of(levels: Any, k: int) -> dict[str, Any]:
    """The object / part label of level ``k`` when the segmenter labels its masks (Semantic-SAM with a vocabulary)."""
    out: dict[str, Any] = {}
    if getattr(levels, "labels", ()):
        out["label"], out["label_score"] = levels.labels[k], round(levels.label_scores[k], 6)
    if any(getattr(levels, "part_labels", ())):
        out["part_label"], out["part_score"] = levels.part_labels[k], round(levels.part_scores[k], 6)
    return out


def make_segmenter(
    adapter: str = "sam", model: str | None = None, *, image_size: int = 640, device: str = "auto"
) -> Any:
    """A segmenter of one of the :data:`ADAPTERS` (SAM family: ``model`` defaults to facebook/sam-vit-base;
    Semantic-SAM needs ``model`` and resizes the short side to ``image_size``)."""
    from grounded.adapters import SAM, SAM2, SAMHQ
    from grounded.adapters.semantic_sam import SemanticSAM

    if adapter == "semantic_sam":
        if not model:
            raise UserError(
                "--adapter semantic_sam needs --segmenter: an official .pth or a converted folder"
            )
        return SemanticSAM(model=model, image_size=image_size, device=device)
    return {"sam": SAM, "sam_hq": SAMHQ, "sam2": SAM2}[adapter](
        model=model or "facebook/sam-vit-base", device=device
    )


@contextlib.contextmanager
def _results(
    out: Path, name: str, settings: dict[str, Any], overwrite: bool
) -> Iterator[Callable[[np.ndarray, dict[str, Any]], None]]:
    """Prepare ``out`` (:class:`~grounded.core.files.OutputFolder`), check ``NAME.png`` / ``NAME.json`` may be
    written (:func:`~grounded.tasks.outputs.check_results`), and give the function that writes them, each
    recording ``settings``."""
    from grounded.core.files import (
        OutputFolder,
        atomic_write_bytes,
        atomic_write_text,
        compact_json,
        encode_png,
    )
    from grounded.tasks.outputs import MARKER, check_results, normalized

    settings = normalized(settings)
    with OutputFolder(out) as folder:
        drawing_path, doc_path = folder.path / f"{name}.png", folder.path / f"{name}.json"
        check_results([drawing_path, doc_path], settings, overwrite=overwrite)

        def write(drawing: np.ndarray, doc: dict[str, Any]) -> None:
            atomic_write_bytes(drawing_path, encode_png(drawing, {MARKER: compact_json(settings)}))
            atomic_write_text(doc_path, json.dumps({**doc, MARKER: settings}))

        yield write


def _name(image: Path, suffix: str) -> str:
    from grounded.tasks.outputs import fit_name

    return fit_name(image.stem, len(suffix) + len(".json")) + suffix


def level_files(
    image: Path,
    out: Path,
    *,
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    levels: str | list[int] = "all",
    adapter: str = "sam",
    model: str | None = None,
    image_size: int = 640,
    device: str = "auto",
    overwrite: bool = False,
) -> list[Any]:
    """Decode the ``levels`` (``all``, ``part``, ``whole`` or level numbers) of each click ``(x, y)`` or each box
    ``(x0, y0, x1, y1)`` (pixels; clicks or boxes, not both) and write ``OUT/NAME_levels.png`` and
    ``NAME_levels.json``; returns each prompt's levels. Existing files there that are not results of the same
    settings are refused before any model is loaded, unless ``overwrite``."""
    import torch

    from grounded.core.images import load_image
    from grounded.core.rle import encode_masks

    if bool(points) == bool(boxes):
        raise UserError("give one or more --point or one or more --box (not both)")
    prompts = [list(p) for p in (points or boxes)]
    kind = "point" if points else "box"
    settings: dict[str, Any] = {"job": "granularity", "image": image.name, kind: prompts, "levels": levels}
    settings.update(adapter=adapter, model=model, image_size=image_size)
    loaded = load_image(image)
    height, width = loaded.size
    for x, y in (xy for p in prompts for xy in zip(p[::2], p[1::2], strict=True)):  # a click, a box's corners
        if not (0 <= x <= width and 0 <= y <= height):
            raise UserError(f"prompt {x:g},{y:g} lies outside the {width}x{height} image")
    with _results(out, _name(image, "_levels"), settings, overwrite) as write:
        segmenter = make_segmenter(adapter, model, image_size=image_size, device=device)
        try:
            results = segmenter.predict_levels(
                loaded,
                points=torch.tensor(prompts) if points else None,
                boxes=torch.tensor(prompts) if boxes else None,
                levels=levels,
            )
        except ValueError as exc:  # level numbers this prompt does not have
            raise UserError(str(exc)) from None
        doc = {
            "image": {"file_name": image.name, "height": height, "width": width},
            "prompts": [
                {
                    kind: prompt,
                    "levels": [
                        {"level": lv, "area": area, "score": round(float(score), 6), "segmentation": rle}
                        | _labels_of(r, k)
                        for k, (lv, area, score, rle) in enumerate(
                            zip(r.levels, r.areas, r.scores.tolist(), encode_masks(r.masks), strict=True)
                        )
                    ],
                    "containment": [round(c, 6) for c in r.containment],
                    "nesting_violations": list(r.violations),
                }
                for prompt, r in zip(prompts, results, strict=True)
            ],
        }
        write(draw_levels(loaded.pixels, results, prompts), doc)
    return list(results)


def everything_files(
    image: Path,
    out: Path,
    level: int = 1,
    *,
    points_per_side: int = 32,
    pred_iou_thresh: float = 0.88,
    adapter: str = "sam",
    model: str | None = None,
    image_size: int = 640,
    device: str = "auto",
    overwrite: bool = False,
) -> Detections:
    """Segment the whole image at ``level`` from a grid of clicks and write ``OUT/NAME_levelL.png`` (one random
    colour per mask) and ``NAME_levelL.json``; returns the masks. Existing files are handled as by
    :func:`level_files`."""
    import numpy as np

    from grounded.core.images import load_image
    from grounded.tasks.everything import segment_everything

    settings: dict[str, Any] = {
        "job": "everything",
        "image": image.name,
        "level": level,
        "points_per_side": points_per_side,
    }
    settings.update(pred_iou_thresh=pred_iou_thresh, adapter=adapter, model=model, image_size=image_size)
    loaded = load_image(image)
    with _results(out, _name(image, f"_level{level}"), settings, overwrite) as write:
        try:
            det = segment_everything(
                make_segmenter(adapter, model, image_size=image_size, device=device),
                loaded,
                level,
                points_per_side=points_per_side,
                pred_iou_thresh=pred_iou_thresh,
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None
        height, width = loaded.size
        canvas = loaded.pixels.astype(np.float32).copy()
        rng = np.random.default_rng(0)
        masks = det.masks.cpu().numpy() if det.masks is not None else np.zeros((0, height, width), bool)
        for k in np.argsort(
            -masks.reshape(len(masks), -1).sum(1), kind="stable"
        ):  # largest first, small on top
            canvas[masks[k]] = 0.45 * canvas[masks[k]] + 0.55 * rng.integers(0, 256, 3)
        doc = {
            "image": {"file_name": image.name, "height": height, "width": width},
            "level": level,
            "points_per_side": points_per_side,
            "detections": det.to_coco_records(),
        }
        write(canvas.round().clip(0, 255).astype(np.uint8), doc)
    return det
