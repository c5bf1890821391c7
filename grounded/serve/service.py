"""The models behind the server, loaded once: segment by text, encode an image once and decode clicks and
boxes on its cached embedding, detect on an encoded image, edit. No HTTP here (the app and Ray Serve wrap it).

Every model call goes through its :class:`~grounded.serve.gate.ModelGate` (one call at a time per model, a
bounded queue). Per-request thresholds are set on the adapter for that one call, inside its gate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounded.core.detections import Detections, fits_dense
from grounded.core.images import ImageLoadError, LoadedImage, load_image_bytes
from grounded.core.levels import order_levels
from grounded.core.prompts import Prompt
from grounded.core.rle import decode_rle, encode_masks
from grounded.engine.adapter import temporary_params
from grounded.serve.config import DETECTOR_PARAMS, SEGMENTER_PARAMS, ServeConfig
from grounded.serve.gate import ModelGate
from grounded.serve.sessions import Session, SessionStore, embedding_bytes

__all__ = ["EDIT_MODES", "ServeError", "Service", "detections_from_records", "result_document"]

_log = logging.getLogger(__name__)

EDIT_MODES = ("replace", "remove", "restyle")


class ServeError(Exception):
    """A request the server refuses: ``status`` (400, 404, 413, ...) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> ServeError:
    return ServeError(400, message)


def _params_set(adapter: Any, params: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
    """``adapter`` with one request's ``params``, a bad value a 400; call it inside the adapter's gate."""
    return temporary_params(adapter, params, _bad)


def detections_from_records(records: Sequence[Mapping[str, Any]], image_size: tuple[int, int]) -> Detections:
    """The records of a result document (``bbox`` xywh, ``category``, ``score``, optional ``segmentation``
    RLE), as edited on the page, back into :class:`Detections`; raises :class:`ServeError` 400."""
    try:
        classes = tuple(dict.fromkeys(str(r["category"]) for r in records))
        boxes = [[float(v) for v in r["bbox"]] for r in records]
        if any(len(b) != 4 or not all(np.isfinite(b)) for b in boxes):
            raise ValueError("bbox must be 4 finite numbers")
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(
            -1, 4
        )
        det = Detections(
            boxes=xyxy,
            scores=torch.tensor([float(r.get("score", 1.0)) for r in records], dtype=torch.float32),
            class_ids=torch.tensor([classes.index(str(r["category"])) for r in records], dtype=torch.int64),
            classes=classes,
            phrases=tuple(str(r.get("phrase", r["category"])) for r in records),
            image_size=image_size,
        )
        if records and all("segmentation" in r for r in records):
            masks = [decode_rle(dict(r["segmentation"])) for r in records]
            if any(m.shape != image_size for m in masks):
                raise ValueError(f"a segmentation is not of the image's size {list(image_size)}")
            det = det.with_masks(torch.from_numpy(np.stack(masks)))
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(f"bad detections: {exc}") from None
    return det


class Service:
    """The loaded models and the sessions of one server process."""

    def __init__(self, config: ServeConfig, pipeline: Any = None) -> None:
        from grounded.api import build_pipeline

        self.config = config
        self.pipeline = pipeline or build_pipeline(
            config.pipeline, overrides=config.overrides, shared=config.shared
        )
        nodes = set(self.pipeline.graph.nodes)
        self.detector = self.pipeline.adapter("detector") if "detector" in nodes else None
        self.segmenter = self.pipeline.adapter("segmenter") if "segmenter" in nodes else None
        if self.detector is not None and not hasattr(self.detector, "detect"):
            self.detector = None
        if self.segmenter is not None and not hasattr(self.segmenter, "decode_prompt"):
            self.segmenter = None
        #: the pipeline is exactly detector -> segmenter: /v1/segment runs the two models one after the other
        self.split = (
            nodes == {"detector", "segmenter"} and self.detector is not None and self.segmenter is not None
        )
        size, timeout = config.queue_size, config.wait_timeout_s
        self.gates = {name: ModelGate(name, size, timeout) for name in ("detector", "segmenter", "inpainter")}
        self.sessions = SessionStore(config.cache_bytes)
        self._inpainters: dict[str, Any] = {}

    # ------------------------------------------------------------------ what the server offers
    @property
    def can_edit(self) -> bool:
        return self.config.inpainter is not None and self.detector is not None and self.segmenter is not None

    @property
    def can_interact(self) -> bool:
        return self.segmenter is not None

    def info(self) -> dict[str, Any]:
        """What ``GET /health`` reports: the pipeline, its models, which routes work, the note."""
        models = {
            name: str(self.pipeline.adapter(name).get_params().get("model", ""))
            for name in self.pipeline.graph.nodes
            if "model" in self.pipeline.adapter(name).get_params()
        }
        if self.config.inpainter:
            models["inpainter"] = self.config.inpainter
        return {
            "pipeline": self.pipeline.name,
            "models": models,
            "sessions": self.can_interact,
            "detect": self.can_interact and self.detector is not None,
            "edit": self.can_edit,
            "auth": self.config.token is not None,
            "note": self.config.note,
            "limits": {
                "max_upload_bytes": self.config.max_upload_bytes,
                "max_pixels": self.config.max_pixels,
                "max_prompt_chars": self.config.max_prompt_chars,
                "max_points": self.config.max_points,
            },
        }

    def warm_up(self) -> None:
        """Load every model now (not on the first request)."""
        self.pipeline.warm_up()

    # ------------------------------------------------------------------ inputs
    def load(self, data: bytes, filename: str | None) -> LoadedImage:
        """An uploaded image, with the pixel limit checked from its header; 400 / 413 otherwise."""
        if not data:
            raise _bad("the image is empty")
        name = (filename or "image").replace("\\", "/").rsplit("/", 1)[-1] or "image"
        try:
            loaded = load_image_bytes(data, name, self.config.max_pixels)
        except ImageLoadError as exc:
            status = 413 if "too large" in exc.reason else 400
            raise ServeError(status, f"{name}: {exc.reason}") from None
        # the upload's name, as a result document names its file (nothing is read from or written to it)
        return replace(loaded, path=Path(name))

    def prompt(self, text: str | None) -> Prompt:
        if text is None or not text.strip():
            raise _bad("the prompt is empty: give classes separated by ' . ', e.g. 'dog . red car'")
        if len(text) > self.config.max_prompt_chars:
            raise _bad(f"the prompt is longer than {self.config.max_prompt_chars} characters")
        try:
            return Prompt.of(text)
        except ValueError as exc:
            raise _bad(f"bad prompt: {exc}") from None

    @staticmethod
    def _split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        unknown = set(params) - set(DETECTOR_PARAMS) - set(SEGMENTER_PARAMS)
        if unknown:
            raise _bad(f"unknown parameters: {', '.join(sorted(unknown))}")
        det = {k: v for k, v in params.items() if k in DETECTOR_PARAMS}
        seg = {k: v for k, v in params.items() if k in SEGMENTER_PARAMS}
        return det, seg

    # ------------------------------------------------------------------ segment by text
    def segment(
        self, image: LoadedImage, prompt: Prompt, params: Mapping[str, Any] | None = None
    ) -> Detections:
        """What ``grounded segment`` finds in one image (the same pipeline, defaults and thresholds)."""
        det_params, seg_params = self._split_params(params or {})
        if self.split:
            assert self.detector is not None and self.segmenter is not None
            with self.gates["detector"].hold(), _params_set(self.detector, det_params):
                (det,) = self.detector.detect([image], prompt)
            with self.gates["segmenter"].hold(), _params_set(self.segmenter, seg_params):
                (det,) = self.segmenter.segment([image], [det])
            return det
        with contextlib.ExitStack() as stack:  # another pipeline: run it whole, holding every model
            for gate in self.gates.values():
                stack.enter_context(gate.hold())
            if self.detector is not None:
                stack.enter_context(_params_set(self.detector, det_params))
            if self.segmenter is not None:
                stack.enter_context(_params_set(self.segmenter, seg_params))
            if (det_params and self.detector is None) or (seg_params and self.segmenter is None):
                raise _bad(
                    f"pipeline {self.pipeline.name!r} has no detector / segmenter node for these parameters"
                )
            result = self.pipeline.run(images=[image], prompt=prompt)
        if "detections" not in result:
            raise ServeError(500, f"pipeline {self.pipeline.name!r} gives no detections")
        return result["detections"][0]

    # ------------------------------------------------------------------ sessions
    def open_session(self, image: LoadedImage) -> tuple[Session, bool]:
        """Encode the image once (its id is its content hash); ``(session, created)``."""
        if self.segmenter is None:
            raise ServeError(501, f"pipeline {self.pipeline.name!r} has no SAM-family segmenter for sessions")
        found = self.sessions.get(image.key)
        if found is not None:
            return found, False
        with self.gates["segmenter"].hold():
            (embedding,) = self.segmenter.encode([image])
        session = Session(image.key, image, embedding, embedding_bytes(embedding))
        self.sessions.put(session)
        return session, True

    def session(self, image_id: str) -> Session:
        found = self.sessions.get(image_id)
        if found is None:
            raise ServeError(
                404, f"unknown image id {image_id!r} (never sent, or evicted: POST it to /v1/images again)"
            )
        return found

    def _check_xy(self, session: Session, xy: Sequence[float], what: str) -> None:
        height, width = session.image.size
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in xy):
            raise _bad(f"{what} must be finite numbers")
        for x, y in zip(xy[::2], xy[1::2], strict=True):
            if not (0 <= x <= width and 0 <= y <= height):
                raise _bad(f"{what} {x:g},{y:g} lies outside the {width}x{height} image")

    def masks(
        self,
        session: Session,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        mask_input: str | None = None,
        multimask: bool = True,
    ) -> dict[str, Any]:
        """Every mask level for clicks (``labels`` 1 positive / 0 negative), a box and / or an earlier answer's
        logits (``mask_input``: a ``logits_id`` of an earlier answer), decoded on the cached embedding."""
        assert self.segmenter is not None
        if not points and box is None and mask_input is None:
            raise _bad("give points, a box and/or mask_input")
        if len(points) > self.config.max_points:
            raise _bad(f"at most {self.config.max_points} points")
        labels = [1] * len(points) if labels is None else list(labels)
        if len(labels) != len(points) or any(v not in (0, 1) for v in labels):
            raise _bad("labels: one per point, 1 (positive) or 0 (negative)")
        for p in points:
            if len(p) != 2:
                raise _bad("a point is [x, y]")
            self._check_xy(session, p, "point")
        if box is not None:
            if len(box) != 4:
                raise _bad("box is [x0, y0, x1, y1]")
            self._check_xy(session, box, "box corner")
            if not (box[0] < box[2] and box[1] < box[3]):
                raise _bad("box needs x0 < x1 and y0 < y1")
        logits = None
        if mask_input is not None:
            logits = session.logits.get(mask_input)
            if logits is None:
                raise ServeError(404, f"unknown mask_input {mask_input!r}")
        with self.gates["segmenter"].hold():
            masks, iou, low_res = self.segmenter.decode_prompt(
                session.embedding,
                points=torch.tensor(points, dtype=torch.float32).reshape(-1, 2) if points else None,
                labels=torch.tensor(labels, dtype=torch.long) if points else None,
                box=None if box is None else torch.tensor(box, dtype=torch.float32),
                mask_input=logits,
                multimask=multimask,
            )
        levels = order_levels(masks, iou.to(masks.device))
        source = [next(i for i in range(len(masks)) if torch.equal(masks[i], m)) for m in levels.masks]
        rles = encode_masks(levels.masks)
        out = []
        for k, (i, rle) in enumerate(zip(source, rles, strict=True)):
            ys, xs = torch.nonzero(levels.masks[k], as_tuple=True)
            bbox = [
                int(xs.min()),
                int(ys.min()),
                int(xs.max()) + 1 - int(xs.min()),
                int(ys.max()) + 1 - int(ys.min()),
            ]
            out.append(
                {
                    "level": levels.levels[k],
                    "score": round(float(levels.scores[k]), 6),
                    "area": levels.areas[k],
                    "bbox": bbox,
                    "segmentation": rle,
                    "logits_id": session.keep_logits(low_res[i]),
                }
            )
        scores = [round(float(s), 6) for s in levels.scores]
        best = scores.index(max(scores)) if scores else None
        return {
            "image_id": session.id,
            "levels": out,
            "best": best,
            "containment": [round(c, 6) for c in levels.containment],
            "nesting_violations": list(levels.violations),
        }

    def detect(self, session: Session, prompt: Prompt, params: Mapping[str, Any] | None = None) -> Detections:
        """The prompt's detections on an encoded image, their masks decoded on its cached embedding (the
        detector runs; the image encoder does not)."""
        if self.detector is None or self.segmenter is None:
            raise ServeError(501, f"pipeline {self.pipeline.name!r} has no detector and SAM-family segmenter")
        det_params, seg_params = self._split_params(params or {})
        image = session.image
        with self.gates["detector"].hold(), _params_set(self.detector, det_params):
            (det,) = self.detector.detect([image], prompt)
        with self.gates["segmenter"].hold(), _params_set(self.segmenter, seg_params):
            if not len(det):
                height, width = det.image_size
                return det.with_masks(torch.zeros((0, height, width), dtype=torch.bool), torch.zeros((0,)))
            if not fits_dense(len(det), det.image_size):
                (det,) = self.segmenter.segment([image], [det])
                return det
            masks, scores = self.segmenter.decode(session.embedding, det.boxes)
        return det.with_masks(masks.to(det.device), scores.to(det.device))

    # ------------------------------------------------------------------ edit
    def _inpainter(self, mode: str) -> Any:
        from grounded.adapters.inpaint import StableDiffusionInpaint

        if mode not in self._inpainters:  # one adapter per mode; they share the loaded weights
            shared = {k: v for k, v in self.config.shared.items() if k in ("device", "precision")}
            params = {**shared, **self.config.inpainter_params, "model": self.config.inpainter, "mode": mode}
            self._inpainters[mode] = StableDiffusionInpaint(**params)
        return self._inpainters[mode]

    def edit(self, image: LoadedImage, selection: Detections, mode: str, text: str | None) -> LoadedImage:
        """Inpaint the union of ``selection``'s masks (filled, dilated, feathered as ``grounded edit`` does)."""
        from grounded.adapters.mask_ops import MaskOps

        if not self.can_edit:
            raise ServeError(501, "no inpainter configured: start the server with --inpainter")
        if mode not in EDIT_MODES:
            raise _bad(f"mode must be one of {', '.join(EDIT_MODES)}")
        if mode != "remove" and not (text and text.strip()):
            raise _bad(f"mode {mode} needs a text")
        if text is not None and len(text) > self.config.max_prompt_chars:
            raise _bad(f"the text is longer than {self.config.max_prompt_chars} characters")
        mask = MaskOps().masks_for(selection)
        if mask.empty:
            return image
        with self.gates["inpainter"].hold():
            edited, _ = self._inpainter(mode).edit(image, mask, text or "")
        return edited


def result_document(
    service: Service,
    image: LoadedImage,
    det: Detections,
    prompt: Prompt,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document ``grounded segment`` writes for one image (``NAME.json``), with the settings that made
    it (this request's thresholds included) under ``grounded``."""
    from grounded.tasks.export import image_json
    from grounded.tasks.outputs import MARKER, normalized
    from grounded.tasks.segment_files import run_settings

    settings = run_settings(service.pipeline, prompt, "files")
    det_params, seg_params = Service._split_params(params or {})
    nodes = settings["pipeline"]["nodes"]
    for node, changed in (("detector", det_params), ("segmenter", seg_params)):
        if changed and node in nodes:
            nodes[node]["params"].update(changed)
    doc = image_json(image, det)
    doc[MARKER] = normalized(settings)
    return doc
