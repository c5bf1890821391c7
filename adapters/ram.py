"""Recognize Anything taggers (RAM, RAM++): image → the tags it recognises among 4585, each with its own
threshold. Their ``tags`` port (one :class:`Prompt` per image) feeds a detector's ``prompt`` port."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from grounded.adapters.common import ModelAdapter
from grounded.core.checks import at_least, batches
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import register_adapter
from grounded.models.sources import ModelSourceError
from grounded.runtime.device import autocast

__all__ = ["RamPlusTagger", "RamTagger"]


@register_adapter("ram")
class RamTagger(ModelAdapter):
    """Tag each image with RAM or RAM++ (:mod:`grounded.models.ram`; the variant is read from the weights).

    Outputs ``tags``: one :class:`Prompt` per image, the recognised tags in the tag list's order, or
    ``fallback`` when there is none; and ``captions``, the tags joined by ``" | "`` (the original's output).

    Args:
        model: an official checkpoint (``ram_swin_large_14m.pth``, ``ram_plus_swin_large_14m.pth``) or a folder
            written by :func:`grounded.models.ram.save_ram`.
        tag_list: a tag list file (one per line) for a model trained on another list; default: the folder's,
            else the released 4585 tags.
        thresholds: a per-class threshold file for ``tag_list``; default: the folder's / the released ones.
        threshold: one threshold for every class instead of the per-class ones.
        max_tags: keep at most this many tags per image (the highest-scoring); default: all.
        exclude: tags never returned (the original's ``delete_tag_index``).
        fallback: the tag when an image has none.
        batch_size: images per forward pass.
        device, precision: as for the other adapters.
    """

    outputs: ClassVar[dict[str, Any]] = {"tags": list[Prompt], "captions": list[str]}
    variants: ClassVar[tuple[str, ...]] = ("ram", "ram_plus")
    what: ClassVar[str] = "tagger"

    def __init__(
        self,
        model: str = "ram_swin_large_14m.pth",
        tag_list: str | None = None,
        thresholds: str | None = None,
        threshold: float | None = None,
        max_tags: int | None = None,
        exclude: Sequence[str] = (),
        fallback: str = "object",
        batch_size: int = 8,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        at_least(1, batch_size=batch_size, max_tags=1 if max_tags is None else max_tags)
        if threshold is not None and not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        Prompt((fallback,))  # validates the fallback tag
        super().__init__()

    def load(self) -> tuple[Any, Any]:
        """``(ram, ram.model)``: the tagger (preprocessing, thresholds, tag selection) and its network."""
        from grounded.models.ram import RamCheckpointError, load_ram

        source = self._params["model"]
        try:
            ram = load_ram(source, tags=self._params["tag_list"], thresholds=self._params["thresholds"])
        except (RamCheckpointError, OSError) as exc:
            raise ModelSourceError(f"tagger {source!r}: {exc}") from None
        if ram.config.variant not in self.variants:
            raise ModelSourceError(
                f"tagger {source!r} is a {ram.config.variant!r} model; the {self.registry_name} adapter takes "
                f"{' or '.join(self.variants)}"
            )
        ram.select(ram.thresholds[None], exclude=self.exclude)  # checks the excluded tags exist
        return ram, ram.model

    def tag(self, images: Sequence[LoadedImage]) -> list[list[str]]:
        """The tags of each image (``batch_size`` images per forward pass)."""
        self.warm_up()
        out: list[list[str]] = []
        for batch in batches(images, self.batch_size):
            with autocast(self.device, self.precision):
                scores = self._processor.probabilities([im.pixels for im in batch])
            out.extend(self._processor.select(scores, self.threshold, self.exclude, self.max_tags))
        return out

    def run(self, images: list[LoadedImage]) -> dict[str, Any]:
        """Port entry: one :class:`Prompt` of tags per image, and the tags as RAM prints them."""
        tags = self.tag(images)
        return {
            "tags": [Prompt.of(t) if t else Prompt((self.fallback,)) for t in tags],
            "captions": [" | ".join(t) for t in tags],
        }


@register_adapter("ram_plus")
class RamPlusTagger(RamTagger):
    """RAM++ (``ram_plus_swin_large_14m.pth``): :class:`RamTagger` that takes RAM++ weights only."""

    variants: ClassVar[tuple[str, ...]] = ("ram_plus",)

    def __init__(self, model: str = "ram_plus_swin_large_14m.pth", **options: Any) -> None:
        super().__init__(model=model, **options)
