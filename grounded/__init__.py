"""grounded: open-vocabulary grounding — words in, boxes and pixel-exact masks out.

Quick start::

    import grounded
    results = grounded.segment(["photo.jpg"], "dog . red car")   # one Detections per image
"""

from grounded.api import segment
from grounded.detections import Detections
from grounded.engine import Adapter, Pipeline, load_pipeline, register_adapter
from grounded.images import ImageLoadError, LoadedImage, load_image
from grounded.prompts import Prompt, PromptError
from grounded.sources import ModelSourceError

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Detections",
    "ImageLoadError",
    "LoadedImage",
    "ModelSourceError",
    "Pipeline",
    "Prompt",
    "PromptError",
    "load_image",
    "load_pipeline",
    "register_adapter",
    "segment",
]
