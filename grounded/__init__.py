"""grounded: open-vocabulary grounding — words in, boxes and pixel-exact masks out.

Quick start::

    import grounded
    results = grounded.segment(["photo.jpg"], "dog . red car")   # one Detections per image

The names below are imported on first use (``import grounded`` alone loads neither torch nor a model
library), so the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from grounded import _moved
from grounded.core.lazy import lazy_names
from grounded.core.version import __version__

_moved.install()  # old module paths (grounded.images, grounded.ram, ...) import the moved modules

if TYPE_CHECKING:
    from grounded.api import build_pipeline, segment, track
    from grounded.core.detections import Detections
    from grounded.core.images import ImageLoadError, LoadedImage, load_image
    from grounded.core.prompts import Prompt, PromptError
    from grounded.engine import Adapter, Pipeline, load_pipeline, register_adapter
    from grounded.models.hub import ModelSourceError

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Adapter": "grounded.engine",
    "Detections": "grounded.core.detections",
    "ImageLoadError": "grounded.core.images",
    "LoadedImage": "grounded.core.images",
    "ModelSourceError": "grounded.models.hub",
    "Pipeline": "grounded.engine",
    "Prompt": "grounded.core.prompts",
    "PromptError": "grounded.core.prompts",
    "build_pipeline": "grounded.api",
    "load_image": "grounded.core.images",
    "load_pipeline": "grounded.engine",
    "register_adapter": "grounded.engine",
    "segment": "grounded.api",
    "track": "grounded.api",
}

__all__ = [
    "Adapter",
    "Detections",
    "ImageLoadError",
    "LoadedImage",
    "ModelSourceError",
    "Pipeline",
    "Prompt",
    "PromptError",
    "__version__",
    "build_pipeline",
    "load_image",
    "load_pipeline",
    "register_adapter",
    "segment",
    "track",
]


_names_getattr, __dir__ = lazy_names(globals(), _EXPORTS)


def __getattr__(name: str) -> Any:
    """The public names above, then subpackages as attributes (``grounded.adapters`` after ``import grounded``)."""
    if name in _EXPORTS:
        return _names_getattr(name)
    try:
        return importlib.import_module(f"grounded.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"grounded.{name}":
            raise
        raise AttributeError(f"module 'grounded' has no attribute {name!r}") from None
