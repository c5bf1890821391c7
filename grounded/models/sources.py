"""Where model weights come from: a local folder, the Hugging Face cache, the hub, or an official checkpoint
file (converted once to a cached folder) — with clear errors."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from grounded.models.hub import ModelSourceError, call_loader, loader_error, resolve_pretrained

__all__ = [
    "ALLOW_MISSING_WEIGHTS_ENV",
    "ModelSourceError",
    "check_loading_info",
    "load_config_checked",
    "load_from_source",
    "load_model_and_processor",
    "load_weights",
    "resolve_source",
]

T = TypeVar("T")
_log = logging.getLogger(__name__)

#: set to 1 to load a model whose checkpoint lacks weights (they are newly initialised) or has extra ones
ALLOW_MISSING_WEIGHTS_ENV = "GROUNDED_ALLOW_MISSING_WEIGHTS"


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


def check_loading_info(info: Mapping[str, Any], what: str, name: str) -> None:
    """Refuse (one line: how many, a few names) a model whose checkpoint lacks weights, has extra ones or ones
    of the wrong shape, unless ``$GROUNDED_ALLOW_MISSING_WEIGHTS`` is 1 (then it is logged as a warning)."""
    kinds = (
        ("missing_keys", "missing"),
        ("unexpected_keys", "unexpected"),
        ("mismatched_keys", "of another shape"),
    )
    found = []
    for key, label in kinds:
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            found.append(f"{len(names)} weight(s) {label} ({shown})")
    if not found:
        return
    summary = "; ".join(found)
    if os.environ.get(ALLOW_MISSING_WEIGHTS_ENV, "").strip().lower() in ("1", "true", "yes"):
        _log.warning(
            "%s %r: %s; loaded anyway (%s), missing weights are random",
            what,
            name,
            summary,
            ALLOW_MISSING_WEIGHTS_ENV,
        )
        return
    raise ModelSourceError(
        f"{what} {name!r} does not match its checkpoint: {summary}; missing weights would be random "
        f"(set {ALLOW_MISSING_WEIGHTS_ENV}=1 to load it anyway)"
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings off while loading (its load report is replaced by :func:`check_loading_info`)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_weights(loader: Callable[..., Any], source: str | Path, what: str) -> Any:
    """A model from ``loader`` (a transformers ``from_pretrained``) with every weight from its checkpoint.

    Errors are one :class:`ModelSourceError` line: missing or unexpected weights
    (:func:`check_loading_info`), a corrupt or truncated weights file, a pickled one holding more than tensors.
    """
    name, local_only = resolve_source(source, what)
    with _quiet_transformers():
        try:
            loaded = call_loader(functools.partial(loader, output_loading_info=True), name, local_only, what)
        except RuntimeError as exc:  # torch: a truncated or corrupt pytorch_model.bin
            raise loader_error(exc, what, name) from exc
    model, info = loaded
    check_loading_info(info, what, name)
    return model


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
    model = load_weights(model_loader, source, what)
    return processor, model.eval()
