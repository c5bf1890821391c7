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
        "--segmenter", default="facebook/sam-vit-base", help="SAM / HQ-SAM / SAM 2 hub id, folder or .pth"
    )
    p.add_argument("--adapter", choices=("sam", "sam_hq", "sam2"), default="sam", help="segmenter family")
    p.add_argument("--levels", default="all", help="all (default), part, whole, or level numbers such as 1,3")
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


def run(args: argparse.Namespace) -> int:
    import torch

    from grounded.adapters import SAM, SAM2, SAMHQ
    from grounded.cli import CliError
    from grounded.export import atomic_write_bytes, atomic_write_text, encode_png
    from grounded.images import load_image
    from grounded.rle import encode_masks

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
    segmenter = {"sam": SAM, "sam_hq": SAMHQ, "sam2": SAM2}[args.adapter](
        model=args.segmenter, device=args.device
    )
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
                    for lv, area, score, rle in zip(
                        r.levels, r.areas, r.scores.tolist(), encode_masks(r.masks), strict=True
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
