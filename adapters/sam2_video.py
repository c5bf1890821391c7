"""SAM 2 / SAM 2.1 video predictor on ``transformers`` (``Sam2VideoModel``): masks carried from frame to frame.

Frames are streamed into one ``Sam2VideoInferenceSession`` (``Sam2VideoProcessor.init_video_session``);
objects are added with a mask or a box on a frame and each later frame is segmented from the memory of
earlier ones. The session would keep every frame and every frame's memory; here it is pruned after each
frame to what the model can still read (the current frame's pixels, the last ``num_maskmem`` /
``max_object_pointers_in_encoder`` frames' outputs and the ``max_cond_frames`` latest conditioning frames
of each object), so memory stays flat on long videos; the full-size mask logits kept for the memory
encoder are dropped once their frame is done (nothing reads them again).

The tracker is resumable: :meth:`SAM2Video.state_dict` is the pruned session (the current frame's pixels,
each object's inputs, outputs and memories, the id maps) as CPU tensors; :meth:`SAM2Video.load_state_dict`
rebuilds a session from it that gives the same masks on the next frames as the original.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from grounded.adapters.common import ModelAdapter
from grounded.adapters.video import Masks, ObjectPrompt, VideoTracker
from grounded.core.checks import at_least, finite
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import register_adapter
from grounded.runtime.device import autocast

__all__ = ["SAM2Video", "official_prompted_frames"]

# the session's per-object dictionaries, keyed by the model-side object index
_PER_OBJECT = ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj", "frames_tracked_per_obj")
# a frame output's full-size mask logits: read by the memory encoder on its own frame only
_DONE_WITH = "high_res_masks"


def _saved(tree: Any) -> Any:
    """``tree`` with its tensors on the CPU (a view is copied out of its larger storage, so only what it
    shows is saved) and without the full-size mask logits."""
    if isinstance(tree, torch.Tensor):
        tensor = tree.detach().to("cpu")
        return tensor.clone() if tensor.untyped_storage().nbytes() > tensor.nbytes else tensor
    if isinstance(tree, dict):
        return {k: _saved(v) for k, v in tree.items() if k != _DONE_WITH}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_saved(v) for v in tree)
    return tree


def _loaded(tree: Any, device: Any) -> Any:
    """``tree`` with its tensors moved to ``device``; dictionaries become plain ``dict`` again."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _loaded(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_loaded(v, device) for v in tree)
    return tree


def official_prompted_frames(model: Any) -> None:
    """Make ``model`` (a ``Sam2VideoModel``) treat prompted frames as the official ``sam2`` 1.1.0 predictor does.

    transformers 5.x differs there in two places (found by ``tests/test_sam2_parity.py``): a mask prompt's object
    pointer comes from the best of the three multimask tokens (``_use_mask_as_output`` leaves
    ``_single_frame_forward``'s ``multimask_output=True``; the official ``_forward_sam_heads`` call uses the
    single-mask token), and a prompted frame's memory is encoded from the full-resolution mask where the
    official ``propagate_in_video_preflight`` encodes it from the low-resolution logits upsampled (bilinear) to
    the input size. Both are patched on this instance only; other calls pass through unchanged.
    """
    import torch.nn.functional as F

    single_frame_forward = model._single_frame_forward
    encode_memories = model._batch_encode_memories

    def _single_frame(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("input_masks") is not None and kwargs.get("pixel_values") is None:
            kwargs.setdefault("multimask_output", False)  # only _use_mask_as_output leaves it unset
        return single_frame_forward(*args, **kwargs)

    def _encode(**kwargs: Any) -> Any:
        session, frame = kwargs["inference_session"], kwargs["frame_idx"]
        masks = list(kwargs["high_res_masks_for_memory"])
        for i, (idx, prompted) in enumerate(
            zip(kwargs["objects_needing_memory_encoding"], kwargs["is_mask_from_pts_per_obj"], strict=True)
        ):
            stored = session.output_dict_per_obj[idx]["cond_frame_outputs"].get(frame)
            if prompted and stored is not None:
                low = stored["pred_masks"].to(masks[i].device, masks[i].dtype)
                masks[i] = F.interpolate(low, size=masks[i].shape[-2:], mode="bilinear", align_corners=False)
        kwargs["high_res_masks_for_memory"] = masks
        return encode_memories(**kwargs)

    model._single_frame_forward = _single_frame
    model._batch_encode_memories = _encode


@register_adapter("sam2_video")
class SAM2Video(ModelAdapter, VideoTracker):
    """Mask propagation with the SAM 2 video predictor (see the module docstring).

    Args:
        model: hub id or local folder of a SAM 2 / 2.1 model (``Sam2VideoModel`` weights and processor).
        mask_threshold: logit threshold for binarising masks.
        max_cond_frames: conditioning frames (where an object was given or corrected) kept per object.
        device, precision: as for the other adapters.
    """

    model_types: ClassVar[tuple[str, ...]] = ("sam2_video", "sam2")
    model_class: ClassVar[str] = "Sam2VideoModel"
    what: ClassVar[str] = "video tracker"
    resumable: ClassVar[bool] = True

    def __init__(
        self,
        model: str = "facebook/sam2.1-hiera-tiny",
        mask_threshold: float = 0.0,
        max_cond_frames: int = 4,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        at_least(1, max_cond_frames=max_cond_frames)
        finite(mask_threshold=mask_threshold)  # a logit, as SAM's
        super().__init__()
        self._session: Any = None
        self._size: tuple[int, int] = (0, 0)
        self._last: Masks = {}  # the masks of the last step(), by object id

    def prepare(self) -> None:
        official_prompted_frames(self._model)

    # ------------------------------------------------------------------ session
    def _new_session(self) -> Any:
        return self._processor.init_video_session(
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device="cpu",  # frames wait on the host; only the current one is kept
            dtype=torch.float32,
        )

    def start(self, size: tuple[int, int], prompt: Prompt) -> None:
        self.warm_up()
        self._size = (int(size[0]), int(size[1]))
        self._session = self._new_session()
        self._session.video_height, self._session.video_width = self._size
        self._last = {}

    def _pixels(self, image: LoadedImage) -> torch.Tensor:
        """The frame as the official loader prepares it (``sam2.utils.misc._load_img_as_tensor``): PIL's
        bicubic resize of the uint8 frame to the square input, then ImageNet normalisation. transformers'
        processor resizes with torchvision's bilinear filter instead (up to 0.22 apart in normalised values)."""
        from PIL import Image

        processor = self._processor.image_processor
        size = (int(processor.size.width), int(processor.size.height))
        resized = np.asarray(Image.fromarray(image.pixels).resize(size, Image.Resampling.BICUBIC)) / 255.0
        pixels = torch.from_numpy(resized).permute(2, 0, 1).float()
        mean = torch.tensor(processor.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(processor.image_std, dtype=torch.float32)[:, None, None]
        return (pixels - mean) / std

    def _masks(self, output: Any) -> Masks:
        if not output.object_ids:
            return {}
        logits = output.pred_masks.float()
        masks = self._processor.post_process_masks(
            [logits], original_sizes=[list(self._size)], mask_threshold=self.mask_threshold, binarize=True
        )[0]
        masks = masks.reshape(len(output.object_ids), *self._size).cpu().numpy()
        return {int(oid): masks[i] for i, oid in enumerate(output.object_ids)}

    @torch.inference_mode()
    def step(self, index: int, image: LoadedImage) -> Masks:
        session = self._session
        pixels = self._pixels(image)
        if session.get_obj_num() == 0:  # nothing to follow yet: keep the frame for add()
            session.add_new_frame(pixels, frame_idx=index)
            self._prune(index)
            self._last = {}
            return {}
        with autocast(self.device, self.precision):
            output = self._model(inference_session=session, frame=pixels, frame_idx=index)
        self._prune(index)
        self._last = self._masks(output)
        return self._last

    @torch.inference_mode()
    def add(self, index: int, objects: Mapping[int, ObjectPrompt]) -> Masks:
        session = self._session
        masks = {k: np.asarray(v, dtype=bool) for k, v in objects.items() if np.asarray(v).ndim == 2}
        boxes = {k: np.asarray(v, dtype=np.float32) for k, v in objects.items() if np.asarray(v).ndim == 1}
        for oid in objects:  # a corrected object becomes a conditioning frame again
            idx = session._obj_id_to_idx.get(int(oid))
            if idx is not None:
                session.frames_tracked_per_obj[idx].pop(index, None)
                session.output_dict_per_obj[idx]["non_cond_frame_outputs"].pop(index, None)
        if masks:
            self._processor.add_inputs_to_inference_session(
                session, frame_idx=index, obj_ids=[int(k) for k in masks], input_masks=list(masks.values())
            )
        if boxes:
            self._processor.add_inputs_to_inference_session(
                session,
                frame_idx=index,
                obj_ids=[int(k) for k in boxes],
                input_boxes=[[b.tolist() for b in boxes.values()]],
                original_size=self._size,
            )
        session.obj_with_new_inputs = [int(k) for k in objects]  # each call above replaced the list
        # the forward pass below also re-runs the other objects on this frame (without streaming's memory
        # settings); keep their outputs from step() instead, so adding an object never changes another
        others = {
            idx: session.output_dict_per_obj[idx]["non_cond_frame_outputs"].get(index)
            for oid, idx in session._obj_id_to_idx.items()
            if oid not in objects and oid in self._last
        }
        with autocast(self.device, self.precision):
            output = self._model(inference_session=session, frame_idx=index)
        for idx, saved in others.items():
            if saved is not None:
                session.output_dict_per_obj[idx]["non_cond_frame_outputs"][index] = saved
        self._prune(index)
        masks_now = self._masks(output)
        masks_now.update({oid: m for oid, m in self._last.items() if oid not in objects and oid in masks_now})
        self._last = masks_now
        return masks_now

    def drop(self, ids: Iterable[int]) -> None:
        session = self._session
        gone = {int(i) for i in ids} & set(session.obj_ids)
        if not gone:
            return
        # the session has no "remove object": rebuild its id <-> index maps over the objects that stay
        keep = [oid for oid in session.obj_ids if oid not in gone]
        old_index = dict(session._obj_id_to_idx)
        for name in _PER_OBJECT:
            table = getattr(session, name)
            setattr(session, name, {new: table[old_index[oid]] for new, oid in enumerate(keep)})
        session._obj_id_to_idx = OrderedDict((oid, i) for i, oid in enumerate(keep))
        session._obj_idx_to_id = OrderedDict((i, oid) for i, oid in enumerate(keep))
        session.obj_ids = list(keep)
        session.obj_with_new_inputs = [o for o in session.obj_with_new_inputs if o not in gone]
        self._last = {k: v for k, v in self._last.items() if k not in gone}

    def _prune(self, index: int) -> None:
        """Forget what the model will not read again (see the module docstring)."""
        config = self._model.config
        window = max(int(config.num_maskmem), int(config.max_object_pointers_in_encoder)) + 1
        prune_session(self._session, index, window, self.max_cond_frames, done_with=_DONE_WITH)

    def state_dict(self) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise RuntimeError("SAM2Video.state_dict() before start()")
        return {
            "size": list(self._size),
            "obj_ids": [int(o) for o in session.obj_ids],  # in model-side index order
            "frames": {int(f): _saved(t) for f, t in (session.processed_frames or {}).items()},
            "point_inputs": _saved(session.point_inputs_per_obj),
            "mask_inputs": _saved(session.mask_inputs_per_obj),
            "outputs": _saved(session.output_dict_per_obj),
            "tracked": _saved(session.frames_tracked_per_obj),
            "new_inputs": [int(o) for o in session.obj_with_new_inputs],
            "last": {int(k): torch.from_numpy(np.ascontiguousarray(v)) for k, v in self._last.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.warm_up()
        self._size = (int(state["size"][0]), int(state["size"][1]))
        session = self._new_session()
        session.video_height, session.video_width = self._size
        frames = {int(f): t.to("cpu", dtype=torch.float32) for f, t in state["frames"].items()}
        session.processed_frames = frames or None
        ids = [int(o) for o in state["obj_ids"]]
        session._obj_id_to_idx = OrderedDict((oid, i) for i, oid in enumerate(ids))
        session._obj_idx_to_id = OrderedDict((i, oid) for i, oid in enumerate(ids))
        session.obj_ids = list(ids)
        session.point_inputs_per_obj = _loaded(state["point_inputs"], self.device)
        session.mask_inputs_per_obj = _loaded(state["mask_inputs"], self.device)
        session.output_dict_per_obj = _loaded(state["outputs"], self.device)
        session.frames_tracked_per_obj = _loaded(state["tracked"], self.device)
        session.obj_with_new_inputs = [int(o) for o in state["new_inputs"]]
        if any(len(getattr(session, name)) != len(ids) for name in _PER_OBJECT):
            raise ValueError("SAM2Video.load_state_dict: per-object tables do not match the object ids")
        self._session = session
        self._last = {int(k): v.numpy().astype(bool) for k, v in state["last"].items()}

    def state_size(self) -> int:
        session = self._session
        if session is None:
            return 0
        total = len(session.processed_frames or {})
        for idx in range(session.get_obj_num()):
            outputs = session.output_dict_per_obj[idx]
            total += len(outputs["non_cond_frame_outputs"]) + len(outputs["cond_frame_outputs"])
            total += len(session.frames_tracked_per_obj[idx])
        return total

    @torch.inference_mode()
    def backfill(
        self, frames: Sequence[tuple[int, LoadedImage]], index: int, objects: Mapping[int, np.ndarray]
    ) -> dict[int, Masks]:
        """A reverse pass in a separate session over ``frames`` (earlier than ``index``), from the objects'
        masks on frame ``index``; the main session is not touched."""
        earlier = [(i, im) for i, im in frames if i < index]
        if not earlier or not objects:
            return {}
        main = self._session
        session = self._new_session()
        session.video_height, session.video_width = self._size
        local = {}  # local frame number -> video frame index; the key frame is the last local frame
        for n, (i, image) in enumerate(earlier):
            session.add_new_frame(self._pixels(image), frame_idx=n)
            local[n] = i
        last = len(earlier)
        session.add_new_frame(main.processed_frames[index], frame_idx=last)
        self._processor.add_inputs_to_inference_session(
            session,
            frame_idx=last,
            obj_ids=[int(k) for k in objects],
            input_masks=[np.asarray(m, dtype=bool) for m in objects.values()],
        )
        filled: dict[int, Masks] = {}
        self._session = session  # _masks reads the size only; restore the main session below
        try:
            with autocast(self.device, self.precision):
                for output in self._model.propagate_in_video_iterator(
                    session, start_frame_idx=last, reverse=True
                ):
                    if output.frame_idx in local:
                        filled[local[output.frame_idx]] = self._masks(output)
        finally:
            self._session = main
        return filled


def prune_session(
    session: Any, index: int, window: int, max_cond_frames: int, done_with: str | None = None
) -> None:
    """Drop from a transformers SAM 2-style video inference session (SAM 2 video, SAM 3 video's tracker) what
    the model reads no more once frame ``index`` is processed: earlier processed frames, per-object outputs and
    tracked-frame marks older than ``window`` frames, all but the last ``max_cond_frames`` conditioning frames,
    earlier point / mask inputs, and (``done_with``) one key of every earlier frame's outputs."""
    for frame in [f for f in session.processed_frames or {} if f < index]:
        del session.processed_frames[frame]
    for idx in range(session.get_obj_num()):
        outputs = session.output_dict_per_obj[idx]
        for frame in [f for f in outputs["non_cond_frame_outputs"] if f < index - window]:
            del outputs["non_cond_frame_outputs"][frame]
        cond = outputs["cond_frame_outputs"]
        for frame in sorted(cond)[:-max_cond_frames]:
            del cond[frame]
        if done_with is not None:
            for table in (cond, outputs["non_cond_frame_outputs"]):
                for frame, out in table.items():
                    if frame < index:
                        out.pop(done_with, None)
        tracked = session.frames_tracked_per_obj[idx]
        for frame in [f for f in tracked if f < index - window]:
            del tracked[frame]
        for table in (session.point_inputs_per_obj.get(idx, {}), session.mask_inputs_per_obj.get(idx, {})):
            for frame in [f for f in table if f < index]:
                del table[frame]
