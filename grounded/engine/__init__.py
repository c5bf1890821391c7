"""The pipeline engine: adapters, their registry, the DAG and its YAML form."""

from grounded.engine.adapter import Adapter, Port, input_ports, output_ports
from grounded.engine.pipeline import Pipeline, PipelineConnectionError, PipelineError, types_compatible
from grounded.engine.registry import (
    BUILTIN_ADAPTERS,
    ENTRY_POINT_GROUP,
    UnknownAdapterError,
    available_adapters,
    get_adapter,
    register_adapter,
)
from grounded.engine.serialization import builtin_pipelines, dump_pipeline, load_pipeline, pipeline_from_dict

__all__ = [
    "BUILTIN_ADAPTERS",
    "ENTRY_POINT_GROUP",
    "Adapter",
    "Pipeline",
    "PipelineConnectionError",
    "PipelineError",
    "Port",
    "UnknownAdapterError",
    "available_adapters",
    "builtin_pipelines",
    "dump_pipeline",
    "get_adapter",
    "input_ports",
    "load_pipeline",
    "output_ports",
    "pipeline_from_dict",
    "register_adapter",
    "types_compatible",
]
