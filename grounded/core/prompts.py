"""Text prompts: parsing ``"dog . red car"`` (or one class per line) into classes, building captions, splitting
long ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Caption", "Prompt", "PromptError", "build_caption", "chunk_classes", "parse_prompt"]

SEPARATOR = " . "


class PromptError(ValueError):
    """A prompt that cannot be used (empty, or a class longer than the text encoder's limit)."""


@dataclass(frozen=True)
class Prompt:
    """The classes a user asked for, in order, without duplicates."""

    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise PromptError(
                'empty prompt: give one or more classes separated by " . ", e.g. "dog . red car"'
            )
        for c in self.classes:
            if not c.strip():
                raise PromptError(f"empty class name in {self.classes!r}")
            if "." in c:
                raise PromptError(f"class name {c!r} contains '.', which separates classes; write it without")

    @classmethod
    def of(cls, prompt: str | Sequence[str] | Prompt) -> Prompt:
        """A prompt from text (``"dog . red car"``), a list of class names, or a prompt.

        In a list each item is one class: an item holding a line break (which separates classes in text) is
        refused rather than joined into one class.
        """
        if isinstance(prompt, Prompt):
            return prompt
        if isinstance(prompt, str):
            return parse_prompt(prompt)
        names = [str(c) for c in prompt]
        for name in names:
            if len(name.strip().splitlines()) > 1:
                raise PromptError(f"class name {name!r} contains a line break, which separates classes")
        return cls(_dedupe(name.strip() for name in names))

    def __str__(self) -> str:
        return SEPARATOR.join(self.classes)


def _dedupe(names: object) -> tuple[str, ...]:
    seen: set[str] = set()
    out = []
    for name in names:  # type: ignore[attr-defined]
        key = " ".join(name.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(" ".join(name.split()))
    return tuple(out)


def parse_prompt(text: str) -> Prompt:
    """Split a Grounding-DINO style prompt into classes on ``.`` and on line breaks (``"cup\nplate"`` is two
    classes, as ``"cup . plate"``); whitespace normalised, duplicates dropped."""
    if not isinstance(text, str):
        raise PromptError(f"prompt must be a string, got {type(text).__name__}")
    return Prompt(_dedupe(part.strip() for line in text.splitlines() for part in line.split(".")))


@dataclass(frozen=True)
class Caption:
    """The text fed to the detector for some classes, with each class's character span in it."""

    text: str
    class_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]


def build_caption(classes: Sequence[str], class_ids: Sequence[int] | None = None) -> Caption:
    """``["dog", "red car"]`` → ``"dog . red car ."`` with spans ``(0, 3)`` and ``(6, 13)``."""
    ids = tuple(range(len(classes))) if class_ids is None else tuple(class_ids)
    parts, spans, pos = [], [], 0
    for i in ids:
        name = classes[i]
        spans.append((pos, pos + len(name)))
        parts.append(name)
        pos += len(name) + len(SEPARATOR)
    return Caption(text=SEPARATOR.join(parts) + " .", class_ids=ids, spans=tuple(spans))


def chunk_classes(
    classes: Sequence[str], count_tokens: Callable[[str], int], max_tokens: int
) -> list[tuple[int, ...]]:
    """Group class indices into captions of at most ``max_tokens`` tokens (special tokens included).

    ``count_tokens(text)`` counts a text's tokens *without* special tokens. A caption's length is the sum
    of its classes' tokens, one ``.`` per class and two special tokens (``[CLS]``, ``[SEP]``).
    """
    budget = max_tokens - 2
    chunks: list[tuple[int, ...]] = []
    current: list[int] = []
    used = 0
    for i, name in enumerate(classes):
        cost = count_tokens(name) + 1
        if cost > budget:
            raise PromptError(
                f"class {name!r} is {cost - 1} tokens long; the text encoder takes at most {budget - 1} per class"
            )
        if used + cost > budget:
            chunks.append(tuple(current))
            current, used = [], 0
        current.append(i)
        used += cost
    if current:
        chunks.append(tuple(current))
    return chunks
