"""What every text-prompted detector adapter shares: the ports and one prompt or one prompt per image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import Adapter

__all__ = ["PromptedDetector"]


class PromptedDetector(Adapter):
    """Base of detectors: ``images`` + ``prompt`` in, one :class:`Detections` per image out.

    Subclasses implement :meth:`detect` for images that share one prompt.
    """

    outputs: ClassVar[dict[str, Any]] = {"detections": list[Detections]}

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
