"""SAM 3 video on ``transformers`` (``Sam3VideoModel``): text-driven detection, tracking and numbering.

A text-driven tracker: the prompt's classes are the session's text prompts (one prompt per class), and each
frame runs SAM 3's own detector, the SAM 2-style tracker over the memory of earlier frames, and SAM 3's
association of detections with tracks (new objects, re-conditioning, occlusion suppression). Frames are
streamed one at a time into one ``Sam3VideoInferenceSession``; track ids are SAM 3's object ids + 1 (0 is the
background in label images), so they are stable and never reused. A track keeps the class of the text prompt
that found it (``obj_id_to_prompt_id``).

The session would keep every frame, every frame's tracker outputs and frame-keyed bookkeeping (some of it
deep-copied on every frame); here it is pruned after each frame to what the model still reads: the current
frame's pixels, the last ``num_maskmem`` / ``max_object_pointers_in_encoder`` frames' outputs and the
``max_cond_frames`` latest conditioning frames of each object. Streaming SAM 3 never removes an object, so an
object whose mask stays empty for ``forget_after`` frames is dropped (its id is not reused). Memory then stays
flat on long videos.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from grounded.adapters.common import ModelAdapter
from grounded.adapters.sam2_video import prune_session
from grounded.adapters.video import Masks, ObjectPrompt, VideoTracker
from grounded.core.checks import at_least, optional_in_unit_interval
from grounded.core.detections import Detections
from grounded.core.errors import UserError
from grounded.core.images import LoadedImage
from grounded.core.maskops import bounding_box
from grounded.core.prompts import Prompt, PromptError
from grounded.engine import register_adapter
from grounded.runtime.device import autocast

__all__ = ["SAM3Video", "frame_detections"]


@functools.cache
def _session_class() -> type:
    """``Sam3VideoInferenceSession`` whose ``num_frames`` counts the frames streamed, not the frames kept.

    The tracker reads ``num_frames`` to bound the object pointers it gathers from earlier frames; with the
    frames pruned to the current one it would see a one-frame video.
    """
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    class StreamingSession(Sam3VideoInferenceSession):
        frames_seen = 0

        @property
        def num_frames(self) -> int:
            return self.frames_seen

        def add_new_frame(self, pixel_values: torch.Tensor, frame_idx: int | None = None) -> int:
            index = int(super().add_new_frame(pixel_values, frame_idx))
            self.frames_seen = max(self.frames_seen, index + 1)
            return index

    return StreamingSession


def frame_detections(
    found: Mapping[str, Any],
    prompt_of_object: Mapping[int, int],
    class_of_prompt: Mapping[int, int],
    prompt: Prompt,
    size: tuple[int, int],
) -> Detections:
    """One frame's :class:`Detections` from ``Sam3VideoProcessor.postprocess_outputs``: SAM 3 object id
    ``k`` is track id ``k + 1``; its class is that of the text prompt that found it. Objects whose mask is
    empty (after the processor's non-overlap constraint) are left out."""
    masks = torch.as_tensor(found["masks"]).bool().cpu().reshape(-1, *size)
    obj_ids = [int(k) for k in torch.as_tensor(found["object_ids"]).tolist()]
    scores = torch.as_tensor(found["scores"], dtype=torch.float32).cpu().reshape(-1)
    keep = [i for i in range(len(obj_ids)) if bool(masks[i].any())]
    class_ids = [class_of_prompt[prompt_of_object[obj_ids[i]]] for i in keep]
    boxes = []
    for i in keep:
        y0, y1, x0, x1 = bounding_box(masks[i].numpy()) or (0, 0, 0, 0)
        boxes.append([float(x0), float(y0), float(x1), float(y1)])
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=scores[keep] if keep else torch.zeros((0,)),
        class_ids=torch.tensor(class_ids, dtype=torch.int64),
        classes=prompt.classes,
        phrases=tuple(prompt.classes[c] for c in class_ids),
        image_size=size,
        masks=masks[keep] if keep else torch.zeros((0, *size), dtype=torch.bool),
        track_ids=torch.tensor([obj_ids[i] + 1 for i in keep], dtype=torch.int64),
    )


def _ids(det: Detections) -> list[int]:
    """The track ids of detections made by :func:`frame_detections` (always set)."""
    assert det.track_ids is not None
    return [int(t) for t in det.track_ids.tolist()]


@register_adapter("sam3_video")
class SAM3Video(ModelAdapter, VideoTracker):
    """Text-driven video tracking with SAM 3 (see the module docstring).

    Args:
        model: hub id or local folder of a SAM 3 video model (``Sam3VideoModel`` weights and processor;
            ``facebook/sam3`` holds detector and tracker).
        score_threshold: keep detections above this score (the checkpoint's ``score_threshold_detection``
            when not given).
        new_object_threshold: a detection matching no track starts one above this score (the checkpoint's
            ``new_det_thresh`` when not given).
        max_cond_frames: conditioning frames (where an object was found or re-conditioned) kept per object.
        forget_after: an object whose mask stays empty this many frames in a row is dropped.
        device, precision: as for the other adapters.
    """

    model_types: ClassVar[tuple[str, ...]] = ("sam3_video",)
    model_class: ClassVar[str] = "Sam3VideoModel"
    what: ClassVar[str] = "SAM 3 video model"
    text_driven: ClassVar[bool] = True

    def __init__(
        self,
        model: str = "facebook/sam3",
        score_threshold: float | None = None,
        new_object_threshold: float | None = None,
        max_cond_frames: int = 4,
        forget_after: int = 300,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        optional_in_unit_interval(score_threshold=score_threshold, new_object_threshold=new_object_threshold)
        at_least(1, max_cond_frames=max_cond_frames, forget_after=forget_after)
        super().__init__()
        self._session: Any = None
        self._prompt: Prompt | None = None
        self._size: tuple[int, int] = (0, 0)
        self._class_of_prompt: dict[int, int] = {}
        self._hidden: dict[int, int] = {}  # object id -> frames in a row with an empty mask

    def prepare(self) -> None:
        if self.score_threshold is not None:
            self._model.score_threshold_detection = float(self.score_threshold)
        if self.new_object_threshold is not None:
            self._model.new_det_thresh = float(self.new_object_threshold)

    # ------------------------------------------------------------------ session
    def start(self, size: tuple[int, int], prompt: Prompt) -> None:
        self.warm_up()
        prompt = Prompt.of(prompt)
        limit = int(self._model.config.detector_config.text_config.max_position_embeddings)
        for name in prompt.classes:
            n = len(self._processor.tokenizer(name)["input_ids"])
            if n > limit:
                raise PromptError(f"class {name!r} is {n} tokens; SAM 3 reads at most {limit} per class")
        self._size = (int(size[0]), int(size[1]))
        self._prompt = prompt
        self._session = _session_class()(
            video_height=self._size[0],
            video_width=self._size[1],
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device="cpu",  # frames wait on the host; only the current one is kept
            dtype=torch.float32,
        )
        self._processor.add_text_prompt(self._session, list(prompt.classes))
        self._class_of_prompt = {
            pid: prompt.classes.index(text) for pid, text in self._session.prompts.items()
        }
        self._hidden = {}

    @torch.inference_mode()
    def detect(self, index: int, image: LoadedImage) -> Detections:
        """The frame's objects: SAM 3 detects, tracks and associates; ids and classes as in the docstring."""
        if self._session is None or self._prompt is None:
            raise RuntimeError("SAM3Video.detect before start()")
        pixels = self._processor(images=image.pixels, return_tensors="pt")["pixel_values"][0]
        with autocast(self.device, self.precision):
            output = self._model(inference_session=self._session, frame=pixels, frame_idx=index)
        output.obj_id_to_mask = {k: v.float() for k, v in output.obj_id_to_mask.items()}
        found = self._processor.postprocess_outputs(self._session, output)
        det = frame_detections(
            found, self._session.obj_id_to_prompt_id, self._class_of_prompt, self._prompt, self._size
        )
        self._forget(index, {tid - 1 for tid in _ids(det)})
        self._prune(index)
        return det

    def step(self, index: int, image: LoadedImage) -> Masks:
        """The frame's masks by track id (``detect`` without classes and scores)."""
        det = self.detect(index, image)
        return {tid: det.mask_array(i) for i, tid in enumerate(_ids(det))}

    def add(self, index: int, objects: Mapping[int, ObjectPrompt]) -> Masks:
        raise UserError(
            "sam3_video finds the objects from the text prompt itself; it takes no box or mask prompts "
            "(use a detector pipeline with sam2_video, e.g. track_grounded_sam2)"
        )

    def drop(self, ids: Iterable[int]) -> None:
        for tid in ids:
            self._remove(int(tid) - 1)

    # ------------------------------------------------------------------ bounded state
    def _remove(self, obj_id: int) -> None:
        """Drop one object from the session and its bookkeeping (SAM 3 never reuses its id)."""
        session = self._session
        if obj_id not in session.obj_ids:
            return
        session.remove_object(obj_id)
        for table in (
            session.obj_id_to_score,
            session.trk_keep_alive,
            session.obj_first_frame_idx,
            session.unmatched_frame_inds,
            session.obj_id_to_last_occluded,
            session.obj_id_to_prompt_id,
        ):
            table.pop(obj_id, None)
        for scores in session.obj_id_to_tracker_score_frame_wise.values():
            scores.pop(obj_id, None)
        for pair in [p for p in session.overlap_pair_to_frame_inds if obj_id in p]:
            del session.overlap_pair_to_frame_inds[pair]
        self._hidden.pop(obj_id, None)

    def _forget(self, index: int, visible: set[int]) -> None:
        """Count the frames each object has been invisible; drop those hidden ``forget_after`` frames."""
        for obj_id in list(self._session.obj_ids):
            self._hidden[obj_id] = 0 if obj_id in visible else self._hidden.get(obj_id, 0) + 1
            if self._hidden[obj_id] >= self.forget_after:
                self._remove(obj_id)

    def _prune(self, index: int) -> None:
        """Forget what the model will not read again (see the module docstring)."""
        session = self._session
        tracker = self._model.config.tracker_config
        window = max(int(tracker.num_maskmem), int(tracker.max_object_pointers_in_encoder)) + 1
        prune_session(session, index, window, self.max_cond_frames)
        # frame-keyed bookkeeping: only the current frame's entry is read (and the whole is deep-copied)
        current = session.obj_id_to_tracker_score_frame_wise.get(index, {})
        session.obj_id_to_tracker_score_frame_wise = defaultdict(dict, {index: current})
        suppressed = session.suppressed_obj_ids.get(index, set())
        session.suppressed_obj_ids = defaultdict(set, {index: suppressed})
        # per-object frame lists: only their length up to the hotstart thresholds is read
        model = self._model
        for frames in session.unmatched_frame_inds.values():
            del frames[: -max(1, int(model.hotstart_unmatch_thresh))]
        for frames in session.overlap_pair_to_frame_inds.values():
            del frames[: -max(1, int(model.hotstart_dup_thresh))]

    def state_size(self) -> int:
        """Frame-keyed entries held now: frames, per-object outputs and inputs, per-frame bookkeeping."""
        session = self._session
        if session is None:
            return 0
        total = len(session.processed_frames or {}) + len(session.cache._vision_features)
        for idx in range(session.get_obj_num()):
            outputs = session.output_dict_per_obj[idx]
            total += len(outputs["non_cond_frame_outputs"]) + len(outputs["cond_frame_outputs"])
            total += len(session.frames_tracked_per_obj[idx])
            total += len(session.mask_inputs_per_obj.get(idx, {})) + len(
                session.point_inputs_per_obj.get(idx, {})
            )
        total += len(session.obj_id_to_tracker_score_frame_wise) + len(session.suppressed_obj_ids)
        total += sum(len(v) for v in session.unmatched_frame_inds.values())
        total += sum(len(v) for v in session.overlap_pair_to_frame_inds.values())
        return total

    def backfill(
        self, frames: Sequence[tuple[int, LoadedImage]], index: int, objects: Mapping[int, np.ndarray]
    ) -> dict[int, Masks]:
        """SAM 3 video tracks forward only."""
        return {}
