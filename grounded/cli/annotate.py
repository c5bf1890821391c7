"""``grounded annotate``: image folders in, labelled datasets out (COCO, YOLO segmentation, Pascal VOC, Label Studio).

The classes come from a fixed ontology (``--classes "person, dog"`` or ``"car: automobile, sedan; person"``)
or from a tagger (``--tagger blip``: each image's caption's noun phrases). Each image's result is committed to
``OUT/manifest.sqlite`` as soon as it is known, so the same command resumes an interrupted run, and the dataset
files are written from the manifest at the end, identical to those of an uninterrupted run. ``--engine ray``
runs the same batches on Ray Data actors and writes the same files. The job is :mod:`grounded.tasks.annotate_job`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grounded.cli.common import (
    DETECTOR_FLAGS,
    add_dataset_options,
    add_device_option,
    add_quiet_option,
    dataset_formats,
    params_from,
    shared_params,
)
from grounded.core.errors import EXIT_IMAGE_ERRORS, EXIT_OK, UserError

if TYPE_CHECKING:
    from grounded.core.ontology import Ontology
    from grounded.engine import Pipeline

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded annotate``."""
    p = subparsers.add_parser(
        "annotate",
        help="auto-annotate image folders into COCO / YOLO / VOC datasets (resumable)",
        description="Detect and segment a fixed ontology (--classes) or each image's caption tags (--tagger blip) "
        "in every image of the given folders, and write datasets. Results are committed per image to "
        "OUT/manifest.sqlite: after Ctrl-C or kill -9, the same command resumes where it stopped and writes the "
        "same files an uninterrupted run would. Bad images are listed in the manifest and never stop the run "
        "(exit code 1 at the end).",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="image folders (searched recursively), image files, or .parquet / .jsonl lists of image paths "
        "(column or field `path`, optional `key`; relative paths are relative to the list's folder)",
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="dataset folder (created if missing)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--classes",
        help='the ontology: "person, dog, bicycle", or per-class prompts "car: automobile, sedan; person", '
        "or a .txt/.yaml file with one `class: prompt, prompt` per line",
    )
    source.add_argument(
        "--tagger",
        choices=("blip", "ram"),
        help="tag each image: the noun phrases of its BLIP caption, or its RAM / RAM++ tags",
    )
    p.add_argument(
        "--format",
        default="coco",
        help="comma-separated dataset formats: coco, yolo, voc, label-studio (default: coco)",
    )
    add_dataset_options(p)
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="fraction of images in the val split (chosen by a hash of the file name; default 0: train only)",
    )
    p.add_argument(
        "--pipeline",
        help="bundled pipeline name or YAML path (default: grounded_sam, or TAGGER_grounded_sam with --tagger)",
    )
    p.add_argument("--detector", help="detector hub id or local folder")
    p.add_argument("--segmenter", help="segmenter hub id or local folder")
    p.add_argument(
        "--tagger-model",
        help="BLIP: hub id or local folder; RAM: ram_swin_large_14m.pth, ram_plus_swin_large_14m.pth or a folder",
    )
    p.add_argument("--box-threshold", type=float, help="minimum class score of a box (default 0.35)")
    p.add_argument("--text-threshold", type=float, help="token score delimiting the phrase (default 0.25)")
    p.add_argument("--top-k", type=int, help="at most this many detections per image (default 100)")
    p.add_argument("--nms-threshold", type=float, help="IoU of class-aware NMS (default 0.8)")
    p.add_argument("--batch-size", type=int, default=4, help="images per model pass (default 4)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads (default 2)")
    add_device_option(p)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None, help="numeric precision")
    add_quiet_option(p)
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default): this process; ray: Ray Data actors, one per GPU (or --ray-actors CPU actors)",
    )
    p.add_argument(
        "--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, or a new local Ray instance)"
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        help="model actors (default: one per GPU of the cluster, or 1 CPU actor when it has no GPU)",
    )
    p.set_defaults(handler=handler)


def _build(args: argparse.Namespace) -> tuple[Pipeline, Ontology | None]:
    """The pipeline and the ontology (``None`` with a tagger) that the options ask for."""
    from grounded.tasks.annotate import build_annotator

    det = params_from(args, DETECTOR_FLAGS)
    overrides: dict[str, dict[str, Any]] = {"detector": det} if det else {}
    if args.segmenter is not None:
        overrides["segmenter"] = {"model": args.segmenter}
    if args.tagger_model is not None:
        overrides["tagger"] = {"model": args.tagger_model}
    return build_annotator(
        args.classes, args.tagger, pipeline=args.pipeline, overrides=overrides, shared=shared_params(args)
    )


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded annotate``; returns the exit code (1 when an image failed)."""
    from grounded.tasks.annotate import collect_images
    from grounded.tasks.annotate_job import annotate

    formats = dataset_formats(args.format)
    if args.batch_size < 1 or args.workers < 1:
        raise UserError("--batch-size and --workers must be at least 1")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise UserError("--ray-actors must be at least 1")
    if args.engine != "ray" and (args.ray_actors is not None or args.ray_address is not None):
        raise UserError("--ray-address and --ray-actors need --engine ray")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError("--val-fraction must lie in [0, 1)")
    if args.rle and args.polygons:
        raise UserError("--rle and --polygons are two ways to write COCO masks; give one")
    files = collect_images(args.inputs, exclude=args.out)
    if not files:
        raise UserError("no images found in " + ", ".join(map(str, args.inputs)))
    pipeline, ontology = _build(args)
    run = annotate(
        args.out,
        files,
        pipeline,
        ontology,
        formats,
        engine=args.engine,
        batch_size=args.batch_size,
        workers=args.workers,
        quiet=args.quiet,
        rle=args.rle,
        link=args.link,
        val_fraction=args.val_fraction,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        device=args.device,
    )
    report = run.report
    failed = report["failed"]
    summary = ", ".join(
        f"{fmt}: {report[fmt]['images']} images, {report[fmt]['instances']} instances"
        + (f", mask IoU >= {report[fmt]['min_iou']:.4f}" if "min_iou" in report[fmt] else ", exact")
        for fmt in formats
    )
    print(
        f"grounded: {run.committed} image(s) annotated now, {run.resumed} resumed from the manifest, "
        f"{len(failed)} failed; {summary} -> {args.out}",
        file=sys.stderr,
    )
    if failed:
        print(
            f"grounded: failed images are listed in {args.out / 'manifest.sqlite'} and validation.json",
            file=sys.stderr,
        )
    if not args.quiet:
        print(json.dumps({k: v for k, v in report.items() if k != "failed"}), file=sys.stderr)
    return EXIT_IMAGE_ERRORS if failed else EXIT_OK
