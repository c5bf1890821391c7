"""``grounded granularity``: every mask level for a click or a box, drawn one colour per level."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_parser"]

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def _pairs(text: str, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated numbers, got {text!r}")
    return values


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "granularity",
        help="all mask levels (part -> whole) for a click or a box",
        description="Decode every granularity level a SAM-family model gives for each --point or --box, ordered "
        "finest to coarsest, near-duplicates (IoU >= 0.9) merged, nesting checked (a finer level should lie "
        "inside the next: containment >= 0.9, violations reported). Writes NAME_levels.png (one colour per "
        "level, legend) and NAME_levels.json (levels with area, score, RLE mask, containment).",
    )
    p.add_argument("image", type=Path, help="the image")
    p.add_argument(
        "--point", action="append", default=[], metavar="X,Y", help="a click in pixels (repeatable)"
    )
    p.add_argument(
        "--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="a box in pixels (repeatable)"
    )
    p.add_argument(
        "--segmenter",
        default=None,
        help="SAM / HQ-SAM / SAM 2 hub id, folder or .pth (default facebook/sam-vit-base); for Semantic-SAM "
        "an official .pth (swint_only_sam_many2many.pth, swinl_only_sam_many2many.pth) or a converted folder",
    )
    p.add_argument(
        "--adapter", choices=("sam", "sam_hq", "sam2", "semantic_sam"), default="sam", help="segmenter family"
    )
    p.add_argument(
        "--image-size", type=int, default=640, help="semantic_sam: short side the image is resized to (640)"
    )
    p.add_argument("--levels", default="all", help="all (default), part, whole, or level numbers such as 1,3")
    p.add_argument(
        "--everything",
        action="store_true",
        help="segment the whole image at one --level from a grid of clicks (no --point / --box)",
    )
    p.add_argument("--level", type=int, default=1, help="with --everything: the level (1 = finest)")
    p.add_argument(
        "--points-per-side", type=int, default=32, help="with --everything: grid size (default 32)"
    )
    p.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        help="with --everything: drop masks whose predicted IoU is below this (default 0.88)",
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.set_defaults(handler=run)


def _levels_arg(text: str) -> Any:
    if text in ("all", "part", "whole"):
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        from grounded.cli import CliError

        raise CliError(f"--levels must be all, part, whole or numbers like 1,3; got {text!r}") from None


def draw_levels(
    pixels: np.ndarray, levels: list[Any], prompts: list[list[float]] | None = None
) -> np.ndarray:
    """Each level filled in its colour (coarsest first, so finer levels stay visible), the prompts, a legend."""
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
            draw.rectangle(prompt, outline=(255, 255, 255), width=2)
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


def _segmenter(args: argparse.Namespace) -> Any:
    from grounded.adapters import SAM, SAM2, SAMHQ
    from grounded.adapters.semantic_sam import SemanticSAM
    from grounded.cli import CliError

    if args.adapter == "semantic_sam":
        if not args.segmenter:
            raise CliError("--adapter semantic_sam needs --segmenter: an official .pth or a converted folder")
        return SemanticSAM(model=args.segmenter, image_size=args.image_size, device=args.device)
    return {"sam": SAM, "sam_hq": SAMHQ, "sam2": SAM2}[args.adapter](
        model=args.segmenter or "facebook/sam-vit-base", device=args.device
    )


def _run_everything(args: argparse.Namespace) -> int:
    import json

    from grounded.cli import CliError
    from grounded.core.files import atomic_write_bytes, atomic_write_text, encode_png
    from grounded.core.images import load_image
    from grounded.tasks.everything import segment_everything

    if args.point or args.box:
        raise CliError("--everything uses a grid of clicks: give no --point / --box")
    if args.level < 1 or args.points_per_side < 1:
        raise CliError("--level and --points-per-side must be at least 1")
    image = load_image(args.image)
    try:
        det = segment_everything(
            _segmenter(args),
            image,
            args.level,
            points_per_side=args.points_per_side,
            pred_iou_thresh=args.pred_iou_thresh,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    height, width = image.size
    canvas = image.pixels.astype(np.float32).copy()
    rng = np.random.default_rng(0)
    masks = det.masks.cpu().numpy() if det.masks is not None else np.zeros((0, height, width), bool)
    for k in np.argsort(
        -masks.reshape(len(masks), -1).sum(1), kind="stable"
    ):  # largest first, smaller on top
        canvas[masks[k]] = 0.45 * canvas[masks[k]] + 0.55 * rng.integers(0, 256, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.image.stem
    atomic_write_bytes(
        args.out / f"{name}_level{args.level}.png", encode_png(canvas.round().clip(0, 255).astype(np.uint8))
    )
    doc = {
        "image": {"file_name": args.image.name, "height": height, "width": width},
        "level": args.level,
        "points_per_side": args.points_per_side,
        "detections": det.to_coco_records(),
    }
    atomic_write_text(args.out / f"{name}_level{args.level}.json", json.dumps(doc))
    print(f"grounded: {len(det)} mask(s) at level {args.level}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from grounded.cli import CliError
    from grounded.core.files import atomic_write_bytes, atomic_write_text, encode_png
    from grounded.core.images import load_image
    from grounded.core.rle import encode_masks

    if args.everything:
        return _run_everything(args)

    try:
        points = [_pairs(t, 2, "--point") for t in args.point]
        boxes = [_pairs(t, 4, "--box") for t in args.box]
    except argparse.ArgumentTypeError as exc:
        raise CliError(str(exc)) from None
    if bool(points) == bool(boxes):
        raise CliError("give one or more --point or one or more --box (not both)")
    which = _levels_arg(args.levels)
    image = load_image(args.image)
    height, width = image.size
    for x, y, *_ in points + boxes:
        if not (0 <= x <= width and 0 <= y <= height):
            raise CliError(f"prompt {x:g},{y:g} lies outside the {width}x{height} image")
    segmenter = _segmenter(args)
    results = segmenter.predict_levels(
        image,
        points=torch.tensor(points) if points else None,
        boxes=torch.tensor(boxes) if boxes else None,
        levels=which,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.image.stem
    atomic_write_bytes(
        args.out / f"{name}_levels.png", encode_png(draw_levels(image.pixels, results, points or boxes))
    )
    doc = {
        "image": {"file_name": args.image.name, "height": height, "width": width},
        "prompts": [
            {
                "point" if points else "box": prompt,
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
            for prompt, r in zip(points or boxes, results, strict=True)
        ],
    }
    import json

    atomic_write_text(args.out / f"{name}_levels.json", json.dumps(doc))
    for i, r in enumerate(results):
        note = f"; nesting violated at levels {list(r.violations)}" if r.violations else ""
        print(f"grounded: prompt {i + 1}: {len(r)} level(s), areas {list(r.areas)}{note}", file=sys.stderr)
    return 0
