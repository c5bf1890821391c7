"""Taggers: image → the words to look for. Their ``tags`` port (one :class:`Prompt` per image) feeds a
detector's ``prompt`` port, so a pipeline finds whatever a captioner saw, without a class list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from grounded.adapters.common import ModelAdapter
from grounded.core.checks import at_least, batches
from grounded.core.images import LoadedImage
from grounded.core.noun_phrases import noun_phrases
from grounded.core.prompts import Prompt
from grounded.engine import register_adapter
from grounded.runtime.device import autocast

__all__ = ["BlipTagger"]


@register_adapter("blip")
class BlipTagger(ModelAdapter):
    """Caption each image with BLIP (``BlipForConditionalGeneration``), then take the caption's noun phrases.

    Outputs ``tags``: one :class:`Prompt` per image, the caption's noun phrases (see
    :func:`grounded.core.noun_phrases.noun_phrases`: de-duplicated, stop-phrases such as "a picture" removed), or
    ``fallback`` when the caption has none; and ``captions``, the captions themselves.

    Args:
        model: hub id or local transformers-format folder (default: ``Salesforce/blip-image-captioning-base``).
        text: optional caption prefix for conditional captioning (e.g. ``"a picture of"``); it is removed from
            the caption before phrases are read.
        max_new_tokens: caption length limit.
        num_beams: beam search width (1: greedy).
        max_tags: keep at most this many phrases per image (first ones in the caption).
        stop_phrases: phrases never used as tags (default: :data:`grounded.core.noun_phrases.DEFAULT_STOP_PHRASES`).
        fallback: the tag when a caption has no usable noun phrase.
        batch_size: images per generation call.
        device, precision: as for the other adapters.
    """

    outputs: ClassVar[dict[str, Any]] = {"tags": list[Prompt], "captions": list[str]}
    model_types: ClassVar[tuple[str, ...]] = ("blip",)
    model_class: ClassVar[str] = "BlipForConditionalGeneration"
    what: ClassVar[str] = "tagger"

    def __init__(
        self,
        model: str = "Salesforce/blip-image-captioning-base",
        text: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        max_tags: int = 16,
        stop_phrases: Sequence[str] | None = None,
        fallback: str = "object",
        batch_size: int = 8,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        at_least(
            1, max_new_tokens=max_new_tokens, num_beams=num_beams, max_tags=max_tags, batch_size=batch_size
        )
        Prompt((fallback,))  # validates the fallback tag
        super().__init__()

    @torch.inference_mode()
    def caption(self, images: Sequence[LoadedImage]) -> list[str]:
        """One caption per image (``batch_size`` images per generation call)."""
        self.warm_up()
        captions: list[str] = []
        for batch in batches(images, self.batch_size):
            chunk = [im.pixels for im in batch]
            kwargs: dict[str, Any] = {"images": chunk, "return_tensors": "pt"}
            if self.text:
                kwargs["text"] = [self.text] * len(chunk)
            inputs = self._processor(**kwargs).to(self.device)
            with autocast(self.device, self.precision):
                ids = self._model.generate(
                    **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
                )
            for text in self._processor.batch_decode(ids, skip_special_tokens=True):
                text = " ".join(text.split())
                if self.text and text.lower().startswith(self.text.lower()):
                    text = text[len(self.text) :].strip()
                captions.append(text)
        return captions

    def tags_of(self, caption: str) -> Prompt:
        """The prompt read from one caption: its noun phrases, or the fallback tag."""
        phrases = noun_phrases(caption, self.stop_phrases)[: self.max_tags]
        return Prompt.of(phrases) if phrases else Prompt((self.fallback,))

    def run(self, images: list[LoadedImage]) -> dict[str, Any]:
        """Port entry: captions and one :class:`Prompt` of tags per image."""
        captions = self.caption(images)
        return {"tags": [self.tags_of(c) for c in captions], "captions": captions}
