"""``grounded serve``: the HTTP API and the web page for interactive segmentation.

:func:`create_app` builds the FastAPI application from a :class:`ServeConfig` (or a ready :class:`Service`)
out of routers, so other front ends (a Label Studio backend, Ray Serve) mount the same routes; the models
live in the :class:`Service` (loaded once, every model call behind a bounded :class:`ModelGate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grounded.core.lazy import lazy_names

if TYPE_CHECKING:
    from grounded.serve.app import create_app
    from grounded.serve.config import ServeConfig
    from grounded.serve.gate import Busy, ModelGate
    from grounded.serve.service import Service

__all__ = ["Busy", "ModelGate", "ServeConfig", "Service", "create_app"]

__getattr__, __dir__ = lazy_names(
    globals(),
    {
        "create_app": "grounded.serve.app",
        "ServeConfig": "grounded.serve.config",
        "Busy": "grounded.serve.gate",
        "ModelGate": "grounded.serve.gate",
        "Service": "grounded.serve.service",
    },
)
