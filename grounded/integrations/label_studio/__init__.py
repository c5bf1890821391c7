"""A Label Studio ML backend: ``/health``, ``/setup``, ``/predict``, ``/webhook`` as label-studio-ml-backend
speaks them, answering from the project's labeling config (``RectangleLabels``, ``PolygonLabels``,
``BrushLabels``; smart ``KeyPointLabels`` / ``RectangleLabels`` clicks → SAM masks).

:func:`label_studio_router` is a FastAPI ``APIRouter`` for any app; :func:`create_app` a whole app
(``grounded label-studio-backend`` serves it).
"""

from grounded.core.lazy import lazy_names

__all__ = ["LabelStudioBackend", "LabelingConfig", "create_app", "label_studio_router"]

__getattr__, __dir__ = lazy_names(
    globals(),
    {
        "LabelStudioBackend": "grounded.integrations.label_studio.backend",
        "LabelingConfig": "grounded.integrations.label_studio.config",
        "create_app": "grounded.integrations.label_studio.app",
        "label_studio_router": "grounded.integrations.label_studio.app",
    },
)
