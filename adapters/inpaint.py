"""Stable Diffusion inpainting on ``diffusers`` (``AutoPipelineForInpainting``): masks + text → edited images.

The edit is computed in a context window around the mask at the model's working size and pasted back into
the full-resolution image (:mod:`grounded.core.inpaint_windows`): pixels outside the feathered mask stay bit-identical and
the output has the input's size. Three modes:

* ``replace``: paint the prompt into the region (``strength`` 1.0: the region is regenerated from noise);
* ``remove``: paint the background over it (``remove_prompt``, with the removed classes as negative prompt);
* ``restyle``: repaint the region in the prompt's style, keeping its layout (``strength`` 0.75 by default).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import secrets
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from grounded.core.images import LoadedImage
from grounded.core.inpaint_windows import Window, crop_window, paste_back, plan_window, working_mask
from grounded.core.maskops import EditMask
from grounded.engine import Adapter, register_adapter
from grounded.models.hub import ModelSourceError, hub_reachable, looks_like_path
from grounded.runtime.device import PRECISIONS, pick_device

__all__ = ["MODES", "SCHEDULERS", "StableDiffusionInpaint", "resolve_pipeline_source"]

_log = logging.getLogger(__name__)

Mode = Literal["replace", "remove", "restyle"]
MODES: tuple[str, ...] = ("replace", "remove", "restyle")

#: short scheduler names → (diffusers class, extra config); any diffusers ``*Scheduler`` class name works too
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

DEFAULT_NEGATIVE = "blurry, low quality, distorted, deformed, watermark, text"
DEFAULT_REMOVE_PROMPT = "empty background, seamless continuation of the surroundings"
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# loaded diffusers pipelines by (source, dtype, device): nodes naming the same model share its weights
_SHARED: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()


def resolve_pipeline_source(source: str | Path) -> tuple[str, bool]:
    """``(name_or_path, local_files_only)`` for a diffusers pipeline: a local folder with ``model_index.json``,
    or a hub id (from the local cache when it is there); :class:`ModelSourceError` with one line otherwise."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelSourceError(
                f"inpainter folder {text!r} has no model_index.json (expected a diffusers pipeline folder, "
                "as written by save_pretrained)"
            )
        return str(path), True
    if path.is_file() or text.endswith(_SINGLE_FILE_SUFFIXES):
        raise ModelSourceError(
            f"inpainter {text!r} is a single checkpoint file; pass a diffusers pipeline folder or hub id "
            "(convert it with diffusers' from_single_file(...).save_pretrained(DIR))"
        )
    if looks_like_path(text):
        raise ModelSourceError(f"inpainter folder {text!r} does not exist")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(text, "model_index.json"), str)
    except Exception:  # an invalid repo id, for instance
        cached = False
    if cached:
        return text, True
    if not hub_reachable():
        raise ModelSourceError(
            f"inpainter {text!r} is not in the local Hugging Face cache and the hub cannot be reached: "
            f"download it on a connected machine (`hf download {text} --local-dir DIR`) and pass DIR instead"
        )
    return text, False


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No progress bars or accelerate hints while loading (restored afterwards)."""
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    saved = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (d_logging, t_logging)]
    for module in (d_logging, t_logging):
        module.set_verbosity_error()
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, verbosity, bars in saved:
            module.set_verbosity(verbosity)
            if bars:
                module.enable_progress_bar()


def _dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _dtype_keyword() -> str:
    """``dtype`` for diffusers that take it (``torch_dtype`` is deprecated there), ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


@register_adapter("sd_inpaint")
class StableDiffusionInpaint(Adapter):
    """Inpaint each image's edit region with a diffusers inpainting pipeline.

    Args:
        model: hub id or local diffusers pipeline folder: SD 1.5 / 2 inpainting, SDXL inpainting, or any
            checkpoint ``AutoPipelineForInpainting`` accepts.
        mode: ``"replace"``, ``"remove"`` or ``"restyle"``.
        prompt: the text to paint when the ``prompt`` port is not fed (or empty).
        negative_prompt: what to avoid; ``None`` uses a default (in ``remove`` mode it also names the removed
            classes).
        remove_prompt: the prompt of ``remove`` mode.
        steps: denoising steps (scaled by ``strength``, as diffusers does).
        guidance_scale: classifier-free guidance.
        strength: how much of the region is re-noised, in (0, 1]; ``None``: 1.0 for replace/remove (0.99 for
            SDXL, as its inpainting model asks), 0.75 for restyle.
        scheduler: ``None`` (the model's own), one of ``ddim``, ``pndm``, ``euler``, ``euler_a``, ``lms``,
            ``dpm++``, ``dpm++_karras``, ``unipc``, or a diffusers scheduler class name.
        seed: fixed seed (the same seed, image and settings give the same output); ``None`` draws one (logged).
        resolution: working resolution (the window is resized to about ``resolution``² pixels); ``None``: the
            model's native size (512 for SD 1.5/2, 1024 for SDXL).
        padding: pixels of context around the mask inside the window.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        precision: ``"auto"`` (fp16 on a GPU, fp32 on the CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``: the
            weights' dtype.
    """

    outputs: ClassVar[dict[str, Any]] = {"images": list[LoadedImage], "windows": list[Window | None]}

    def __init__(
        self,
        model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting",
        mode: Mode = "replace",
        prompt: str = "",
        negative_prompt: str | None = None,
        remove_prompt: str = DEFAULT_REMOVE_PROMPT,
        steps: int = 30,
        guidance_scale: float = 7.5,
        strength: float | None = None,
        scheduler: str | None = None,
        seed: int | None = 0,
        resolution: int | None = None,
        padding: int = 32,
        device: str = "auto",
        precision: str = "auto",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if strength is not None and not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must lie in (0, 1], got {strength}")
        if strength is not None and int(steps * strength) < 1:
            raise ValueError(
                f"steps * strength must be at least 1 (diffusers runs int(steps * strength) steps), "
                f"got {steps} * {strength}"
            )
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if scheduler is not None and scheduler not in SCHEDULERS and not scheduler.endswith("Scheduler"):
            raise ValueError(
                f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)} or a diffusers "
                "scheduler class name"
            )
        if resolution is not None and (resolution < 64 or resolution % 8):
            raise ValueError(f"resolution must be a multiple of 8 and at least 64, got {resolution}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if seed is not None and not 0 <= seed < 2**63:
            raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
        super().__init__()
        self._pipe: Any = None
        self._base: Any = None  # the shared pipeline whose components ``_pipe`` uses

    # ------------------------------------------------------------------ loading
    def warm_up(self) -> None:
        if self._pipe is not None:
            return
        try:
            from diffusers import AutoPipelineForInpainting
        except ImportError:
            raise ModelSourceError(
                "the inpainter needs diffusers: pip install 'grounded[edit]' (or pip install diffusers)"
            ) from None
        device = pick_device(self._params["device"], "fp32" if self.precision == "auto" else self.precision)
        dtype = _dtype(self.precision, device)
        name, local_only = resolve_pipeline_source(self._params["model"])
        key = (name, str(dtype), str(device))
        base = _SHARED.get(key)
        if base is None:
            try:
                with _quiet_loading():
                    base = AutoPipelineForInpainting.from_pretrained(
                        name, local_files_only=local_only, **{_dtype_keyword(): dtype}
                    )
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelSourceError(f"could not load inpainter from {name!r}: {reason}") from exc
            base = base.to(device)
            _SHARED[key] = base
        pipe = base
        if self.scheduler is not None:  # a pipeline view with its own scheduler, sharing the weights
            pipe = AutoPipelineForInpainting.from_pipe(base, scheduler=self._make_scheduler(base))
        pipe.set_progress_bar_config(disable=True)
        self.device = device
        self._base = base
        self._pipe = pipe

    def _make_scheduler(self, pipe: Any) -> Any:
        import diffusers

        assert self.scheduler is not None
        class_name, extra = SCHEDULERS.get(self.scheduler, (self.scheduler, {}))
        cls = getattr(diffusers, class_name, None)
        if cls is None or not class_name.endswith("Scheduler"):
            raise ValueError(f"diffusers has no scheduler {class_name!r}")
        return cls.from_config(pipe.scheduler.config, **extra)

    @property
    def vae_scale_factor(self) -> int:
        self.warm_up()
        return int(getattr(self._pipe, "vae_scale_factor", 8))

    @property
    def native_resolution(self) -> int:
        """The model's training size: ``unet.config.sample_size`` × the VAE's scale factor."""
        self.warm_up()
        unet = getattr(self._pipe, "unet", None)
        sample = getattr(getattr(unet, "config", None), "sample_size", None)
        if isinstance(sample, (list, tuple)):
            sample = max(sample)
        return int(sample) * self.vae_scale_factor if sample else 512

    @property
    def working_resolution(self) -> int:
        return self.resolution or self.native_resolution

    @property
    def multiple(self) -> int:
        """Working sizes are multiples of this (8 for Stable Diffusion)."""
        return max(8, self.vae_scale_factor)

    def effective_strength(self) -> float:
        if self.strength is not None:
            return self.strength
        if self.mode == "restyle":
            return 0.75
        self.warm_up()
        return 0.99 if "XL" in type(self._pipe).__name__ else 1.0

    # ------------------------------------------------------------------ inference
    def _texts(self, prompt: str, mask: EditMask) -> tuple[str, str]:
        if self.mode == "remove":
            negative = self.negative_prompt
            if negative is None:
                named = ", ".join(dict.fromkeys(mask.labels))
                negative = f"{named}, object, {DEFAULT_NEGATIVE}" if named else DEFAULT_NEGATIVE
            return self.remove_prompt, negative
        negative = DEFAULT_NEGATIVE if self.negative_prompt is None else self.negative_prompt
        return prompt, negative

    def _generator(self) -> torch.Generator:
        seed = self.seed
        if seed is None:
            seed = secrets.randbelow(2**63)
            _log.info("inpainter seed: %d", seed)
        # a CPU generator: a seed draws the same noise whatever the device the model runs on
        return torch.Generator(device="cpu").manual_seed(seed)

    def edit(self, image: LoadedImage, mask: EditMask, prompt: str = "") -> tuple[LoadedImage, Window | None]:
        """Edit one image inside its mask; an empty mask returns the image itself, untouched."""
        if mask.image_size != image.size:
            raise ValueError(f"mask of size {mask.image_size} does not match image {image.name} {image.size}")
        if mask.empty:
            return image, None
        self.warm_up()
        support = mask.support
        window = plan_window(support, self.working_resolution, self.multiple, self.padding)
        assert window is not None
        text, negative = self._texts(prompt or self.prompt, mask)
        strength = self.effective_strength()
        if int(self.steps * strength) < 1:
            raise ValueError(f"steps * strength must be at least 1, got {self.steps} * {strength}")
        kwargs: dict[str, Any] = {
            "prompt": text,
            "negative_prompt": negative,
            "image": crop_window(image.pixels, window),
            "mask_image": working_mask(support, window, cell=self.vae_scale_factor),
            "height": window.height,
            "width": window.width,
            "strength": strength,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "generator": self._generator(),
            "output_type": "np",
        }
        accepted = inspect.signature(self._pipe.__call__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            dropped = sorted(set(kwargs) - set(accepted))
            if dropped:
                _log.warning("%s ignores %s", type(self._pipe).__name__, ", ".join(dropped))
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        result = self._pipe(**kwargs)
        flagged = getattr(result, "nsfw_content_detected", None)
        if flagged and any(flagged):
            _log.warning("the model's safety checker blanked the edit of %s", image.name)
        generated = np.asarray(result.images[0], dtype=np.float32)
        if not np.isfinite(generated).all():
            raise RuntimeError(
                f"the inpainter produced NaN/inf pixels for {image.name} (try --precision fp32 or bf16)"
            )
        generated_u8 = np.clip(np.rint(generated * 255.0), 0, 255).astype(np.uint8)
        pixels = paste_back(image.pixels, generated_u8, window, mask.alpha)
        return replace(image, pixels=pixels, path=None), window

    def run(self, images: list[LoadedImage], masks: list[EditMask], prompt: str = "") -> dict[str, Any]:
        """Port entry: one edited image per input image (unchanged where its mask is empty), and the window
        each edit was computed in (``None`` where nothing was edited)."""
        if len(images) != len(masks):
            raise ValueError(f"got {len(masks)} masks for {len(images)} images")
        edited, windows = [], []
        for image, mask in zip(images, masks, strict=True):
            out, window = self.edit(image, mask, prompt)
            edited.append(out)
            windows.append(window)
        return {"images": edited, "windows": windows}
