"""``grounded annotate``: image folders in, labelled datasets out (COCO, YOLO segmentation, VOC PNG masks).

The classes come from a fixed ontology (``--classes "person, dog"`` or ``"car: automobile, sedan; person"``)
or from a tagger (``--tagger blip``: each image's caption's noun phrases). Each image's result is committed to
``OUT/manifest.sqlite`` as soon as it is known, so the same command resumes an interrupted run, and the dataset
files are written from the manifest at the end, identical to those of an uninterrupted run. ``--engine ray``
runs the same batches on Ray Data actors (grounded/annotate_ray.py) and writes the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grounded.cli import EXIT_IMAGE_ERRORS, EXIT_OK, CliError

__all__ = [
    "add_parser",
    "collect_images",
    "commit_outcome",
    "handler",
    "pending_chunks",
    "progress_bar",
    "read_image_list",
    "run_chunk",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
LIST_SUFFIXES = frozenset({".parquet", ".jsonl"})
_NOT_FINGERPRINTED = ("batch_size", "device")  # may change between a run and its resume
# One image's outcome: its key, its result (or the one-line error) and the line to print for an error.
Outcome = tuple[str, dict[str, Any] | str, str | None]


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
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None, help="numeric precision")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
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
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            for key, path in read_image_list(item):
                add(key, path)
        elif item.exists() or item.suffix.lower() in IMAGE_SUFFIXES:
            add(item.name, item)  # a missing file is kept: it is reported as a failed image
        else:
            raise CliError(f"{item}: no such folder, image file or .parquet/.jsonl list")
    return dict(sorted(found.items()))


def _list_entry(base: Path, path: str, key: str | None) -> tuple[str, Path]:
    """A list entry's key and file: ``key`` as given, else the path relative to the list's folder
    (or the file name when the path lies outside it)."""
    file = Path(path)
    # normalised, not resolved: "sub/../a.png" is "a.png", and a symlink keeps its own name
    resolved = Path(os.path.normpath(file if file.is_absolute() else base / file))
    if key is None:
        rel = Path(os.path.relpath(os.path.abspath(resolved), os.path.abspath(base)))
        key = file.name if rel.parts[:1] == ("..",) else rel.as_posix()
    return key, resolved


def read_image_list(list_file: Path) -> list[tuple[str, Path]]:
    """``(key, path)`` of each image named by a ``.parquet`` (column ``path``, optional ``key``) or ``.jsonl``
    (one object a line with ``path`` and optionally ``key``) list; relative paths resolve against its folder."""
    base = list_file.parent
    rows: list[tuple[Any, Any]] = []
    if list_file.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CliError(
                f"{list_file}: reading Parquet lists needs pyarrow (pip install pyarrow)"
            ) from None
        try:
            table = pq.read_table(list_file)
        except Exception as exc:
            raise CliError(f"{list_file}: not a readable Parquet file ({exc})".splitlines()[0]) from None
        if "path" not in table.column_names:
            raise CliError(
                f"{list_file}: a list of images needs a 'path' column; it has {', '.join(table.column_names)}"
            )
        paths = table.column("path").to_pylist()
        keys = table.column("key").to_pylist() if "key" in table.column_names else [None] * len(paths)
        rows = list(zip(paths, keys, strict=True))
    else:
        with list_file.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CliError(f"{list_file}:{number}: not JSON ({exc.msg})") from None
                if not isinstance(entry, dict) or "path" not in entry:
                    raise CliError(
                        f'{list_file}:{number}: each line needs a \'path\' field, like {{"path": "a.jpg"}}'
                    )
                rows.append((entry["path"], entry.get("key")))
    out = []
    for i, (path, key) in enumerate(rows):
        if not isinstance(path, str) or not path:
            raise CliError(f"{list_file}: entry {i}: 'path' must be a non-empty string, got {path!r}")
        if "://" in path:
            raise CliError(
                f"{list_file}: entry {i}: {path!r} is a URL; only local (or mounted) paths are read for now"
            )
        if key is not None and (
            not isinstance(key, str) or not key or key.startswith("/") or ".." in key.split("/")
        ):
            raise CliError(
                f"{list_file}: entry {i}: 'key' must be a relative name like 'a/b.jpg', got {key!r}"
            )
        out.append(_list_entry(base, path, key))
    return out


def _formats(text: str) -> list[str]:
    from grounded.tasks.datasets import FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise CliError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {text!r}")
    return list(dict.fromkeys(formats))


def _build(args: argparse.Namespace) -> tuple[Any, Any]:
    """The pipeline and the ontology (``None`` with a tagger)."""
    from grounded.api import build_pipeline
    from grounded.core.ontology import Ontology

    ontology = Ontology.load(args.classes) if args.classes is not None else None
    name = args.pipeline or ("grounded_sam" if ontology is not None else f"{args.tagger}_grounded_sam")
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
    from grounded.core.images import ImageLoadError, load_image

    out: list[tuple[str, Any]] = []
    for key, path in chunk:
        try:
            out.append((key, load_image(path)))
        except ImageLoadError as exc:
            out.append((key, exc))
    return out


def run_chunk(pipeline: Any, ontology: Any, decoded: list[tuple[str, Any]]) -> list[Outcome]:
    """Every image's outcome for one decoded chunk (an exception in place of an image is its error).

    The images that decoded run as one batch; if that batch fails, one by one, so one bad image does not
    sink the others. Both engines call this with the same chunks, so they compute the same results.
    """
    outcomes: list[Outcome] = [(k, str(im), str(im)) for k, im in decoded if isinstance(im, Exception)]
    batch = [(k, im) for k, im in decoded if not isinstance(im, Exception)]
    if not batch:
        return outcomes
    try:
        results = _run_batch(pipeline, ontology, batch)
        outcomes.extend((key, res, None) for (key, _), res in zip(batch, results, strict=True))
    except CliError:
        raise
    except Exception:  # one bad image must not sink the batch: retry one by one
        for key, im in batch:
            try:
                outcomes.append((key, _run_batch(pipeline, ontology, [(key, im)])[0], None))
            except CliError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                outcomes.append((key, error, f"{key}: {error}"))
    return outcomes


def pending_chunks(files: dict[str, Path], status: dict[str, str], size: int) -> list[list[tuple[str, Path]]]:
    """The chunks ``files[i*size:(i+1)*size]`` (sorted file list) that hold an image without a done row.

    Chunks always run whole, so every image is computed in the same batch whether or not the run was
    interrupted before, and whichever engine runs it.
    """
    items = list(files.items())
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    return [c for c in chunks if any(status.get(k) != "done" for k, _ in c)]


def commit_outcome(manifest: Any, progress: Any, outcome: Outcome) -> None:
    """Write one image's outcome to the manifest (printing its error) and advance the progress bar."""
    key, res, note = outcome
    if isinstance(res, str):
        manifest.commit_error(key, res)
        progress.write(f"grounded: error: {note or f'{key}: {res}'}", file=sys.stderr)
    else:
        manifest.commit_done(key, res)
    progress.update(1)


def progress_bar(total: int, quiet: bool) -> Any:
    """The tqdm bar of the images to annotate (on stderr; off with ``--quiet`` or when not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=quiet or None, file=sys.stderr, dynamic_ncols=True)


def _annotate(
    args: argparse.Namespace, pipeline: Any, ontology: Any, manifest: Any, files: dict[str, Path]
) -> int:
    """Run every chunk that has an image without a row here; returns the number of images committed."""
    status = manifest.status()
    chunks = pending_chunks(files, status, args.batch_size)
    progress = progress_bar(sum(1 for c in chunks for k, _ in c if status.get(k) != "done"), args.quiet)
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
            for outcome in run_chunk(pipeline, ontology, decoded):
                if status.get(outcome[0]) != "done":
                    commit_outcome(manifest, progress, outcome)
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
    from grounded.core.files import atomic_write_text, compact_json
    from grounded.core.images import unique_names
    from grounded.tasks import datasets as dx

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
    atomic_write_text(out / "validation.json", compact_json(report))
    return report


def handler(args: argparse.Namespace) -> int:
    from grounded.tasks.manifest import Manifest, ManifestError

    formats = _formats(args.format)
    if args.batch_size < 1 or args.workers < 1:
        raise CliError("--batch-size and --workers must be at least 1")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise CliError("--ray-actors must be at least 1")
    if args.engine != "ray" and (args.ray_actors is not None or args.ray_address is not None):
        raise CliError("--ray-address and --ray-actors need --engine ray")
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
        if args.engine == "ray":
            from grounded.tasks.annotate_ray import annotate_ray

            committed = annotate_ray(args, pipeline, ontology, manifest, files)
        else:
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
