"""``grounded annotate --engine ray``: the local engine's chunks, run by Ray Data model actors.

The driver reads the inputs and the manifest exactly as the local engine does, makes a Ray dataset of the
pending chunks (``files[i*B:(i+1)*B]`` of the sorted file list) and maps it with :class:`AnnotateActor`, a
callable class that builds the pipeline once from its plain description, decodes each chunk's images and
runs them through the same code as the local engine (:func:`grounded.tasks.annotate.run_chunk`), so each image is computed
in the same batch and gets the same result. Each outcome is committed to the manifest as it arrives, so a
run resumes (with either engine) and the datasets written at the end are the same files.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from grounded.core.errors import UserError
from grounded.tasks.annotate import commit_outcome, pending_chunks, progress_bar, run_chunk
from grounded.tasks.errors import user_errors

__all__ = ["ActorPlan", "AnnotateActor", "actor_plan", "actor_spec", "annotate_ray"]

_INSTALL_HINT = "--engine ray needs Ray Data: pip install 'grounded[ray]'"
_QUIET_CONTEXT = {"enable_progress_bars": False, "print_on_execution_start": False}  # ours is the one bar


class AnnotateActor:
    """Ray Data callable class: builds the pipeline once, then annotates one chunk of images per row.

    ``pipeline`` is ``Pipeline.to_dict()``, ``ontology`` is ``Ontology.to_spec()`` (``None`` with a tagger);
    ``threads`` sets torch's CPU threads (CPU actors); ``gpu`` maps any ``cuda:N`` device to the one GPU
    that Ray shows this actor.
    """

    def __init__(
        self, pipeline: dict[str, Any], ontology: str | None, threads: int | None, gpu: bool
    ) -> None:
        import torch

        from grounded.core.ontology import Ontology
        from grounded.engine.serialization import pipeline_from_dict

        if threads:
            torch.set_num_threads(threads)
        spec = actor_spec(pipeline, gpu)
        self.setup_error: str | None = None  # reported for every chunk, so the driver stops with it
        try:
            self.pipeline = pipeline_from_dict(spec)
            self.ontology = Ontology.parse(ontology) if ontology is not None else None
            self.pipeline.warm_up()
        except user_errors() as exc:
            self.setup_error = str(exc)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch["chunk"]``: JSON ``[[key, path as given, absolute path], ...]`` per row; one output row per
        image with ``key``, ``status`` (done / error / fatal), ``text`` (the result as JSON, or the error) and
        ``note`` (the line to print for an error)."""
        import numpy as np

        rows: list[tuple[str, str, str, str]] = []
        for text in batch["chunk"]:
            entries = json.loads(str(text))
            if self.setup_error is not None:
                rows.append((entries[0][0], "fatal", self.setup_error, ""))
                continue
            try:
                outcomes = run_chunk(self.pipeline, self.ontology, _decode(entries))
            except user_errors() as exc:  # not an image's problem (e.g. no masks): the driver stops
                rows.append((entries[0][0], "fatal", str(exc), ""))
                continue
            for key, res, note in outcomes:
                if isinstance(res, str):
                    rows.append((key, "error", res, note or ""))
                else:
                    rows.append((key, "done", json.dumps(res), ""))
        columns = ("key", "status", "text", "note")
        return {name: np.array([r[i] for r in rows], dtype=object) for i, name in enumerate(columns)}


def actor_spec(pipeline: dict[str, Any], gpu: bool) -> dict[str, Any]:
    """The pipeline description for an actor: on a GPU actor, ``cuda:N`` becomes ``cuda``, the one GPU that
    Ray shows it (``CUDA_VISIBLE_DEVICES``)."""
    spec = copy.deepcopy(pipeline)
    if gpu:
        for node in spec["nodes"].values():
            device = (node.get("params") or {}).get("device")
            if isinstance(device, str) and device.startswith("cuda"):
                node["params"]["device"] = "cuda"
    return spec


def _decode(entries: list[list[str]]) -> list[tuple[str, Any]]:
    """Decode each image from its absolute path; an error names the path as the local engine would."""
    from grounded.core.images import ImageLoadError, load_image

    decoded: list[tuple[str, Any]] = []
    for key, given, absolute in entries:
        try:
            decoded.append((key, load_image(Path(absolute))))
        except ImageLoadError as exc:
            decoded.append((key, ImageLoadError(Path(given), exc.reason)))
    return decoded


class ActorPlan(NamedTuple):
    """How many model actors, and what each one reserves."""

    actors: int
    num_gpus: float
    num_cpus: float


def actor_plan(gpus: float, node_cpus: list[float], requested: int | None, device: str | None) -> ActorPlan:
    """The model actors for a cluster with ``gpus`` GPUs and nodes of ``node_cpus`` CPUs.

    One actor per GPU (at most ``requested``), each reserving one GPU; with no GPU (or ``device="cpu"``),
    ``requested`` (default 1, at most the cluster's CPUs) CPU actors sharing the CPUs, none reserving more
    than the smallest node has.
    """
    whole_gpus = int(gpus)
    if whole_gpus >= 1 and device != "cpu":
        return ActorPlan(min(requested or whole_gpus, whole_gpus), 1.0, 1.0)
    if device is not None and device.startswith("cuda"):
        raise UserError(f"--device {device}, but the Ray cluster has no GPU")
    total = int(sum(node_cpus))
    if total < 1:
        raise UserError("the Ray cluster has no CPU to run model actors on")
    actors = min(requested or 1, total)
    per_actor = max(1, min(total // actors, int(min(c for c in node_cpus if c >= 1))))
    return ActorPlan(actors, 0.0, float(per_actor))


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(_INSTALL_HINT) from None
    return ray


def annotate_ray(
    pipeline: Any,
    ontology: Any,
    manifest: Any,
    files: dict[str, Path],
    *,
    batch_size: int = 4,
    quiet: bool = False,
    address: str | None = None,
    actors: int | None = None,
    device: str | None = None,
) -> int:
    """Run every chunk that has an image without a done row on Ray Data actors; returns the images committed.

    Joins the running Ray instance, else ``ray.init(address=address)`` (a new local instance by default, shut
    down at the end); ``actors`` and ``device`` as in :func:`actor_plan`.
    """
    status = manifest.status()
    chunks = pending_chunks(files, status, batch_size)
    if not chunks:
        return 0
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        plan = actor_plan(
            float(ray.cluster_resources().get("GPU", 0)),
            [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes],
            actors,
            device,
        )
        context = ray.data.DataContext.get_current()
        saved = {name: getattr(context, name) for name in _QUIET_CONTEXT if hasattr(context, name)}
        committed = 0
        progress = progress_bar(sum(1 for c in chunks for k, _ in c if status.get(k) != "done"), quiet)
        try:
            for name in saved:
                setattr(context, name, _QUIET_CONTEXT[name])
            rows = [
                {"chunk": json.dumps([[key, str(path), os.path.abspath(path)] for key, path in chunk])}
                for chunk in chunks
            ]
            dataset = ray.data.from_items(rows).map_batches(
                AnnotateActor,
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=plan.actors),
                fn_constructor_kwargs={
                    "pipeline": pipeline.to_dict(),
                    "ontology": None if ontology is None else ontology.to_spec(),
                    "threads": None if plan.num_gpus else int(plan.num_cpus),
                    "gpu": bool(plan.num_gpus),
                },
                num_cpus=plan.num_cpus,
                num_gpus=plan.num_gpus,
            )
            for row in dataset.iter_rows():
                kind, key, text = str(row["status"]), str(row["key"]), str(row["text"])
                if kind == "fatal":
                    raise UserError(text)
                if status.get(key) == "done":
                    continue
                note = str(row["note"]) or None
                commit_outcome(manifest, progress, (key, json.loads(text) if kind == "done" else text, note))
                committed += 1
        finally:
            progress.close()
            for name, value in saved.items():
                setattr(context, name, value)
        return committed
    finally:
        if started:
            ray.shutdown()
