"""The public Python API in one place: ``grounded.api.segment`` and ``grounded.api.build_pipeline``."""

from grounded.tasks.segment import ImageSource, build_pipeline, segment

__all__ = ["ImageSource", "build_pipeline", "segment"]
