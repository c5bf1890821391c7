"""Where model weights come from: a local folder, the Hugging Face cache, the hub, or an official checkpoint
file (converted once to a cached folder) — with clear errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from grounded.models.hub import ModelSourceError, call_loader, resolve_pretrained

__all__ = [
    "ModelSourceError",
    "load_config_checked",
    "load_from_source",
    "load_model_and_processor",
    "resolve_source",
]

T = TypeVar("T")


def resolve_source(source: str | Path, what: str) -> tuple[str, bool]:
    """Decide how to load ``source``: returns ``(name_or_path, local_files_only)``.

    An official checkpoint file (``.pth``) is converted to a cached transformers-format folder on first use.
    Raises :class:`ModelSourceError` when the source is a missing folder or file, an unrecognised
    checkpoint, or a hub id that is neither cached nor downloadable now.
    """
    path = Path(str(source)).expanduser()
    if path.is_file():  # an official checkpoint file: converted once, then loaded from the cached folder
        from grounded.models.checkpoints import CheckpointError, converted_folder

        try:
            return str(converted_folder(path)), True
        except CheckpointError as exc:
            raise ModelSourceError(f"{what} {str(source)!r}: {exc}") from None
    return resolve_pretrained(source, what)


def load_from_source(loader: Callable[..., T], source: str | Path, what: str) -> T:
    """Call ``loader(name_or_path, local_files_only=...)`` with errors turned into :class:`ModelSourceError`."""
    return call_loader(loader, *resolve_source(source, what), what)


def load_config_checked(source: str | Path, what: str, model_types: tuple[str, ...], adapter: str) -> Any:
    """The model's config, refusing a model of another family with one clear line."""
    from transformers import AutoConfig

    config = load_from_source(AutoConfig.from_pretrained, source, what)
    if config.model_type not in model_types:
        raise ModelSourceError(
            f"{what} {str(source)!r} is a {config.model_type!r} model; the {adapter} adapter takes "
            f"{' or '.join(model_types)}"
        )
    return config


def load_model_and_processor(
    source: str | Path,
    what: str,
    model_types: tuple[str, ...],
    adapter: str,
    model_loader: Callable[..., Any],
    processor_options: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """``(processor, model)`` of a checked model family, both from the same source; the model in eval mode."""
    from transformers import AutoProcessor

    load_config_checked(source, what, model_types, adapter)
    load_processor = functools.partial(AutoProcessor.from_pretrained, **(processor_options or {}))
    processor = load_from_source(load_processor, source, what)
    model = load_from_source(model_loader, source, what)
    return processor, model.eval()
