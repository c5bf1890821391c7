"""YAML pipelines: load by path or by name from ``pipelines/``; only registered adapters may be named."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grounded.core.safe_yaml import YamlError, dump_yaml, read_yaml
from grounded.engine.adapter import Adapter
from grounded.engine.pipeline import Pipeline, PipelineError
from grounded.engine.registry import get_adapter

__all__ = ["builtin_pipelines", "dump_pipeline", "load_pipeline", "pipeline_from_dict", "read_pipeline_spec"]

_SCHEMA_KEYS = {"name", "nodes", "edges", "inputs", "outputs"}


def _pipelines_dir() -> Path:
    import grounded.pipelines

    return Path(grounded.pipelines.__file__).resolve().parent


def builtin_pipelines() -> dict[str, Path]:
    """Bundled pipelines, by name."""
    return {p.stem: p for p in sorted(_pipelines_dir().glob("*.yaml"))}


def _accepts(cls: type, param: str) -> bool:
    """Whether the adapter's constructor takes ``param`` (following ``**kwargs`` up to the base class)."""
    for klass in cls.__mro__:
        if klass in (Adapter, object):
            return False
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        if param in params:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
    return False


def pipeline_from_dict(
    spec: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Build a pipeline from its description.

    ``overrides`` maps node name → params to replace; ``shared`` params (``device``, ``precision``, ...) go
    to every node whose adapter accepts them.
    """
    if not isinstance(spec, Mapping):
        raise PipelineError("a pipeline description must be a mapping")
    unknown = set(spec) - _SCHEMA_KEYS
    if unknown:
        raise PipelineError(f"unknown pipeline keys {sorted(unknown)}; allowed: {sorted(_SCHEMA_KEYS)}")
    nodes = spec.get("nodes") or {}
    if not isinstance(nodes, Mapping) or not nodes:
        raise PipelineError("a pipeline needs a 'nodes' mapping")
    overrides = dict(overrides or {})
    missing_nodes = set(overrides) - set(nodes)
    if missing_nodes:
        raise PipelineError(f"overrides name unknown nodes {sorted(missing_nodes)}; nodes: {sorted(nodes)}")
    name = spec.get("name", "pipeline")
    if not isinstance(name, (str, int, float)):
        raise PipelineError(f"a pipeline's 'name' must be a string, got a {type(name).__name__}")
    pipeline = Pipeline(str(name))
    for node, node_spec in nodes.items():
        if not isinstance(node_spec, Mapping) or "type" not in node_spec:
            raise PipelineError(f"node {node!r} needs a 'type' (a registered adapter name)")
        cls = get_adapter(str(node_spec["type"]))  # only registered names: nothing is imported from YAML
        params = dict(node_spec.get("params") or {})
        params.update({k: v for k, v in (shared or {}).items() if _accepts(cls, k)})
        params.update(overrides.get(node, {}))
        try:
            adapter = cls(**params)
        except (TypeError, ValueError) as exc:  # unknown or invalid parameters
            raise PipelineError(f"node {node!r} ({node_spec['type']}): {exc}") from None
        pipeline.add(str(node), adapter)
    for edge in spec.get("edges") or []:
        sender, arrow, receiver = str(edge).partition("->")
        if not arrow:
            raise PipelineError(f"edge {edge!r} must read 'node.port -> node.port'")
        pipeline.connect(sender.strip(), receiver.strip())
    for name, targets in (spec.get("inputs") or {}).items():
        pipeline.expose_input(str(name), [targets] if isinstance(targets, str) else list(targets))
    for name, source in (spec.get("outputs") or {}).items():
        pipeline.expose_output(str(name), str(source))
    pipeline.validate()
    return pipeline


def read_pipeline_spec(path_or_name: str | Path) -> dict[str, Any]:
    """The description of a YAML pipeline given by file path or by the name of a bundled pipeline."""
    path = Path(path_or_name)
    if not path.is_file():
        bundled = builtin_pipelines()
        # a bare name, NAME.yaml or pipelines/NAME.yaml may mean a bundled pipeline; any other path must exist
        plain = path.suffix in ("", ".yaml", ".yml") and str(path.parent) in (".", "pipelines")
        key = path.stem if plain else None
        if key not in bundled:
            raise PipelineError(
                f"no pipeline file {str(path_or_name)!r} and no bundled pipeline of that name; "
                f"bundled: {', '.join(bundled) or 'none'}"
            )
        path = bundled[key]
    try:
        spec = read_yaml(path)
    except YamlError as exc:
        raise PipelineError(str(exc)) from None
    if not isinstance(spec, dict):
        raise PipelineError(f"{path}: a pipeline file must hold a mapping")
    return spec


def load_pipeline(
    path_or_name: str | Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Load a YAML pipeline from a file path, or by the name of a bundled pipeline (see :func:`pipeline_from_dict`)."""
    return pipeline_from_dict(read_pipeline_spec(path_or_name), overrides, shared)


def dump_pipeline(pipeline: Pipeline) -> str:
    """The YAML text of a pipeline (loads back to an equal pipeline)."""
    return dump_yaml(pipeline.to_dict())
