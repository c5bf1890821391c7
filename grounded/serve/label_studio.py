"""``grounded serve --label-studio``: the Label Studio ML backend's routes under ``/label-studio`` on the same
server (Label Studio is given ``http://HOST:PORT/label-studio``; it appends ``/health``, ``/setup``,
``/predict`` and ``/webhook``)."""

from __future__ import annotations

from fastapi import APIRouter

from grounded.serve.config import ServeConfig

__all__ = ["LABEL_STUDIO_PREFIX", "label_studio_routes"]

LABEL_STUDIO_PREFIX = "/label-studio"


def label_studio_routes(config: ServeConfig) -> APIRouter:
    """The backend's routes for ``config``'s pipeline and models, under :data:`LABEL_STUDIO_PREFIX`.

    The backend holds its own copy of the models, built on its first request (Label Studio's requests run one
    at a time there, and never wait behind the page's model gates).
    """
    from grounded.integrations.annotator import Annotator
    from grounded.integrations.label_studio import LabelStudioBackend, label_studio_router

    annotator = Annotator(
        config.pipeline,
        device=str(config.shared.get("device", "auto")),
        overrides=config.overrides,
    )
    routes = APIRouter(prefix=LABEL_STUDIO_PREFIX)
    routes.include_router(label_studio_router(LabelStudioBackend(annotator)))
    return routes
