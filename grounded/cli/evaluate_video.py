"""``grounded eval video``: DAVIS 2017 J&F (prompted video object segmentation) and MOTSChallenge HOTA / MOTSA /
IDF1 (text-prompted tracking), computed by TrackEval."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grounded.cli.common import add_device_option, add_quiet_option, add_set_option
from grounded.cli.track import tracking_from_args
from grounded.core.errors import EXIT_OK, UserError

__all__ = ["add_parser", "handler"]


def add_parser(sub: Any) -> None:
    """Add ``video`` to the subcommands of ``grounded eval``."""
    p = sub.add_parser(
        "video",
        help="video: DAVIS 2017 J&F (prompted VOS) or MOTSChallenge HOTA / MOTSA / IDF1 (text-prompted tracking)",
        description="Evaluate video segmentation and tracking with TrackEval. --format davis: DATA is a DAVIS "
        "2017 folder (JPEGImages/480p/SEQ/*.jpg, Annotations/480p/SEQ/*.png, ImageSets/2017/SPLIT.txt); the "
        "tracker is given each object's first-frame mask and follows it (semi-supervised protocol: first and "
        "last frame not scored, result id k scored against object k); reports J&F, J, F. --format mots: DATA "
        "is a MOTSChallenge split folder (SEQ/seqinfo.ini, SEQ/gt/gt.txt, SEQ/img1/*.jpg); the whole tracking "
        "job runs from the text prompt alone (default: the evaluated class names, 'pedestrian'); reports HOTA, "
        "DetA, AssA, MOTSA, IDF1, IDSW. Results go to OUT/predictions (DAVIS PNGs per SEQ, or SEQ.txt); "
        "--predictions scores such a folder without running a model. Writes OUT/report.md and report.json.",
    )
    p.add_argument("--data", type=Path, required=True, help="the dataset folder (layout: see --format)")
    p.add_argument("--format", choices=("davis", "mots"), required=True, help="davis (J&F) or mots (HOTA)")
    p.add_argument("--out", "-o", type=Path, required=True, help="report folder (created if missing)")
    p.add_argument(
        "--predictions",
        type=Path,
        help="score these results (DAVIS: SEQ/FRAME.png indexed PNGs; MOTS: SEQ.txt) instead of running a model",
    )
    p.add_argument("--sequences", help="comma-separated sequences (default: the split's / all with gt)")
    p.add_argument("--split", default="val", help="DAVIS: ImageSets/2017/SPLIT.txt (default val)")
    p.add_argument("--resolution", default="480p", help="DAVIS: 480p (default) or Full-Resolution")
    p.add_argument(
        "--pipeline",
        default="track_grounded_sam2",
        help="tracking pipeline name or YAML with a 'tracker' node (default: track_grounded_sam2; DAVIS uses "
        "only its tracker)",
    )
    p.add_argument("--tracker", help="video tracker hub id or local folder (e.g. facebook/sam2.1-hiera-tiny)")
    p.add_argument("--detector", help="MOTS: detector hub id or local folder")
    p.add_argument("--segmenter", help="MOTS: key-frame segmenter hub id or local folder")
    p.add_argument("--box-threshold", type=float, help="MOTS: minimum class score of a box")
    p.add_argument("--text-threshold", type=float, help="MOTS: token score delimiting the matched phrase")
    p.add_argument(
        "--prompt", "-p", help="MOTS: the text for the evaluated class (default 'pedestrian'), e.g. 'person'"
    )
    p.add_argument("--detect-every", type=int, metavar="N", help="MOTS: detect every N frames (10)")
    p.add_argument("--max-lost", type=int, metavar="K", help="MOTS: key frames a track may be missed (2)")
    p.add_argument("--reverse", action="store_true", help="MOTS: follow new objects backwards")
    add_set_option(p, "set a node parameter, e.g. tracker.max_cond_frames=2 (repeatable)")
    add_device_option(p)
    add_quiet_option(p)
    p.set_defaults(handler=handler)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded eval video``; returns the exit code."""
    from grounded.core.files import OutputFolder
    from grounded.evaluation.datasets import DatasetError
    from grounded.evaluation.video_benchmarks import evaluate_davis, evaluate_mots_dataset

    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    if args.format == "davis" and args.prompt:
        raise UserError("--prompt is for --format mots; DAVIS objects are given by their first-frame masks")
    with OutputFolder(args.out) as out:
        tracking = None if args.predictions is not None else tracking_from_args(args)
        source = {"tracking": tracking, "predictions": args.predictions}
        try:
            if args.format == "davis":
                report = evaluate_davis(
                    args.data,
                    out.path,
                    split=args.split,
                    sequences=sequences,
                    resolution=args.resolution,
                    progress=not args.quiet,
                    **source,
                )
            else:
                report = evaluate_mots_dataset(
                    args.data,
                    out.path,
                    prompt=args.prompt,
                    sequences=sequences,
                    detect_every=args.detect_every,
                    max_lost=args.max_lost,
                    reverse=args.reverse,
                    progress=not args.quiet,
                    **source,
                )
        except DatasetError as exc:
            raise UserError(str(exc)) from None
    s = report["summary"]
    if args.format == "davis":
        head = (
            f"J&F {_percent(s['J&F'])} (J {_percent(s['J'])}, F {_percent(s['F'])}) over {s['sequences']} "
            f"sequence(s), {s['objects']} object(s)"
        )
    else:
        head = (
            f"HOTA {_percent(s['HOTA'])} (MOTSA {_percent(s['MOTSA'])}, IDF1 {_percent(s['IDF1'])}, "
            f"IDSW {s['IDSW']:.0f}) over {s['sequences']} sequence(s)"
        )
    print(f"grounded eval video: {head} -> {args.out / 'report.md'}", file=sys.stderr)
    return EXIT_OK
