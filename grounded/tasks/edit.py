"""``grounded edit``: select by words, then remove, replace or restyle the selection with Stable Diffusion."""

from __future__ import annotations

import argparse
import io
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXIT_NOTHING_SELECTED", "add_parser", "handler"]

EXIT_OK, EXIT_IMAGE_ERROR, EXIT_USAGE, EXIT_NOTHING_SELECTED = 0, 1, 2, 3

EXIT_CODES = """\
exit codes:
  0  the image was edited and written to --out
  1  the input image could not be read (missing, corrupt, not an image)
  2  bad options, a missing model or pipeline, or an output that would overwrite the input
  3  nothing was selected (no detection, or none left after --index/--min-score/--pick): the input
     image is written to --out unchanged (the file copied byte for byte when the format is the same)

Pixels outside the dilated + feathered mask are copied from the input bit for bit; write PNG (or
lossless WebP/TIFF/BMP) to keep them so in the file, since JPEG re-encodes every pixel.
Chain edits by feeding one edit's --out to the next edit."""

_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
_VERBS = {"replace": "replaced", "remove": "removed", "restyle": "restyled"}


class EditError(Exception):
    """A usage error of ``grounded edit``, reported as one line with exit code 2."""


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
    run.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a node parameter (YAML value), e.g. --set inpainter.scheduler=ddim",
    )
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    run.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="numeric precision of every model (default: the inpainter in fp16 on a GPU, fp32 on the CPU; "
        "the detector and segmenter in fp32)",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no summary line")
    p.set_defaults(handler=handler)


# ---------------------------------------------------------------------- options → pipeline
def _mode(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.remove:
        return "remove", None
    if args.restyle is not None:
        return "restyle", args.restyle
    return "replace", args.replace


def _overrides(args: argparse.Namespace, mode: str) -> dict[str, dict[str, Any]]:
    from grounded import cli

    nodes: dict[str, dict[str, Any]] = {"inpainter": {"mode": mode}}
    table = {
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
    for node, flags in table.items():
        for flag, param in flags:
            if getattr(args, flag) is not None:
                nodes.setdefault(node, {})[param] = getattr(args, flag)
    if args.no_fill_holes:
        nodes.setdefault("mask_ops", {})["fill_holes"] = False
    for node, params in cli._parse_settings(args.settings).items():
        nodes.setdefault(node, {}).update(params)
    return nodes


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_outputs(args: argparse.Namespace) -> list[Path]:
    outputs = [p for p in (args.out, args.compare, args.mask_out) if p is not None]
    for path in outputs:
        if path.suffix.lower() not in _FORMATS:
            raise EditError(f"cannot write {path}: use one of {', '.join(sorted(set(_FORMATS)))}")
        if _same_file(path, args.image):
            raise EditError(f"output {path} would overwrite the input image; choose another path")
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise EditError("--out, --compare and --mask-out must be different files")
    return outputs


# ---------------------------------------------------------------------- writing
def encode_image(array: np.ndarray, path: Path) -> bytes:
    """The bytes of ``array`` (uint8 RGB or gray) in the format of ``path``'s suffix (PNG, JPEG 95, WebP lossless,
    TIFF, BMP)."""
    from PIL import Image

    from grounded.core.files import encode_png

    fmt = _FORMATS[path.suffix.lower()]
    if fmt == "PNG":
        return encode_png(array)
    options: dict[str, Any] = (
        {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _write(path: Path, array: np.ndarray) -> None:
    from grounded.core.files import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_image(array, path))


def _write_unchanged(source: Path, pixels: np.ndarray, out: Path) -> None:
    """The input as ``out``: its bytes when the format is the same, else its decoded pixels re-encoded."""
    from grounded.core.files import atomic_write_bytes

    out.parent.mkdir(parents=True, exist_ok=True)
    if _FORMATS.get(source.suffix.lower()) == _FORMATS[out.suffix.lower()]:
        atomic_write_bytes(out, source.read_bytes())
    else:
        atomic_write_bytes(out, encode_image(pixels, out))


def side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``before | after`` as one uint8 RGB image."""
    return np.ascontiguousarray(np.concatenate([before, after], axis=1))


def mask_image(alpha: np.ndarray) -> np.ndarray:
    """The blend weights as 8-bit gray: 255 repainted, 0 untouched (any pixel changed is > 0)."""
    return np.where(alpha > 0, np.maximum(1, np.rint(alpha * 255.0)), 0).astype(np.uint8)


# ---------------------------------------------------------------------- the command
def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"grounded: {message}", file=sys.stderr)


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded edit``; returns the exit code (see ``grounded edit --help``)."""
    from grounded import cli

    try:
        return _edit(args)
    except (EditError, cli.CliError) as exc:
        print(f"grounded: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _edit(args: argparse.Namespace) -> int:
    from grounded.adapters.inpaint import resolve_pipeline_source
    from grounded.api import build_pipeline
    from grounded.core.images import ImageLoadError, load_image
    from grounded.core.prompts import Prompt

    mode, text = _mode(args)
    if text is not None and not text.strip():
        raise EditError(f"--{mode} needs a non-empty text")
    prompt = Prompt.of(args.select)
    _check_outputs(args)
    shared: dict[str, Any] = {}
    if args.device is not None:
        shared["device"] = args.device
    if args.precision is not None:
        shared["precision"] = args.precision
    pipeline = build_pipeline(args.pipeline, overrides=_overrides(args, mode), shared=shared)
    missing = {"images", "masks"} - set(pipeline.outputs)
    if missing or "images" not in pipeline.inputs or "prompt" not in pipeline.inputs:
        raise EditError(
            f"pipeline {pipeline.name!r} must take inputs images, prompt (and edit) and give outputs images, masks"
        )
    if "inpainter" in pipeline.graph:  # a missing inpainter model exits 2, even when nothing gets selected
        resolve_pipeline_source(pipeline.adapter("inpainter").get_params()["model"])
    try:
        image = load_image(args.image)
    except ImageLoadError as exc:
        print(f"grounded: error: {exc}", file=sys.stderr)
        return EXIT_IMAGE_ERROR
    inputs: dict[str, Any] = {"images": [image], "prompt": prompt}
    if text is not None:
        if "edit" not in pipeline.inputs:
            raise EditError(f"pipeline {pipeline.name!r} has no 'edit' input for the text to paint")
        inputs["edit"] = text
    result = pipeline.run(**inputs)
    mask = result["masks"][0]
    edited = result["images"][0]
    if mask.empty:
        _write_unchanged(args.image, image.pixels, args.out)
        print(
            f"grounded: nothing selected for {args.select!r} in {args.image.name} ({mask.reason}); "
            f"wrote the input unchanged to {args.out}",
            file=sys.stderr,
        )
        return EXIT_NOTHING_SELECTED
    _write(args.out, edited.pixels)
    if args.compare is not None:
        _write(args.compare, side_by_side(image.pixels, edited.pixels))
    if args.mask_out is not None:
        _write(args.mask_out, mask_image(mask.alpha))
    windows = result.get("windows")
    where = f" in a {windows[0].describe(image.size)}" if windows and windows[0] is not None else ""
    counts = Counter(mask.labels)
    labels = ", ".join(f"{n} {label}" for label, n in counts.items())
    _say(
        args,
        f"{_VERBS[mode]} {len(mask.selected)} instance(s) ({labels}) of {args.image.name}{where} -> {args.out}",
    )
    if _FORMATS[args.out.suffix.lower()] == "JPEG":
        _say(args, "note: JPEG re-encodes every pixel; write .png to keep pixels outside the mask exact")
    return EXIT_OK
