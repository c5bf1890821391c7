"""``grounded convert``: an official checkpoint file to a transformers-format folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grounded.core.errors import EXIT_OK

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded convert``."""
    convert = subparsers.add_parser(
        "convert",
        help="convert an official checkpoint file to a transformers-format folder",
        description="Convert an official checkpoint (segment-anything sam_vit_{b,l,h}_*.pth, sam-hq sam_hq_vit_*.pth, "
        "GroundingDINO groundingdino_swint_ogc.pth / groundingdino_swinb_cogcoor.pth, sam2 sam2.1_hiera_*.pt) "
        "to a transformers-format folder (model + processor) that loads fast. The variant is read from the file's "
        "keys and shapes; the file is unpickled with weights_only=True (tensors only, no code runs).",
    )
    convert.add_argument("checkpoint", type=Path, help="the official .pth file")
    convert.add_argument(
        "out_dir",
        type=Path,
        help="folder to write: a new one, an empty one, or a previous grounded conversion (replaced atomically); "
        "anything else (a file, a folder with other files, ., .., the checkpoint's folder) is refused",
    )
    convert.add_argument(
        "--text-encoder",
        default=None,
        metavar="ID_OR_DIR",
        help="Grounding DINO files (groundingdino_swint_ogc.pth, groundingdino_swinb_cogcoor.pth): the BERT "
        "tokenizer they leave out, a hub id or local folder (default: $GROUNDED_TEXT_ENCODER, else bert-base-uncased)",
    )
    convert.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PIXELS",
        help="SAM 2 / 2.1 files (sam2.1_hiera_tiny.pt, ...): the square input side, which the file does not record "
        "(default 1024, as in every official config)",
    )
    convert.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Convert; returns the exit code."""
    from grounded.models.checkpoints import convert_checkpoint

    out = convert_checkpoint(
        args.checkpoint, args.out_dir, text_encoder=args.text_encoder, image_size=args.image_size
    )
    print(f"grounded: wrote {out}", file=sys.stderr)
    return EXIT_OK
