"""Where model weights come from: a local folder, the Hugging Face cache, or the hub — with clear errors."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

__all__ = [
    "ModelSourceError",
    "load_config_checked",
    "load_from_source",
    "load_model_and_processor",
    "resolve_source",
]

T = TypeVar("T")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class ModelSourceError(Exception):
    """A model could not be found or loaded; the message is one line saying what to do."""


def _looks_like_path(source: str) -> bool:
    """Hub ids read ``name`` or ``org/name``; anything else with path syntax is meant as a folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing behind a proxy: let the download itself decide
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid repo id, for instance
        return False


def resolve_source(source: str | Path, what: str) -> tuple[str, bool]:
    """Decide how to load ``source``: returns ``(name_or_path, local_files_only)``.

    An official checkpoint file (``.pth``) is converted to a cached transformers-format folder on first use.
    Raises :class:`ModelSourceError` when the source is a missing folder or file, an unrecognised
    checkpoint, or a hub id that is neither cached nor downloadable now.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"{what} folder {text!r} has no config.json (expected a transformers-format folder)"
            )
        return str(path), True
    if path.is_file():  # an official checkpoint file: converted once, then loaded from the cached folder
        from grounded.checkpoints import CheckpointError, converted_folder

        try:
            return str(converted_folder(path)), True
        except CheckpointError as exc:
            raise ModelSourceError(f"{what} {text!r}: {exc}") from None
    if text.endswith(_CHECKPOINT_SUFFIXES):
        raise ModelSourceError(f"{what} checkpoint file {text!r} does not exist")
    if _looks_like_path(text):
        raise ModelSourceError(f"{what} folder {text!r} does not exist")
    if _in_cache(text):
        return text, True
    if not _hub_reachable():
        raise ModelSourceError(
            f"{what} {text!r} is not in the local Hugging Face cache and the hub cannot be reached: "
            f"download it on a connected machine (`hf download {text} --local-dir DIR`) and pass DIR instead"
        )
    return text, False


def load_from_source(loader: Callable[..., T], source: str | Path, what: str) -> T:
    """Call ``loader(name_or_path, local_files_only=...)`` with errors turned into :class:`ModelSourceError`."""
    name, local_only = resolve_source(source, what)
    try:
        try:
            return loader(name, local_files_only=local_only)
        except OSError:
            # a partial cache (an interrupted download): complete it from the hub when it can be reached
            if not local_only or Path(name).is_dir() or not _hub_reachable():
                raise
            return loader(name, local_files_only=False)
    except ModelSourceError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"could not load {what} from {name!r}: {reason}") from exc


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
