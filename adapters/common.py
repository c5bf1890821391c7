"""What the model adapters share: lazy loading of a checked model family onto a device at a precision
(:class:`ModelAdapter`), and the ports of text-prompted detectors (:class:`PromptedDetector`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch

from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import Adapter
from grounded.models.sources import load_model_and_processor
from grounded.runtime.device import check_precision, pick_device, resolve_precision

__all__ = ["ModelAdapter", "PromptedDetector"]


class ModelAdapter(Adapter):
    """An adapter around one model with ``model``, ``device`` and ``precision`` parameters, loaded lazily.

    :meth:`warm_up` (idempotent) picks the device, resolves ``precision="auto"`` for it, calls
    :meth:`load` and moves the model there in eval mode, then :meth:`prepare` (fast kernels, compile). After
    it, ``self.device`` is the ``torch.device`` and ``self.precision`` the precision in use, while
    :meth:`get_params` keeps the values as given. A subclass names its model family and loader class:

    * ``what``: how errors name the model (``"detector"``, ``"segmenter"``, ``"tagger"``);
    * ``model_types``: the config ``model_type`` values it accepts (another family is refused with one line);
    * ``model_class``: the transformers class whose ``from_pretrained`` loads it;

    or overrides :meth:`load` for models that are not one transformers class.
    """

    what: ClassVar[str] = "model"
    model_types: ClassVar[tuple[str, ...]] = ()
    model_class: ClassVar[str] = "AutoModel"

    device: torch.device
    precision: str

    def __init__(self) -> None:
        check_precision(self._params.get("precision", "fp32"))
        self._model: Any = None
        self._processor: Any = None

    def processor_options(self) -> dict[str, Any] | None:
        """Keyword arguments for ``AutoProcessor.from_pretrained`` (none by default)."""
        return None

    def load(self) -> tuple[Any, Any]:
        """``(processor, model)`` from the ``model`` parameter; the model family is checked first."""
        import transformers

        loader = getattr(transformers, self.model_class).from_pretrained
        source = self._params["model"]
        return load_model_and_processor(
            source, self.what, self.model_types, self.registry_name, loader, self.processor_options()
        )

    def prepare(self) -> None:
        """After loading, on the device: swap in fast kernels, compile. Nothing by default."""

    def warm_up(self) -> None:
        if self._model is not None:
            return
        device = pick_device(self._params["device"], self._params["precision"])
        processor, model = self.load()
        self.device = device
        self.precision = resolve_precision(self._params["precision"], device)
        self._processor = processor
        self._model = model.to(device).eval()
        self.prepare()


class PromptedDetector(ModelAdapter):
    """Base of detectors: ``images`` + ``prompt`` in, one :class:`Detections` per image out.

    Subclasses implement :meth:`detect` for images that share one prompt.
    """

    outputs: ClassVar[dict[str, Any]] = {"detections": list[Detections]}
    what: ClassVar[str] = "detector"

    def detect(self, images: Sequence[LoadedImage], prompt: Prompt | str | Sequence[str]) -> list[Detections]:
        raise NotImplementedError

    def run(self, images: list[LoadedImage], prompt: Prompt | list[Prompt]) -> dict[str, Any]:
        """Port entry: one prompt for all images, or a list of one :class:`Prompt` per image."""
        if isinstance(prompt, list) and prompt and all(isinstance(p, Prompt) for p in prompt):
            if len(prompt) != len(images):
                raise ValueError(f"got {len(prompt)} prompts for {len(images)} images")
            groups: dict[tuple[str, ...], list[int]] = {}
            for i, p in enumerate(prompt):
                groups.setdefault(p.classes, []).append(i)
            out: list[Detections | None] = [None] * len(images)
            for classes, idxs in groups.items():
                for i, det in zip(idxs, self.detect([images[i] for i in idxs], Prompt(classes)), strict=True):
                    out[i] = det
            return {"detections": out}
        # a str, a list of class names or a Prompt: one prompt for every image
        return {"detections": self.detect(images, cast("Prompt | str | Sequence[str]", prompt))}
