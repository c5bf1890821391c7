"""``grounded edit``: select by words, then remove, replace or restyle the selection with Stable Diffusion."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from grounded.cli.common import (
    add_device_option,
    add_overwrite_option,
    add_quiet_option,
    add_set_option,
    params_from,
    parse_settings,
    shared_params,
)
from grounded.core.errors import EXIT_IMAGE_ERRORS, EXIT_OK

__all__ = ["EXIT_NOTHING_SELECTED", "add_parser", "handler"]

EXIT_NOTHING_SELECTED = 3  # edit's own code; 0, 1 and 2 are those of grounded.core.errors

EXIT_CODES = """\
exit codes:
  0  the image was edited and written to --out
  1  the input image could not be read (missing, corrupt, not an image)
  2  bad options, a missing model or pipeline, an output that would overwrite the input, or an
     output file that exists already (replaced only with --overwrite; the input never is)
  3  nothing was selected (no detection, or none left after --index/--min-score/--pick): the input
     image is written to --out unchanged (the file copied byte for byte when the format is the same)

Pixels outside the dilated + feathered mask are copied from the input bit for bit; write PNG (or
lossless WebP/TIFF/BMP) to keep them so in the file, since JPEG re-encodes every pixel.
Chain edits by feeding one edit's --out to the next edit."""

_VERBS = {"replace": "replaced", "remove": "removed", "restyle": "restyled"}


def add_parser(subparsers: Any) -> None:
    """Add ``grounded edit`` to the ``grounded`` command."""
    p = subparsers.add_parser(
        "edit",
        help="select by words, then remove, replace or restyle with Stable Diffusion inpainting",
        description="Select objects by text (Grounding DINO -> SAM), turn their masks into one edit mask "
        "(union, fill holes, erode/dilate, feather) and inpaint it with Stable Diffusion in a context window "
        "around the mask at the model's working size, pasted back at full resolution. Examples: "
        'grounded edit room.jpg --select "sofa" --replace "a green leather armchair" --out edited.png; '
        'grounded edit street.jpg --select "car . person" --remove --out clean.png; '
        'grounded edit photo.jpg --select "sky" --restyle "sunset, dramatic clouds" --seed 7 --out sky.png',
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="the image to edit")
    p.add_argument(
        "--select", "-s", required=True, help='what to edit: classes separated by " . ", e.g. "car . person"'
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--replace", metavar="TEXT", help="paint TEXT in place of the selection")
    mode.add_argument("--remove", action="store_true", help="remove the selection (paint the background)")
    mode.add_argument(
        "--restyle", metavar="TEXT", help="repaint the selection in the style of TEXT, keeping its layout"
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="the edited image (PNG keeps pixels exact)")
    p.add_argument("--compare", type=Path, help="also write the input and the edit side by side here")
    p.add_argument(
        "--mask-out",
        type=Path,
        help="also write the mask used here (8-bit: 255 repainted, 0 untouched, between: feathered blend)",
    )
    add_overwrite_option(p)
    gen = p.add_argument_group("inpainting")
    gen.add_argument(
        "--inpainter",
        help="diffusers inpainting hub id or local folder "
        "(default: stable-diffusion-v1-5/stable-diffusion-inpainting)",
    )
    gen.add_argument("--seed", type=int, help="random seed; the same seed gives the same output (default 0)")
    gen.add_argument("--steps", type=int, help="denoising steps (default 30)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    gen.add_argument(
        "--strength",
        type=float,
        help="how much of the region is re-noised, in (0, 1] (default: 1.0 for replace/remove, "
        "0.99 with SDXL, 0.75 for restyle)",
    )
    gen.add_argument(
        "--negative-prompt",
        help="what to avoid (default: blur, artefacts, text; in --remove mode also the removed classes)",
    )
    gen.add_argument(
        "--scheduler",
        help="ddim, pndm, euler, euler_a, lms, dpm++, dpm++_karras, unipc or a diffusers scheduler class "
        "(default: the model's own)",
    )
    gen.add_argument(
        "--resolution",
        type=int,
        help="working resolution: the window is resized to about this squared (default: the model's, "
        "512 for SD 1.5/2, 1024 for SDXL)",
    )
    gen.add_argument("--padding", type=int, help="pixels of context around the mask (default 32)")
    sel = p.add_argument_group("selection and mask")
    sel.add_argument(
        "--detector", help="detector hub id or local folder (default: IDEA-Research/grounding-dino-tiny)"
    )
    sel.add_argument("--segmenter", help="SAM hub id or local folder (default: facebook/sam-vit-base)")
    sel.add_argument("--box-threshold", type=float, help="minimum class score of a box (default 0.35)")
    sel.add_argument("--text-threshold", type=float, help="token score delimiting the phrase (default 0.25)")
    sel.add_argument(
        "--pick",
        choices=("all", "largest", "best"),
        help="all instances (default), the largest mask, or the best score",
    )
    sel.add_argument(
        "--index",
        type=int,
        action="append",
        help="keep only detection INDEX (0 = highest score); repeat for several",
    )
    sel.add_argument("--min-score", type=float, help="keep only detections scoring at least this (default 0)")
    sel.add_argument("--dilate", type=int, help="grow the mask by this many pixels (default 8)")
    sel.add_argument("--erode", type=int, help="shrink the mask by this many pixels first (default 0)")
    sel.add_argument(
        "--feather", type=int, help="width of the soft blend band outside the mask, pixels (default 8)"
    )
    sel.add_argument("--no-fill-holes", action="store_true", help="keep holes inside the masks")
    run = p.add_argument_group("pipeline and device")
    run.add_argument(
        "--pipeline",
        default="grounded_sam_edit",
        help="bundled pipeline name or YAML path (default: grounded_sam_edit)",
    )
    add_set_option(run, help="override a node parameter (YAML value), e.g. --set inpainter.scheduler=ddim")
    add_device_option(run)
    run.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="numeric precision of every model (default: the inpainter in fp16 on a GPU, fp32 on the CPU; "
        "the detector and segmenter in fp32)",
    )
    add_quiet_option(run, help="no summary line")
    p.set_defaults(handler=handler)


# ---------------------------------------------------------------------- options → pipeline
_NODE_FLAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "detector": (
        ("detector", "model"),
        ("box_threshold", "box_threshold"),
        ("text_threshold", "text_threshold"),
    ),
    "segmenter": (("segmenter", "model"),),
    "mask_ops": (
        ("pick", "pick"),
        ("index", "indices"),
        ("min_score", "min_score"),
        ("dilate", "dilate"),
        ("erode", "erode"),
        ("feather", "feather"),
    ),
    "inpainter": (
        ("inpainter", "model"),
        ("seed", "seed"),
        ("steps", "steps"),
        ("guidance", "guidance_scale"),
        ("strength", "strength"),
        ("negative_prompt", "negative_prompt"),
        ("scheduler", "scheduler"),
        ("resolution", "resolution"),
        ("padding", "padding"),
    ),
}


def _mode(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.remove:
        return "remove", None
    if args.restyle is not None:
        return "restyle", args.restyle
    return "replace", args.replace


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    nodes = {node: params for node, flags in _NODE_FLAGS.items() if (params := params_from(args, flags))}
    if args.no_fill_holes:
        nodes.setdefault("mask_ops", {})["fill_holes"] = False
    for node, params in parse_settings(args.settings).items():
        nodes.setdefault(node, {}).update(params)
    return nodes


# ---------------------------------------------------------------------- the command
def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"grounded: {message}", file=sys.stderr)


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded edit``; returns the exit code (see ``grounded edit --help``)."""
    from grounded.core.images import ImageLoadError
    from grounded.tasks.edit import FORMATS, edit_image

    mode, text = _mode(args)
    try:
        result = edit_image(
            args.image,
            args.select,
            args.out,
            mode=mode,
            text=text,
            compare=args.compare,
            mask_out=args.mask_out,
            pipeline=args.pipeline,
            overrides=_overrides(args),
            shared=shared_params(args),
            overwrite=args.overwrite,
        )
    except ImageLoadError as exc:
        print(f"grounded: error: {exc}", file=sys.stderr)
        return EXIT_IMAGE_ERRORS
    mask = result.mask
    if mask.empty:
        print(
            f"grounded: nothing selected for {args.select!r} in {args.image.name} ({mask.reason}); "
            f"wrote the input unchanged to {args.out}",
            file=sys.stderr,
        )
        return EXIT_NOTHING_SELECTED
    where = f" in a {result.window}" if result.window else ""
    labels = ", ".join(f"{n} {label}" for label, n in Counter(mask.labels).items())
    _say(
        args,
        f"{_VERBS[mode]} {len(mask.selected)} instance(s) ({labels}) of {args.image.name}{where} -> {args.out}",
    )
    if FORMATS[args.out.suffix.lower()] == "JPEG":
        _say(args, "note: JPEG re-encodes every pixel; write .png to keep pixels outside the mask exact")
    return EXIT_OK
