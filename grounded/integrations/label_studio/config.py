"""What a Label Studio labeling config asks for, read with label-studio-sdk's own parser (``LabelInterface``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from grounded.core.errors import UserError
from grounded.core.ontology import Ontology, OntologyClass, OntologyError

__all__ = ["OUTPUT_KINDS", "LabelingConfig", "Output"]

#: control tag → the region kind the backend writes for it
OUTPUT_KINDS = {"RectangleLabels": "rectangle", "PolygonLabels": "polygon", "BrushLabels": "brush"}
_SMART_INPUTS = ("KeyPointLabels", "RectangleLabels")
#: Number tags whose name starts with these set the detector's thresholds
THRESHOLD_NAMES = ("box_threshold", "text_threshold")


def _true(value: str | None) -> bool:
    return str(value).lower() == "true"


@dataclass(frozen=True)
class Output:
    """One control the backend answers with regions."""

    from_name: str
    to_name: str
    kind: str  # rectangle | polygon | brush
    labels: tuple[str, ...]
    prompts: Mapping[
        str, tuple[str, ...]
    ]  # label value → its prompts (predicted_values, or the label itself)
    score_threshold: float | None = None  # the control's model_score_threshold

    def ontology(self, prompt: str | None = None) -> Ontology:
        """The label values as classes, found with their ``predicted_values`` (default), or with the classes
        of a typed ``prompt`` (``"cat, dog"``, ``"Cat: kitten, tabby"``), each mapped to a label value: by name
        (any case) or through a label's ``predicted_values``."""
        if not prompt:
            try:
                return Ontology(tuple(OntologyClass(label, self.prompts[label]) for label in self.labels))
            except OntologyError as exc:
                raise UserError(f"labels of <{self.from_name}>: {exc}") from None
        try:
            typed = Ontology.parse(prompt)  # never a file name: the text comes from the browser
        except OntologyError as exc:
            raise UserError(f"prompt {prompt!r}: {exc}") from None
        lookup = {label.lower(): label for label in self.labels}
        lookup.update({p.lower(): label for label in self.labels for p in self.prompts[label]})
        merged: dict[str, list[str]] = {}
        for cls in typed.classes:
            label = lookup.get(cls.name.lower())
            if label is None:
                raise UserError(
                    f"prompt class {cls.name!r} is no label of <{self.from_name}> ({', '.join(self.labels)}): "
                    f"name a label (e.g. '{self.labels[0]}: {cls.name}') or add it to a label's predicted_values"
                )
            merged.setdefault(label, [])
            merged[label] += [p for p in cls.prompts if p.lower() not in {m.lower() for m in merged[label]}]
        return Ontology(tuple(OntologyClass(label, tuple(prompts)) for label, prompts in merged.items()))


@dataclass(frozen=True)
class LabelingConfig:
    """The parts of a labeling config the backend uses.

    Attributes:
        image: the ``Image`` tag's name (regions' ``to_name``); ``image_key`` the task data key of ``$value``.
        outputs: every RectangleLabels / PolygonLabels / BrushLabels control on that image (smart
            RectangleLabels are inputs, not outputs).
        smart: names of smart KeyPointLabels / RectangleLabels controls (clicks and boxes for SAM).
        prompt: the TextArea whose text is the prompt, if any; ``prompt_key`` the task data key of its
            ``value="$key"`` (a prompt given per task), if any.
        numbers: threshold name (``box_threshold`` / ``text_threshold``) → (Number tag name, its defaultValue).
    """

    image: str
    image_key: str
    outputs: tuple[Output, ...]
    smart: frozenset[str] = frozenset()
    prompt: str | None = None
    numbers: Mapping[str, tuple[str, float | None]] = field(default_factory=dict)
    prompt_key: str | None = None

    @classmethod
    def parse(cls, xml: str) -> LabelingConfig:
        """Read a labeling config; a config without an Image, or without any control to answer, is refused."""
        from label_studio_sdk.label_interface import LabelInterface

        try:
            interface = LabelInterface(xml)
        except Exception as exc:
            raise UserError(f"unreadable labeling config: {' '.join(str(exc).split())[:200]}") from None
        images = [o for o in interface.objects if o.tag == "Image"]
        if not images:
            raise UserError("the labeling config has no <Image> tag")
        image = images[0]
        outputs, smart, prompt, prompt_key, numbers = [], set(), None, None, {}
        for control in interface.controls:
            if image.name not in control.to_name:
                continue
            is_smart = _true(control.attr.get("smart")) or _true(control.attr.get("smartOnly"))
            if control.tag in _SMART_INPUTS and is_smart:
                smart.add(control.name)
                continue
            if control.tag in OUTPUT_KINDS:
                prompts = {}
                for label, tag in control.labels_attrs.items():
                    given = [p.strip() for p in tag.attr.get("predicted_values", "").split(",") if p.strip()]
                    prompts[label] = tuple(given)
                threshold = control.attr.get("model_score_threshold")
                outputs.append(
                    Output(
                        control.name,
                        image.name,
                        OUTPUT_KINDS[control.tag],
                        tuple(control.labels),
                        prompts,
                        None if threshold is None else float(threshold),
                    )
                )
            elif control.tag == "TextArea" and prompt is None:
                prompt = control.name
                data_value = control.attr.get("value", "")
                prompt_key = data_value[1:] if data_value.startswith("$") else None
            elif control.tag == "Number":
                for key in THRESHOLD_NAMES:
                    if control.name.startswith(key) and key not in numbers:
                        default = control.attr.get("defaultValue")
                        numbers[key] = (control.name, None if default is None else float(default))
        shared: dict[str, list[str]] = {}  # a label's prompts: its predicted_values in any control
        for out in outputs:
            for label, values in out.prompts.items():
                have = shared.setdefault(label, [])
                have += [p for p in values if p.lower() not in map(str.lower, have)]
        outputs = [
            replace(out, prompts={label: tuple(shared[label] or [label]) for label in out.labels})
            for out in outputs
        ]
        if not outputs:
            raise UserError(
                "the labeling config has no RectangleLabels, PolygonLabels or BrushLabels for the image"
            )
        value = image.value
        return cls(
            image.name, value.lstrip("$"), tuple(outputs), frozenset(smart), prompt, numbers, prompt_key
        )

    def mask_output(self) -> Output:
        """Where a click's mask goes: the first BrushLabels, else PolygonLabels, else RectangleLabels."""
        for kind in ("brush", "polygon", "rectangle"):
            for out in self.outputs:
                if out.kind == kind:
                    return out
        raise AssertionError("parse() refuses configs without outputs")
