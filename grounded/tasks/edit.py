"""Edit by words: select objects by text, then remove, replace or restyle the selection with Stable Diffusion,
writing the edited image (and optionally a side-by-side comparison and the mask used)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from grounded.core.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from grounded.core.maskops import EditMask

__all__ = [
    "FORMATS",
    "EditError",
    "EditResult",
    "check_outputs",
    "edit_image",
    "encode_image",
    "mask_image",
    "side_by_side",
]

#: file suffix -> PIL format of the images an edit writes
FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}


class EditError(UserError):
    """A usage error of an edit (outputs, mode text, pipeline), reported as one line with exit code 2."""


class EditResult(NamedTuple):
    """What :func:`edit_image` did."""

    mask: EditMask  #: the edit mask; ``mask.empty`` when nothing was selected (the input written unchanged)
    window: str  #: the inpainted context window, described (empty when the pipeline reports none)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_outputs(image: Path, outputs: Sequence[Path]) -> None:
    """The output files must have an image suffix, differ from each other and not overwrite ``image``."""
    for path in outputs:
        if path.suffix.lower() not in FORMATS:
            raise EditError(f"cannot write {path}: use one of {', '.join(sorted(set(FORMATS)))}")
        if _same_file(path, image):
            raise EditError(f"output {path} would overwrite the input image; choose another path")
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise EditError("--out, --compare and --mask-out must be different files")


# ---------------------------------------------------------------------- writing
def encode_image(array: np.ndarray, path: Path) -> bytes:
    """The bytes of ``array`` (uint8 RGB or gray) in the format of ``path``'s suffix (PNG, JPEG 95, WebP lossless,
    TIFF, BMP)."""
    import numpy as np
    from PIL import Image

    from grounded.core.files import encode_png

    fmt = FORMATS[path.suffix.lower()]
    if fmt == "PNG":
        return encode_png(array)
    options: dict[str, Any] = (
        {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _write(path: Path, array: np.ndarray) -> None:
    from grounded.core.files import atomic_write_bytes

    atomic_write_bytes(path, encode_image(array, path))


def _write_unchanged(source: Path, pixels: np.ndarray, out: Path) -> None:
    """The input as ``out``: its bytes when the format is the same, else its decoded pixels re-encoded."""
    from grounded.core.files import atomic_write_bytes

    if FORMATS.get(source.suffix.lower()) == FORMATS[out.suffix.lower()]:
        atomic_write_bytes(out, source.read_bytes())
    else:
        atomic_write_bytes(out, encode_image(pixels, out))


def side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``before | after`` as one uint8 RGB image."""
    import numpy as np

    return np.ascontiguousarray(np.concatenate([before, after], axis=1))


def mask_image(alpha: np.ndarray) -> np.ndarray:
    """The blend weights as 8-bit gray: 255 repainted, 0 untouched (any pixel changed is > 0)."""
    import numpy as np

    return np.where(alpha > 0, np.maximum(1, np.rint(alpha * 255.0)), 0).astype(np.uint8)


# ---------------------------------------------------------------------- the edit
def edit_image(
    image: Path,
    select: str,
    out: Path,
    *,
    mode: str = "replace",
    text: str | None = None,
    compare: Path | None = None,
    mask_out: Path | None = None,
    pipeline: str | Path = "grounded_sam_edit",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> EditResult:
    """Select ``select`` (classes separated by ``" . "``) in ``image`` and edit it in ``mode`` with ``text``
    (``None`` for ``remove``), writing ``out`` (and ``compare``, ``mask_out``).

    ``overrides`` (node -> params) and ``shared`` (``device``, ``precision``) configure the pipeline; the
    inpainter's ``mode`` is set from ``mode``. When nothing is selected, ``out`` is the input unchanged (the
    file copied byte for byte when the format is the same). Raises
    :class:`~grounded.core.images.ImageLoadError` when the image cannot be read.

    Before any model is loaded, the outputs' folders are prepared (created, probed, cleaned:
    :class:`~grounded.core.files.OutputFolder`) and an existing output file is refused unless ``overwrite``.
    """
    from grounded.core.files import OutputFolder
    from grounded.core.prompts import Prompt
    from grounded.tasks.outputs import check_results

    if text is not None and not text.strip():
        raise EditError(f"--{mode} needs a non-empty text")
    prompt = Prompt.of(select)
    outputs = [p for p in (out, compare, mask_out) if p is not None]
    check_outputs(image, outputs)
    with contextlib.ExitStack() as folders:
        for folder in dict.fromkeys(p.parent for p in outputs):
            folders.enter_context(OutputFolder(folder, "output folder"))
        check_results(outputs, None, overwrite=overwrite)
        return _edit(image, prompt, out, mode, text, compare, mask_out, pipeline, overrides, shared)


def _edit(
    image: Path,
    prompt: Any,
    out: Path,
    mode: str,
    text: str | None,
    compare: Path | None,
    mask_out: Path | None,
    pipeline: str | Path,
    overrides: Mapping[str, Mapping[str, Any]] | None,
    shared: Mapping[str, Any] | None,
) -> EditResult:
    from grounded.adapters.inpaint import resolve_pipeline_source
    from grounded.core.images import load_image
    from grounded.tasks.segment import build_pipeline

    nodes: dict[str, dict[str, Any]] = {"inpainter": {"mode": mode}}
    for node, params in (overrides or {}).items():
        nodes.setdefault(node, {}).update(params)
    built = build_pipeline(pipeline, overrides=nodes, shared=shared)
    missing = {"images", "masks"} - set(built.outputs)
    if missing or "images" not in built.inputs or "prompt" not in built.inputs:
        raise EditError(
            f"pipeline {built.name!r} must take inputs images, prompt (and edit) and give outputs images, masks"
        )
    if "inpainter" in built.graph:  # a missing inpainter model is an error, even when nothing gets selected
        resolve_pipeline_source(built.adapter("inpainter").get_params()["model"])
    loaded = load_image(image)
    inputs: dict[str, Any] = {"images": [loaded], "prompt": prompt}
    if text is not None:
        if "edit" not in built.inputs:
            raise EditError(f"pipeline {built.name!r} has no 'edit' input for the text to paint")
        inputs["edit"] = text
    result = built.run(**inputs)
    mask = result["masks"][0]
    edited = result["images"][0]
    if mask.empty:
        _write_unchanged(image, loaded.pixels, out)
        return EditResult(mask, "")
    _write(out, edited.pixels)
    if compare is not None:
        _write(compare, side_by_side(loaded.pixels, edited.pixels))
    if mask_out is not None:
        _write(mask_out, mask_image(mask.alpha))
    windows = result.get("windows")
    window = windows[0].describe(loaded.size) if windows and windows[0] is not None else ""
    return EditResult(mask, window)
