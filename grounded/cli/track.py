"""``grounded track``: text-prompted segmentation and tracking of a video, with ids stable across frames."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grounded.cli.common import (
    DETECTOR_FLAGS,
    add_device_option,
    add_overwrite_option,
    add_quiet_option,
    add_set_option,
    params_from,
    parse_settings,
)
from grounded.core.errors import EXIT_IMAGE_ERRORS, EXIT_OK

__all__ = ["add_parser", "handler", "tracking_from_args"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded track``."""
    p = subparsers.add_parser(
        "track",
        help="text-prompted video segmentation and tracking (stable ids)",
        description="Detect the prompt's classes on key frames, carry the masks between them with a video "
        "tracker (SAM 2 video), match new detections to tracks by mask IoU (optimal assignment) and write an "
        "annotated H.264 mp4, per-frame JSON (COCO RLE + track_id), MOTS txt, DAVIS PNGs and tracks.json. "
        "An interrupted run (kill, crash, Ctrl-C) leaves a checkpoint in OUT/checkpoint/; running the same "
        "command again resumes it at the last checkpoint, with outputs identical to an uninterrupted run (other "
        "settings or another input are refused; --overwrite starts over).",
    )
    p.add_argument("video", type=Path, help="a video file (mp4, mov, mkv, ...) or a folder of frame images")
    p.add_argument("--prompt", "-p", required=True, help='classes separated by " . ", e.g. "person . car"')
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument(
        "--format",
        default="mp4,json,mots",
        help="comma-separated outputs: mp4 (video.mp4, annotated), json (frames/NNNNNN.json), jsonl "
        "(frames.jsonl), mots (mots.txt), png (masks/NNNNNN.png, DAVIS indexed); default mp4,json,mots",
    )
    p.add_argument(
        "--pipeline",
        default="track_grounded_sam2",
        help="tracking pipeline name or YAML with a 'tracker' node (default: track_grounded_sam2)",
    )
    p.add_argument(
        "--detect-every",
        type=int,
        default=None,
        metavar="N",
        help="detect on every N-th frame (10; text-driven trackers such as sam3_video detect on every frame)",
    )
    p.add_argument(
        "--max-lost",
        type=int,
        default=None,
        metavar="K",
        help="a track missed at K key frames in a row is kept; one more ends it (2). Ids are never reused",
    )
    p.add_argument(
        "--reverse",
        action="store_true",
        help="follow new objects backwards over the frames since the previous key frame",
    )
    p.add_argument("--fps", type=float, default=None, help="frame rate of a frames folder (30) or override")
    p.add_argument(
        "--checkpoint-every",
        type=_seconds_or_off,
        default=60.0,
        metavar="SECONDS",
        help="save a checkpoint at the first key frame this many seconds after the last (60; 0: at every key "
        "frame; off: never). Rerunning the same command resumes from it",
    )
    p.add_argument("--detector", help="detector hub id or local folder")
    p.add_argument("--segmenter", help="key-frame segmenter hub id or local folder")
    p.add_argument("--tracker", help="video tracker hub id or local folder (e.g. facebook/sam2.1-hiera-tiny)")
    p.add_argument("--box-threshold", type=float, help="minimum class score of a box")
    p.add_argument("--text-threshold", type=float, help="token score delimiting the matched phrase")
    add_set_option(p, "set a node parameter, e.g. tracker.max_cond_frames=2 (repeatable)")
    add_device_option(p)
    add_quiet_option(p)
    add_overwrite_option(p)
    p.set_defaults(handler=handler)


def _seconds_or_off(text: str) -> float | None:
    if text.strip().lower() in ("off", "none", "never"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds or 'off', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"seconds >= 0 or 'off', got {text!r}")
    return value


def tracking_from_args(args: argparse.Namespace) -> Any:
    """The tracking pipeline of ``--pipeline`` with the model flags, ``--set`` and ``--device`` applied
    (``grounded track`` and ``grounded eval video``)."""
    from grounded.tasks.track import build_tracking

    overrides: dict[str, dict[str, Any]] = {}
    for node, params in (
        ("detector", params_from(args, DETECTOR_FLAGS)),
        ("segmenter", params_from(args, (("segmenter", "model"),))),
        ("tracker", params_from(args, (("tracker", "model"),))),
    ):
        if params:
            overrides[node] = params
    for node, params in parse_settings(args.settings).items():
        overrides.setdefault(node, {}).update(params)
    return build_tracking(args.pipeline, overrides, {"device": args.device} if args.device else None)


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded track``; returns the exit code."""
    from grounded.core.files import OutputFolder
    from grounded.tasks.track_outputs import track_files

    with OutputFolder(args.out) as out:
        tracking = tracking_from_args(args)
        summary = track_files(
            tracking,
            args.video,
            args.prompt,
            out,
            formats=args.format,
            detect_every=args.detect_every,
            max_lost=args.max_lost,
            reverse=args.reverse,
            fps=args.fps,
            quiet=args.quiet,
            overwrite=args.overwrite,
            checkpoint_every=args.checkpoint_every,
        )
    done = summary.frames - (summary.resumed_at or 0)
    fps = done / summary.seconds if summary.seconds else 0.0
    resumed = f" (resumed at frame {summary.resumed_at})" if summary.resumed_at is not None else ""
    print(
        f"grounded: {summary.frames} frame(s){resumed}, {len(summary.tracks)} track(s), {fps:.1f} frames/s "
        f"-> {args.out}",
        file=sys.stderr,
    )
    if summary.error:
        print(f"grounded: warning: {summary.error}", file=sys.stderr)
        return EXIT_IMAGE_ERRORS
    return EXIT_OK
