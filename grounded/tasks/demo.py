"""``grounded demo``: skimage photos as inputs, and the models to run on them (tiny random-weight ones where the
default hub models cannot be had)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grounded.core.errors import UserError

__all__ = ["DEFAULT_MODELS", "DEMO_IMAGES", "default_models_missing", "tiny_models", "write_demo_images"]

#: skimage.data name, file suffix
DEMO_IMAGES = (("astronaut", "png"), ("coffee", "jpg"), ("chelsea", "png"))
#: node -> the hub model the demo uses when it can be had
DEFAULT_MODELS = {"detector": "IDEA-Research/grounding-dino-tiny", "segmenter": "facebook/sam-vit-base"}


def write_demo_images(folder: Path) -> list[Path]:
    """The :data:`DEMO_IMAGES` as files in ``folder`` (written once; kept when there)."""
    try:
        from skimage import data
    except ImportError:
        raise UserError("the demo needs scikit-image: pip install scikit-image") from None
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ext in DEMO_IMAGES:
        path = folder / f"{name}.{ext}"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).save(path)
        paths.append(path)
    return paths


def default_models_missing(random_weights: bool = False) -> str | None:
    """Why the :data:`DEFAULT_MODELS` cannot be used (``None`` when they can): not cached and no network, or
    ``random_weights`` requested."""
    from grounded.models.sources import ModelSourceError, resolve_source

    if random_weights:
        return "random weights requested"
    try:
        for node, model in DEFAULT_MODELS.items():
            resolve_source(model, node)
    except ModelSourceError as exc:
        return str(exc)
    return None


def tiny_models(folder: Path) -> dict[str, dict[str, Any]]:
    """Tiny random-weight Grounding DINO and SAM in ``folder`` (built once), as pipeline overrides."""
    from grounded.models.testing import make_grounding_dino, make_sam

    if not (folder / "grounding-dino" / "config.json").is_file():
        make_grounding_dino(folder / "grounding-dino")
    if not (folder / "sam" / "config.json").is_file():
        make_sam(folder / "sam")
    return {
        "detector": {"model": str(folder / "grounding-dino"), "box_threshold": 0.0, "top_k": 5},
        "segmenter": {"model": str(folder / "sam")},
    }
