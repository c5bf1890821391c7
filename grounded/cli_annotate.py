"""``grounded annotate``: image folders in, labelled datasets out (COCO, YOLO segmentation, VOC PNG masks).

The classes come from a fixed ontology (``--classes "person, dog"`` or ``"car: automobile, sedan; person"``)
or from a tagger (``--tagger blip``: each image's caption's noun phrases). Each image's result is committed to
``OUT/manifest.sqlite`` as soon as it is known, so the same command resumes an interrupted run, and the dataset
files are written from the manifest at the end, identical to those of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grounded.cli import EXIT_IMAGE_ERRORS, EXIT_OK, CliError

__all__ = ["add_parser", "collect_images", "handler"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
_NOT_FINGERPRINTED = ("batch_size", "device")  # may change between a run and its resume


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="auto-annotate image folders into COCO / YOLO / VOC datasets (resumable)",
        description="Detect and segment a fixed ontology (--classes) or each image's caption tags (--tagger blip) "
        "in every image of the given folders, and write datasets. Results are committed per image to "
        "OUT/manifest.sqlite: after Ctrl-C or kill -9, the same command resumes where it stopped and writes the "
        "same files an uninterrupted run would. Bad images are listed in the manifest and never stop the run "
        "(exit code 1 at the end).",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image folders (searched recursively) or image files")
    p.add_argument("--out", "-o", type=Path, required=True, help="dataset folder (created if missing)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--classes",
        help='the ontology: "person, dog, bicycle", or per-class prompts "car: automobile, sedan; person", '
        "or a .txt/.yaml file with one `class: prompt, prompt` per line",
    )
    source.add_argument("--tagger", choices=("blip",), help="tag each image from its caption (BLIP)")
    p.add_argument(
        "--format", default="coco", help="comma-separated dataset formats: coco, yolo, voc (default: coco)"
    )
    p.add_argument("--polygons", action="store_true", help="COCO: polygons instead of RLE masks")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="fraction of images in the val split (chosen by a hash of the file name; default 0: train only)",
    )
    p.add_argument(
        "--pipeline", help="bundled pipeline name or YAML path (default: grounded_sam, or blip_grounded_sam)"
    )
    p.add_argument("--detector", help="detector hub id or local folder")
    p.add_argument("--segmenter", help="segmenter hub id or local folder")
    p.add_argument("--tagger-model", help="BLIP captioner hub id or local folder")
    p.add_argument("--box-threshold", type=float, help="minimum class score of a box (default 0.35)")
    p.add_argument("--text-threshold", type=float, help="token score delimiting the phrase (default 0.25)")
    p.add_argument("--top-k", type=int, help="at most this many detections per image (default 100)")
    p.add_argument("--nms-threshold", type=float, help="IoU of class-aware NMS (default 0.8)")
    p.add_argument("--batch-size", type=int, default=4, help="images per model pass (default 4)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads (default 2)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None, help="numeric precision")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=handler)


# ---------------------------------------------------------------------- inputs
def collect_images(inputs: Sequence[Path], exclude: Path | None = None) -> dict[str, Path]:
    """Key (path relative to its folder, or the file name) → file, sorted by key; ``exclude`` is skipped."""
    found: dict[str, Path] = {}
    skip = exclude.resolve() if exclude is not None else None

    def add(key: str, path: Path) -> None:
        if key in found and found[key] != path:
            raise CliError(f"two inputs have the same name {key!r}: {found[key]} and {path}")
        found[key] = path

    for item in inputs:
        if item.is_dir():
            for path in item.rglob("*"):
                rel = path.relative_to(item)
                if (
                    any(part.startswith(".") for part in rel.parts)
                    or path.suffix.lower() not in IMAGE_SUFFIXES
                ):
                    continue
                if skip is not None and path.resolve().is_relative_to(skip):
                    continue
                if path.is_file():
                    add(rel.as_posix(), path)
        elif item.exists() or item.suffix.lower() in IMAGE_SUFFIXES:
            add(item.name, item)  # a missing file is kept: it is reported as a failed image
        else:
            raise CliError(f"{item}: no such folder or image file")
    return dict(sorted(found.items()))


def _formats(text: str) -> list[str]:
    from grounded.datasets_export import FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise CliError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {text!r}")
    return list(dict.fromkeys(formats))


def _build(args: argparse.Namespace) -> tuple[Any, Any]:
    """The pipeline and the ontology (``None`` with a tagger)."""
    from grounded.api import build_pipeline
    from grounded.ontology import Ontology

    ontology = Ontology.load(args.classes) if args.classes is not None else None
    name = args.pipeline or ("grounded_sam" if ontology is not None else "blip_grounded_sam")
    det: dict[str, Any] = {}
    for flag, key in (
        ("detector", "model"),
        ("box_threshold", "box_threshold"),
        ("text_threshold", "text_threshold"),
        ("top_k", "top_k"),
        ("nms_threshold", "nms_threshold"),
    ):
        if getattr(args, flag) is not None:
            det[key] = getattr(args, flag)
    overrides: dict[str, dict[str, Any]] = {"detector": det} if det else {}
    if args.segmenter is not None:
        overrides["segmenter"] = {"model": args.segmenter}
    if args.tagger_model is not None:
        overrides["tagger"] = {"model": args.tagger_model}
    shared: dict[str, Any] = {"batch_size": args.batch_size}
    if args.device is not None:
        shared["device"] = args.device
    if args.precision is not None:
        shared["precision"] = args.precision
    pipeline = build_pipeline(name, overrides=overrides, shared=shared)
    if ontology is not None and "prompt" not in pipeline.inputs:
        raise CliError(f"pipeline {pipeline.name!r} takes no prompt input, so --classes cannot feed it")
    if ontology is None and ("tags" not in pipeline.outputs or "prompt" in pipeline.inputs):
        raise CliError(f"pipeline {pipeline.name!r} has no tagger (a 'tags' output and no 'prompt' input)")
    return pipeline, ontology


def _settings(pipeline: Any, ontology: Any) -> dict[str, Any]:
    """What decides the results (stored in the manifest; a resume must match it)."""
    spec = pipeline.to_dict()
    for node in spec["nodes"].values():
        for key in _NOT_FINGERPRINTED:
            node["params"].pop(key, None)
    return {"pipeline": spec, "ontology": None if ontology is None else ontology.to_spec()}


# ---------------------------------------------------------------------- one batch
def _result(key: str, image: Any, det: Any, caption: str | None, tags: Any) -> dict[str, Any]:
    if det.masks is None:
        raise CliError("the pipeline gives no masks; annotate needs a segmenter")
    annotations = []
    for rec in det.to_coco_records():
        ann = {k: rec[k] for k in ("category", "bbox", "score", "phrase", "segmentation", "area")}
        if "mask_score" in rec:
            ann["mask_score"] = rec["mask_score"]
        annotations.append(ann)
    height, width = image.size
    out: dict[str, Any] = {"file": key, "height": height, "width": width, "annotations": annotations}
    if caption is not None:
        out["caption"] = caption
        out["tags"] = list(tags.classes)
    return out


def _run_batch(pipeline: Any, ontology: Any, batch: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    images = [im for _, im in batch]
    if ontology is not None:
        outputs = pipeline.run(images=images, prompt=ontology.prompt())
        dets = [ontology.assign(d) for d in outputs["detections"]]
        captions: list[Any] = [None] * len(batch)
        tags: list[Any] = [None] * len(batch)
    else:
        outputs = pipeline.run(images=images)
        dets = outputs["detections"]
        tags = outputs["tags"]
        captions = outputs.get("captions") or [" . ".join(t.classes) for t in tags]
    return [
        _result(key, im, det, cap, tag)
        for (key, im), det, cap, tag in zip(batch, dets, captions, tags, strict=True)
    ]


def _decode(chunk: list[tuple[str, Path]]) -> list[tuple[str, Any]]:
    from grounded.images import ImageLoadError, load_image

    out: list[tuple[str, Any]] = []
    for key, path in chunk:
        try:
            out.append((key, load_image(path)))
        except ImageLoadError as exc:
            out.append((key, exc))
    return out


def _annotate(
    args: argparse.Namespace, pipeline: Any, ontology: Any, manifest: Any, files: dict[str, Path]
) -> int:
    """Run every chunk that has an image without a row; returns the number of images committed.

    Chunks are aligned to the sorted file list (``files[i*B:(i+1)*B]``) and always run whole, so every image
    is computed in the same batch whether or not the run was interrupted before.
    """
    from tqdm import tqdm

    status = manifest.status()
    items = list(files.items())
    size = args.batch_size
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    chunks = [c for c in chunks if any(status.get(k) != "done" for k, _ in c)]
    pending = sum(1 for c in chunks for k, _ in c if status.get(k) != "done")
    progress = tqdm(
        total=pending, unit="img", disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True
    )
    committed = 0
    if chunks:
        pipeline.warm_up()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        ahead: deque[Future[list[tuple[str, Any]]]] = deque()
        queue = iter(chunks)
        for chunk in queue:
            ahead.append(pool.submit(_decode, chunk))
            if len(ahead) > max(1, args.workers):
                break
        while ahead:
            decoded = ahead.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                ahead.append(pool.submit(_decode, nxt))
            todo = {k for k, _ in decoded if status.get(k) != "done"}
            batch = [(k, im) for k, im in decoded if not isinstance(im, Exception)]
            for key, im in decoded:
                if isinstance(im, Exception) and key in todo:
                    manifest.commit_error(key, str(im))
                    progress.write(f"grounded: error: {im}", file=sys.stderr)
                    progress.update(1)
                    committed += 1
            results: list[tuple[str, dict[str, Any] | str]] = []
            if batch:
                try:
                    results = list(
                        zip([k for k, _ in batch], _run_batch(pipeline, ontology, batch), strict=True)
                    )
                except CliError:
                    raise
                except Exception:  # one bad image must not sink the batch: retry one by one
                    results = []
                    for key, im in batch:
                        try:
                            results.append((key, _run_batch(pipeline, ontology, [(key, im)])[0]))
                        except CliError:
                            raise
                        except Exception as exc:
                            results.append((key, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            for key, res in results:
                if key not in todo:
                    continue
                if isinstance(res, str):
                    manifest.commit_error(key, res)
                    progress.write(f"grounded: error: {key}: {res}", file=sys.stderr)
                else:
                    manifest.commit_done(key, res)
                progress.update(1)
                committed += 1
    progress.close()
    return committed


# ---------------------------------------------------------------------- exports
def export_datasets(
    out: Path,
    manifest: Any,
    files: dict[str, Path],
    ontology: Any,
    formats: Sequence[str],
    polygons: bool = False,
    val_fraction: float = 0.0,
) -> dict[str, Any]:
    """Write and validate every requested format from the manifest; returns the validation summary."""
    from grounded import datasets_export as dx
    from grounded.export import _dumps, atomic_write_text
    from grounded.images import unique_names

    records = [dict(r.result) for r in manifest.rows() if r.status == "done" and r.file in files]
    records.sort(key=lambda r: r["file"])
    names = unique_names([Path(r["file"]).with_suffix("").as_posix().replace("/", "__") for r in records])
    for rec, name in zip(records, names, strict=True):
        rec["name"] = name
    if ontology is not None:
        categories = list(ontology.names)
    else:
        categories = sorted({a["category"] for r in records for a in r["annotations"]})
    assignment = dx.split_files([r["file"] for r in records], val_fraction)
    report: dict[str, Any] = {}
    if "coco" in formats:
        paths = dx.write_coco(out / "coco", records, categories, assignment, polygons=polygons)
        report["coco"] = dx.validate_coco(paths, records)
    if "yolo" in formats:
        dx.write_yolo(out / "yolo", records, categories, assignment, files)
        report["yolo"] = dx.validate_yolo(out / "yolo", records, categories)
    if "voc" in formats:
        dx.write_voc(out / "voc", records, categories, assignment)
        report["voc"] = dx.validate_voc(out / "voc", records, categories)
    errors = manifest.errors()
    report["failed"] = [{"file": f, "error": e} for f, e in errors if f in files]
    atomic_write_text(out / "validation.json", _dumps(report))
    return report


def handler(args: argparse.Namespace) -> int:
    from grounded.manifest import Manifest, ManifestError

    formats = _formats(args.format)
    if args.batch_size < 1 or args.workers < 1:
        raise CliError("--batch-size and --workers must be at least 1")
    if not 0.0 <= args.val_fraction < 1.0:
        raise CliError("--val-fraction must lie in [0, 1)")
    files = collect_images(args.inputs, exclude=args.out)
    if not files:
        raise CliError("no images found in " + ", ".join(map(str, args.inputs)))
    pipeline, ontology = _build(args)
    try:
        manifest = Manifest(args.out, _settings(pipeline, ontology))
    except ManifestError as exc:
        raise CliError(str(exc)) from None
    with manifest:
        before = sum(1 for s in manifest.status().values() if s == "done")
        committed = _annotate(args, pipeline, ontology, manifest, files)
        report = export_datasets(
            args.out,
            manifest,
            files,
            ontology,
            formats,
            polygons=args.polygons,
            val_fraction=args.val_fraction,
        )
    failed = report["failed"]
    summary = ", ".join(
        f"{fmt}: {report[fmt]['images']} images, {report[fmt]['instances']} instances"
        + (f", mask IoU >= {report[fmt]['min_iou']:.4f}" if "min_iou" in report[fmt] else ", exact")
        for fmt in formats
    )
    print(
        f"grounded: {committed} image(s) annotated now, {before} resumed from the manifest, {len(failed)} failed; "
        f"{summary} -> {args.out}",
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
