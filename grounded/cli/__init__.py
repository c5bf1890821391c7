"""Command line: ``grounded segment``, ``grounded run``, ``grounded adapters``, ``grounded bench``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["COMMAND_MODULES", "CliError", "main"]

EXIT_OK, EXIT_IMAGE_ERRORS, EXIT_USAGE = 0, 1, 2

#: Modules that add further subcommands. Each defines ``add_parser(subparsers) -> None`` and sets
#: ``handler=<function(args) -> int>`` as a parser default; errors it raises as :class:`CliError` (or the
#: library's own error types) are printed as one line with exit code 2.
COMMAND_MODULES: list[str] = [
    "grounded.cli.evaluate",
    "grounded.cli.edit",
    "grounded.cli.granularity",
    "grounded.cli.annotate",
]


class CliError(Exception):
    """An error reported as one line, without a traceback."""


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, TIFF, ...)")
    p.add_argument("--prompt", "-p", required=True, help='classes separated by " . ", e.g. "dog . red car"')
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument(
        "--format",
        choices=("files", "coco"),
        default="files",
        help="files: NAME.json, NAME.png (overlay), NAME_labels.png (uint16 instance ids) per image; "
        "coco: one coco.json (images, categories, annotations with RLE masks) for the whole run",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per model pass (default: adapters' own)"
    )
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default=None,
        help="numeric precision (auto: bf16 where the hardware computes it natively, else fp32)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="resume an interrupted run: skip images whose NAME.json (written last) is already in --out",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grounded", description="Open-vocabulary grounding: words in, boxes and pixel-exact masks out."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="text-prompted segmentation (Grounding DINO -> SAM)",
        description="Detect the prompt's classes with Grounding DINO and segment each box with SAM / HQ-SAM. "
        "Outputs are written atomically; a bad image is reported by name and the others still complete "
        "(exit code 1 at the end).",
    )
    _add_run_options(seg)
    seg.add_argument(
        "--pipeline",
        default="grounded_sam",
        help="bundled pipeline name or YAML path (default: grounded_sam)",
    )
    seg.add_argument(
        "--detector", help="detector hub id or local folder (default: IDEA-Research/grounding-dino-tiny)"
    )
    seg.add_argument(
        "--segmenter", help="SAM / HQ-SAM hub id or local folder (default: facebook/sam-vit-base)"
    )
    seg.add_argument("--box-threshold", type=float, help="minimum class score of a box (default 0.35)")
    seg.add_argument(
        "--text-threshold", type=float, help="token score delimiting the matched phrase (default 0.25)"
    )
    seg.add_argument("--top-k", type=int, help="at most this many detections per image (default 100)")
    seg.add_argument("--nms-threshold", type=float, help="IoU of class-aware NMS (default 0.8)")
    seg.add_argument("--no-nms", action="store_true", help="disable NMS")
    seg.add_argument(
        "--multi-label", action="store_true", help="score every (box, class) pair, not the best class"
    )
    seg.add_argument("--multimask", action="store_true", help="3 masks per box, keep the best predicted IoU")
    seg.add_argument("--hq-token-only", action="store_true", help="HQ-SAM: use the HQ mask alone")
    seg.add_argument(
        "--granularity",
        choices=("best", "part", "whole"),
        help="which of SAM's masks a box keeps: best predicted IoU (default), the finest, or the coarsest",
    )

    run = sub.add_parser(
        "run",
        help="run a YAML pipeline",
        description="Run a YAML pipeline (a bundled name such as grounded_hq_sam, or a path) on images.",
    )
    run.add_argument("pipeline", help="bundled pipeline name or YAML path")
    _add_run_options(run)
    run.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a node parameter (YAML value), e.g. --set detector.box_threshold=0.3",
    )

    sub.add_parser("adapters", help="list registered adapters and their ports")

    convert = sub.add_parser(
        "convert",
        help="convert an official checkpoint file to a transformers-format folder",
        description="Convert an official checkpoint (segment-anything sam_vit_{b,l,h}_*.pth, sam-hq sam_hq_vit_*.pth, "
        "GroundingDINO groundingdino_swint_ogc.pth / groundingdino_swinb_cogcoor.pth) "
        "to a transformers-format folder (model + processor) that loads fast. The variant is read from the file's "
        "keys and shapes; the file is unpickled with weights_only=True (tensors only, no code runs).",
    )
    convert.add_argument("checkpoint", type=Path, help="the official .pth file")
    convert.add_argument("out_dir", type=Path, help="folder to write (replaced atomically if it exists)")
    convert.add_argument(
        "--text-encoder",
        default=None,
        metavar="ID_OR_DIR",
        help="Grounding DINO files (groundingdino_swint_ogc.pth, groundingdino_swinb_cogcoor.pth): the BERT "
        "tokenizer they leave out, a hub id or local folder (default: $GROUNDED_TEXT_ENCODER, else bert-base-uncased)",
    )

    demo = sub.add_parser(
        "demo",
        help="segment three skimage photos end to end",
        description="Write skimage.data photos (astronaut, coffee, chelsea) to OUT/inputs and run `segment` on them "
        "with the default hub models. Where those cannot be had (no network, nothing cached), tiny random-weight "
        "models are built in OUT/models instead: the files show the whole flow, the boxes and masks mean nothing.",
    )
    demo.add_argument(
        "--out", "-o", type=Path, default=Path("results"), help="output folder (default: results)"
    )
    demo.add_argument("--prompt", default="person . cup . cat . flag", help="text prompt")
    demo.add_argument(
        "--random-weights", action="store_true", help="use tiny random-weight models even if real ones exist"
    )
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    bench = sub.add_parser("bench", help="time each stage with real-size random-weight models")
    bench.add_argument(
        "--images",
        default="astronaut@1024,coffee",
        metavar="NAME,...",
        help="skimage.data images, NAME@SIZE resized square (default: astronaut@1024,coffee)",
    )
    bench.add_argument("--prompt", default="person . flag . helmet . face . rocket", help="text prompt")
    bench.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    bench.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="precision of the optimised path (auto: bf16 where the hardware has it natively, else fp32)",
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile the optimised path")
    bench.add_argument(
        "--small", action="store_true", help="tiny models (a smoke run of the benchmark itself)"
    )
    bench.add_argument(
        "--batch-sizes",
        default="1,2,4,8",
        metavar="N,N,...",
        help="measure images/s and peak memory at these batch sizes (empty: skip)",
    )
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def _shared_params(args: argparse.Namespace) -> dict[str, Any]:
    """--device / --precision / --batch-size, for every node that takes them."""
    shared: dict[str, Any] = {}
    if args.device is not None:
        shared["device"] = args.device
    if args.precision is not None:
        shared["precision"] = args.precision
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise CliError("--batch-size must be at least 1")
        shared["batch_size"] = args.batch_size
    return shared


def _segment_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    det: dict[str, Any] = {}
    seg: dict[str, Any] = {}
    for flag, key in (
        ("detector", "model"),
        ("box_threshold", "box_threshold"),
        ("text_threshold", "text_threshold"),
        ("top_k", "top_k"),
        ("nms_threshold", "nms_threshold"),
    ):
        if getattr(args, flag) is not None:
            det[key] = getattr(args, flag)
    if args.no_nms:
        det["nms_threshold"] = None
    if args.multi_label:
        det["multi_label"] = True
    if args.segmenter is not None:
        seg["model"] = args.segmenter
    if args.multimask:
        seg["multimask_output"] = True
    if args.hq_token_only:
        seg["hq_token_only"] = True
    if args.granularity is not None:
        seg["granularity"] = args.granularity
    return {k: v for k, v in (("detector", det), ("segmenter", seg)) if v}


def _parse_settings(settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in settings:
        key, eq, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not eq or not dot or not node or not param:
            raise CliError(f"--set expects NODE.PARAM=VALUE, got {item!r}")
        out.setdefault(node, {})[param] = yaml.safe_load(value)
    return out


def _output_names(stems: Sequence[str]) -> list[str]:
    """Unique output names; ``x_labels`` is renamed when ``x`` is there too (``x_labels.png`` is taken)."""
    from grounded.core.images import unique_names

    names = unique_names(stems)
    taken = {n.lower() for n in names}
    for i, name in enumerate(names):
        if name.lower().endswith("_labels") and name[: -len("_labels")].lower() in taken:
            k = 1
            while f"{name}_{k}".lower() in taken:
                k += 1
            names[i] = f"{name}_{k}"
            taken.add(names[i].lower())
    return names


def _check_no_overwrite(images: Sequence[Path], names: Sequence[str], out: Path) -> None:
    """Refuse outputs that would replace an input image (e.g. ``--out`` set to the input folder)."""
    inputs = {p.resolve() for p in images if p.exists()}
    for name in names:
        for target in (out / f"{name}.png", out / f"{name}_labels.png", out / f"{name}.json"):
            if target.resolve() in inputs:
                raise CliError(f"output {target} would overwrite an input image; choose another --out")


def _finished(json_path: Path, image_path: Path) -> bool:
    """Whether a previous run completed this image (its JSON, written last, names this file)."""
    import json

    try:
        return bool(json.loads(json_path.read_text())["image"]["file_name"] == image_path.name)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _process(args: argparse.Namespace, pipeline: Any) -> int:
    """Run the pipeline over the images in batches, writing results as each batch completes."""
    from tqdm import tqdm

    from grounded.core.images import ImageLoadError, LoadedImage, load_image
    from grounded.core.prompts import Prompt
    from grounded.tasks.export import CocoWriter, write_image_results

    prompt = Prompt.of(args.prompt)
    pipeline.validate()
    names = _output_names([p.stem for p in args.images])
    if args.format == "files":
        _check_no_overwrite(args.images, names, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = list(zip(args.images, names, strict=True))
    if args.skip_existing:
        if args.format != "files":
            raise CliError("--skip-existing works with --format files (one JSON per image)")
        todo = [(path, name) for path, name in todo if not _finished(args.out / f"{name}.json", path)]
    skipped = len(args.images) - len(todo)
    coco = CocoWriter() if args.format == "coco" else None
    batch_size = args.batch_size or 4
    failures: list[str] = []
    total_detections = 0
    progress = tqdm(total=len(todo), unit="img", disable=args.quiet or None, file=sys.stderr)
    if todo:
        pipeline.warm_up()
    for start in range(0, len(todo), batch_size):
        batch: list[tuple[str, LoadedImage]] = []
        for path, name in todo[start : start + batch_size]:
            try:
                batch.append((name, load_image(path)))
            except ImageLoadError as exc:
                failures.append(str(exc))
                progress.write(f"grounded: error: {exc}", file=sys.stderr)
                progress.update(1)
        if not batch:
            continue
        detections = pipeline.run(images=[im for _, im in batch], prompt=prompt)["detections"]
        for (name, image), det in zip(batch, detections, strict=True):
            total_detections += len(det)
            if coco is not None:
                coco.add(image, det)
            else:
                write_image_results(args.out, name, image, det)
            progress.update(1)
    progress.close()
    if coco is not None:
        coco.write(args.out / "coco.json")
    done = len(todo) - len(failures)
    print(
        f"grounded: {done} image(s) processed, {total_detections} detection(s), {len(failures)} failed"
        + (f", {skipped} skipped (already done)" if skipped else "")
        + f" -> {args.out}",
        file=sys.stderr,
    )
    return EXIT_IMAGE_ERRORS if failures else EXIT_OK


def _list_adapters() -> int:
    from grounded.engine import available_adapters, input_ports, output_ports

    for name, cls in available_adapters().items():
        ins = ", ".join(p.describe() for p in input_ports(cls).values())
        outs = ", ".join(p.describe() for p in output_ports(cls).values())
        print(f"{name:16s} {cls.__module__}.{cls.__name__}\n    inputs:  {ins}\n    outputs: {outs}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    """Segment skimage photos with the default models, or tiny random-weight ones where those are unavailable."""
    try:
        from skimage import data
    except ImportError:
        raise CliError("the demo needs scikit-image: pip install scikit-image") from None
    from PIL import Image

    from grounded.api import build_pipeline
    from grounded.models.sources import ModelSourceError, resolve_source
    from grounded.models.testing import make_grounding_dino, make_sam

    inputs = args.out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ext in (("astronaut", "png"), ("coffee", "jpg"), ("chelsea", "png")):
        path = inputs / f"{name}.{ext}"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).save(path)
        paths.append(path)
    overrides: dict[str, dict[str, Any]] = {}
    try:
        if args.random_weights:
            raise ModelSourceError("random weights requested")
        resolve_source("IDEA-Research/grounding-dino-tiny", "detector")
        resolve_source("facebook/sam-vit-base", "segmenter")
        print(
            "grounded demo: using IDEA-Research/grounding-dino-tiny + facebook/sam-vit-base", file=sys.stderr
        )
    except ModelSourceError as exc:
        models = args.out / "models"
        print(
            f"grounded demo: real weights unavailable ({exc}); using tiny RANDOM-weight models in {models}: "
            "the output files show the flow, the boxes and masks are meaningless",
            file=sys.stderr,
        )
        if not (models / "grounding-dino" / "config.json").is_file():
            make_grounding_dino(models / "grounding-dino")
        if not (models / "sam" / "config.json").is_file():
            make_sam(models / "sam")
        overrides = {
            "detector": {"model": str(models / "grounding-dino"), "box_threshold": 0.0, "top_k": 5},
            "segmenter": {"model": str(models / "sam")},
        }
    run_args = argparse.Namespace(
        images=paths,
        prompt=args.prompt,
        out=args.out,
        format="files",
        batch_size=None,
        quiet=args.quiet,
        skip_existing=False,
    )
    return _process(run_args, build_pipeline("grounded_sam", overrides=overrides))


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; returns the exit code."""
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    if args.command == "adapters":
        return _list_adapters()
    if args.command == "convert":
        from grounded.models.checkpoints import convert_checkpoint

        out = convert_checkpoint(args.checkpoint, args.out_dir, text_encoder=args.text_encoder)
        print(f"grounded: wrote {out}", file=sys.stderr)
        return EXIT_OK
    if args.command == "demo":
        return _demo(args)
    if args.command == "bench":
        from grounded.tasks.bench import run_benchmark

        run_benchmark(
            images=tuple(v.strip() for v in args.images.split(",") if v.strip()),
            prompt=args.prompt,
            repeats=args.repeats,
            precision=args.precision,
            compile=args.compile,
            small=args.small,
            batch_sizes=tuple(int(v) for v in args.batch_sizes.split(",") if v.strip()),
        )
        return EXIT_OK
    from grounded.api import build_pipeline

    overrides = _segment_overrides(args) if args.command == "segment" else _parse_settings(args.settings)
    pipeline = build_pipeline(args.pipeline, overrides=overrides, shared=_shared_params(args))
    return _process(args, pipeline)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``grounded`` command; returns the exit code."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="grounded: %(message)s")
    from grounded.core.prompts import PromptError
    from grounded.engine import PipelineError, UnknownAdapterError
    from grounded.models.checkpoints import CheckpointError
    from grounded.models.sources import ModelSourceError
    from grounded.runtime.device import DeviceError
    from grounded.runtime.memory import reuse_freed_memory

    # one block for the whole job: pages stay mapped between images (bench sets it per configuration)
    memory = contextlib.nullcontext() if args.command == "bench" else reuse_freed_memory()
    try:
        with memory:
            return _dispatch(args)
    except (
        CliError,
        CheckpointError,
        DeviceError,
        ModelSourceError,
        PromptError,
        PipelineError,
        UnknownAdapterError,
    ) as exc:
        print(f"grounded: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("grounded: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
