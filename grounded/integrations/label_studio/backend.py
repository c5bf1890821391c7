"""The ML backend's answers: label-studio-ml-backend's ``/setup``, ``/predict`` and ``/webhook`` protocol.

``/predict`` gets ``{"tasks": [...], "label_config": ..., "project": "ID.TIMESTAMP", "params": {"context":
...}}`` and answers ``{"results": [prediction per task]}``, each prediction ``{"result": [regions],
"score", "model_version"}``. Without a ``context`` every task is pre-annotated from the text prompt; with
one, the annotator's smart clicks / boxes are turned into a SAM mask, or a typed prompt (``TextArea``) runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from grounded.core.errors import UserError
from grounded.core.lru import LruCache
from grounded.integrations.annotator import Annotator
from grounded.integrations.label_studio.config import LabelingConfig
from grounded.integrations.label_studio.media import DEFAULT_MAX_BYTES, ImageFetcher
from grounded.integrations.label_studio.regions import (
    brush_region,
    detection_regions,
    polygon_regions,
    rectangle_region,
)

__all__ = ["TRAIN_EVENTS", "LabelStudioBackend"]

_log = logging.getLogger(__name__)

#: webhook events label-studio-ml-backend hands to ``fit`` (others answer "Unknown event")
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


def _project_id(project: Any) -> str:
    return str(project or "").split(".", 1)[0]


class LabelStudioBackend:
    """One backend for any number of projects; each project's last prompt and thresholds are remembered.

    Args:
        annotator: the models.
        max_download_bytes: the largest image download accepted.
    """

    def __init__(self, annotator: Annotator, *, max_download_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.annotator = annotator
        self.fetch = ImageFetcher(max_download_bytes)
        self._configs: LruCache[str, LabelingConfig] = LruCache(32)
        self.projects: LruCache[str, dict[str, Any]] = LruCache(1024)
        self._lock = threading.Lock()

    @property
    def model_version(self) -> str:
        return self.annotator.model_version()

    def config(self, xml: Any) -> LabelingConfig:
        if not isinstance(xml, str) or not xml.strip():
            raise UserError("the request has no labeling config")
        with self._lock:
            found = self._configs.get(xml)
        if found is None:
            found = LabelingConfig.parse(xml)
            with self._lock:
                self._configs.put(xml, found)
        return found

    def memory(self, project: Any) -> dict[str, Any]:
        """The remembered ``prompt`` and thresholds of a project."""
        key = _project_id(project)
        with self._lock:
            found = self.projects.get(key)
            if found is None:
                found = {}
                self.projects.put(key, found)
            return found

    # ------------------------------------------------------------------ routes
    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": type(self).__name__}

    def setup(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /setup``: checks the project's labeling config (``schema``); answers the model version."""
        if body.get("schema"):
            self.config(body["schema"])
        return {"model_version": self.model_version}

    def webhook(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """``POST /webhook``: a saved annotation's prompt and thresholds become the project's defaults."""
        event = body.get("action")
        if event not in TRAIN_EVENTS:
            return {"status": "Unknown event"}, 200
        project = body.get("project") or {}
        annotation = body.get("annotation") or {}
        remembered: dict[str, Any] = {}
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") and project.get("label_config"):
            config = self.config(project["label_config"])
            remembered = self._remember(config, project.get("id"), annotation.get("result") or [])
        return {"result": remembered, "status": "ok"}, 201

    def predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /predict``: one prediction per task."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise UserError("the request has no list of tasks")
        config = self.config(body.get("label_config"))
        params = body.get("params") or {}
        context = params.get("context") or {}
        results = context.get("result") or [] if isinstance(context, Mapping) else []
        project = body.get("project")
        clicks = [r for r in results if r.get("from_name") in config.smart]
        if clicks:
            return {"results": [self._click(config, task, clicks) for task in tasks[:1]]}
        typed = self._remember(config, project, results).get("prompt") if config.prompt else None
        typed = typed if any(r.get("from_name") == config.prompt for r in results) else None
        if len(tasks) == 1:  # the annotator waits for this one: an error is shown to them
            return {"results": [self._auto(config, tasks[0], project, typed)]}
        out = []
        for task in tasks:  # a batch (Retrieve predictions): a bad task gets an empty prediction
            try:
                out.append(self._auto(config, task, project, typed))
            except UserError as exc:
                _log.warning("%s", exc)
                out.append(self._prediction([], []))
        return {"results": out}

    # ------------------------------------------------------------------ helpers
    def _remember(
        self, config: LabelingConfig, project: Any, results: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """A typed prompt and threshold numbers in ``results`` become the project's."""
        memory = self.memory(project)
        names = {name: key for key, (name, _) in config.numbers.items()}
        for r in results:
            value = r.get("value") or {}
            if config.prompt and r.get("from_name") == config.prompt and value.get("text"):
                text = " ".join(str(t) for t in value["text"]).strip()
                if text:
                    memory["prompt"] = text
            elif r.get("from_name") in names and value.get("number") is not None:
                number = float(value["number"])
                if not 0.0 <= number <= 1.0:
                    raise UserError(f"{r['from_name']} must lie in [0, 1], got {number}")
                memory[names[r["from_name"]]] = number
        return dict(memory)

    def _image(self, config: LabelingConfig, task: Mapping[str, Any]) -> Any:
        data = task.get("data") or {}
        if config.image_key not in data:
            raise UserError(
                f"task {task.get('id')} has no data[{config.image_key!r}] for <Image name={config.image!r}>"
            )
        return self.fetch(data[config.image_key], task.get("id"))

    def _auto(
        self, config: LabelingConfig, task: Mapping[str, Any], project: Any, typed: str | None = None
    ) -> dict[str, Any]:
        """Pre-annotation from the prompt: typed now, else the task's own (``TextArea value="$key"``), else
        the project's last typed one, else the config's labels."""
        memory = self.memory(project)
        image = self._image(config, task)
        thresholds = {key: memory.get(key, default) for key, (_, default) in config.numbers.items()}
        own = (task.get("data") or {}).get(config.prompt_key) if config.prompt_key else None
        prompt = typed or (own if isinstance(own, str) and own.strip() else None) or memory.get("prompt")
        need_masks = any(out.kind != "rectangle" for out in config.outputs)
        found: dict[str, Any] = {}
        regions: list[dict[str, Any]] = []
        for out in config.outputs:
            ontology = out.ontology(prompt)
            key = ontology.to_spec()
            if key not in found:
                found[key] = self.annotator.detect(
                    image, ontology, masks=need_masks, detector_params=thresholds
                )
            regions += detection_regions(
                found[key], out.kind, out.from_name, out.to_name, out.score_threshold
            )
        scores = [r["score"] for r in regions]
        for k, region in enumerate(regions):
            region["id"] = f"g{k}"
        if prompt and config.prompt:  # show the prompt used in the TextArea
            regions.append(
                {
                    "from_name": config.prompt,
                    "to_name": config.image,
                    "type": "textarea",
                    "value": {"text": [prompt]},
                }
            )
        for key, (name, _) in config.numbers.items():
            if thresholds.get(key) is not None:
                value = {"number": thresholds[key]}
                regions.append({"from_name": name, "to_name": config.image, "type": "number", "value": value})
        return self._prediction(regions, scores)

    def _click(
        self, config: LabelingConfig, task: Mapping[str, Any], clicks: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Smart keypoints (``is_positive``) and / or a smart box → one SAM mask region, labelled as clicked."""
        image = self._image(config, task)
        height, width = image.size
        points: list[list[float]] = []
        labels: list[int] = []
        box = None
        label = None
        for r in clicks:
            value = r.get("value") or {}
            kind = r.get("type", "")
            chosen = value.get(kind) or value.get("labels") or []
            label = chosen[0] if chosen else label
            try:
                x, y = width * float(value["x"]) / 100, height * float(value["y"]) / 100
                if kind == "keypointlabels":
                    points.append([x, y])
                    labels.append(1 if r.get("is_positive", True) else 0)
                elif kind == "rectanglelabels":
                    w, h = width * float(value["width"]) / 100, height * float(value["height"]) / 100
                    box = [x, y, x + w, y + h]
            except (KeyError, TypeError, ValueError):
                raise UserError(
                    f"smart region {r.get('id')!r} of <{r.get('from_name')}> has no x/y in percent"
                ) from None
            if not all(0 <= v <= 100 for v in (value["x"], value["y"])):
                raise UserError(f"smart region {r.get('id')!r} lies outside the image")
        out = config.mask_output()
        label = label or out.labels[0]
        answer = self.annotator.click(image, points, labels, box)
        mask = answer.mask.numpy()
        regions: list[dict[str, Any]] = []
        if mask.any():
            if out.kind == "brush":
                regions = [brush_region(mask, label, answer.score, out.from_name, out.to_name)]
            elif out.kind == "polygon":
                regions = polygon_regions(mask, label, answer.score, out.from_name, out.to_name)
            else:
                ys, xs = mask.nonzero()
                bbox = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                regions = [
                    rectangle_region(bbox, label, answer.score, out.from_name, out.to_name, image.size)
                ]
        for k, region in enumerate(regions):
            region["id"] = f"s{k}"
            region["readonly"] = False
        return self._prediction(regions, [answer.score] * bool(regions))

    def _prediction(self, regions: list[dict[str, Any]], scores: Sequence[float]) -> dict[str, Any]:
        score = sum(scores) / len(scores) if scores else 0.0
        return {"result": regions, "score": round(float(score), 6), "model_version": self.model_version}
