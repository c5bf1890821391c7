"""A fixed ontology for auto-annotation: dataset classes, each found with one or more text prompts.

``"person, dog, bicycle"`` is three classes, each prompted by its own name. A class may list its prompts after
a colon: ``"car: automobile, sedan; person"`` (classes are then separated by ``;`` or new lines). A detection
of any prompt of a class gets that class's id: the dataset's class comes from the ontology, never from the
detector's phrase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from grounded.core.detections import Detections
from grounded.core.prompts import Prompt, PromptError

__all__ = ["Ontology", "OntologyClass", "OntologyError"]


class OntologyError(PromptError):
    """An ontology that cannot be used (empty, duplicate class, a prompt shared by two classes)."""


@dataclass(frozen=True)
class OntologyClass:
    """One dataset class and the prompts that find it."""

    name: str
    prompts: tuple[str, ...]


def _norm(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Ontology:
    """Dataset classes in order (class id = position + 1 in exports, COCO-style)."""

    classes: tuple[OntologyClass, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise OntologyError('empty ontology: give classes like "person, dog" or "car: automobile, sedan"')
        names: set[str] = set()
        owner: dict[str, str] = {}
        for cls in self.classes:
            key = cls.name.lower()
            if not cls.name or key in names:
                raise OntologyError(f"class {cls.name!r} is empty or given twice")
            names.add(key)
            if not cls.prompts:
                raise OntologyError(f"class {cls.name!r} has no prompt")
            for prompt in cls.prompts:
                if "." in prompt or not prompt:
                    raise OntologyError(f"prompt {prompt!r} of class {cls.name!r} is empty or contains '.'")
                other = owner.setdefault(prompt.lower(), cls.name)
                if other != cls.name:
                    raise OntologyError(f"prompt {prompt!r} is given for both {other!r} and {cls.name!r}")

    @classmethod
    def parse(cls, text: str) -> Ontology:
        """Parse ``"person, dog"`` or ``"car: automobile, sedan; person"`` (``;`` or new lines between classes)."""
        text = text.strip()
        if ":" in text or ";" in text or "\n" in text:
            entries = [e for line in text.splitlines() for e in line.split(";")]
        else:
            entries = text.split(",")
        classes = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            name, colon, rest = entry.partition(":")
            name = _norm(name)
            prompts = [_norm(p) for p in rest.split(",")] if colon else [name]
            seen: list[str] = []
            for p in prompts:
                if p and p.lower() not in [s.lower() for s in seen]:
                    seen.append(p)
            classes.append(OntologyClass(name, tuple(seen)))
        return cls(tuple(classes))

    @classmethod
    def load(cls, spec: str | Path) -> Ontology:
        """From text, or from a file (one class per line, ``name: prompt, prompt``) when ``spec`` is a file.

        Only in a file, a line whose first non-blank character is ``#`` is a comment; in text a class may start
        with ``#``.
        """
        path = Path(str(spec))
        if str(spec).endswith((".txt", ".yaml", ".yml", ".csv")) and path.is_file():
            lines = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if not line.lstrip().startswith("#")
            ]
            return cls.parse("\n".join(line if ":" in line else line + ":" + line for line in lines))
        return cls.parse(str(spec))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def prompt(self) -> Prompt:
        """Every class's prompts, in order, as one detector prompt."""
        return Prompt(tuple(p for c in self.classes for p in c.prompts))

    def prompt_to_class(self) -> dict[str, int]:
        """Lower-cased prompt → class index."""
        return {p.lower(): i for i, c in enumerate(self.classes) for p in c.prompts}

    def assign(self, det: Detections) -> Detections:
        """The detections with the ontology as their classes: each prompt's detections get its class id.

        ``phrases`` keep what the detector matched; a class the ontology does not know raises.
        """
        lookup = self.prompt_to_class()
        try:
            mapping = [lookup[c.lower()] for c in det.classes]
        except KeyError as exc:
            raise OntologyError(
                f"detections of {exc.args[0]!r}, which is no prompt of the ontology"
            ) from None
        class_ids = torch.as_tensor(mapping, dtype=torch.int64, device=det.class_ids.device)[det.class_ids]
        return replace(det, class_ids=class_ids.reshape(-1), classes=self.names)

    def to_spec(self) -> str:
        """The text form that parses back to this ontology."""
        return "; ".join(f"{c.name}: {', '.join(c.prompts)}" for c in self.classes)

    @classmethod
    def of(cls, names: Sequence[str]) -> Ontology:
        """One class per name, prompted by its own name."""
        return cls(tuple(OntologyClass(_norm(n), (_norm(n),)) for n in names))
