"""Weights on the Hugging Face hub or in a local transformers-format folder: where to load them from, and
one clear line when they cannot be had (offline, missing folder, partial cache)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

__all__ = [
    "CACHE_ENV",
    "CHECKPOINT_SUFFIXES",
    "ModelSourceError",
    "cache_folder",
    "call_loader",
    "hub_reachable",
    "in_cache",
    "load_pretrained",
    "loader_error",
    "looks_like_path",
    "resolve_pretrained",
    "writable_folder",
]

T = TypeVar("T")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
#: where grounded keeps what it makes from downloaded files (converted checkpoints); ``~/.cache/grounded`` by default
CACHE_ENV = "GROUNDED_CACHE"


class ModelSourceError(Exception):
    """A model could not be found or loaded; the message is one line saying what to do."""


def cache_folder(*parts: str) -> Path:
    """``$GROUNDED_CACHE/PARTS`` (not created)."""
    return (
        Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "grounded").expanduser().joinpath(*parts)
    )


def writable_folder(folder: Path) -> Path:
    """Create ``folder`` (a cache folder) and check a file can be written there; else one line naming it and
    :data:`CACHE_ENV`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ModelSourceError(
            f"cannot write to the grounded cache {str(folder)!r} ({exc.strerror or type(exc).__name__}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    return folder


def looks_like_path(source: str) -> bool:
    """Hub ids read ``name`` or ``org/name``; anything else with path syntax is meant as a folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers now (``HF_HUB_OFFLINE`` says no; behind a proxy, assume yes)."""
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


def in_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the repo's ``config.json``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid repo id, for instance
        return False


def resolve_pretrained(source: str | Path, what: str) -> tuple[str, bool]:
    """``(name_or_path, local_files_only)`` for a transformers-format folder or a hub id.

    Raises :class:`ModelSourceError` for a folder without ``config.json``, a missing folder or checkpoint
    file, and a hub id that is neither cached nor downloadable now.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"{what} folder {text!r} has no config.json (expected a transformers-format folder)"
            )
        return str(path), True
    if text.endswith(CHECKPOINT_SUFFIXES):
        raise ModelSourceError(f"{what} checkpoint file {text!r} does not exist")
    if looks_like_path(text):
        raise ModelSourceError(f"{what} folder {text!r} does not exist")
    if in_cache(text):
        return text, True
    if not hub_reachable():
        raise ModelSourceError(
            f"{what} {text!r} is not in the local Hugging Face cache and the hub cannot be reached: "
            f"download it on a connected machine (`hf download {text} --local-dir DIR`) and pass DIR instead"
        )
    return text, False


def loader_error(exc: Exception, what: str, name: str) -> ModelSourceError:
    """One line for a loader's failure on ``name``: a corrupt or pickled weights file is named as such."""
    import pickle

    from safetensors import SafetensorError

    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError):
        reason = (
            "its pickled weights file (.bin) holds objects other than tensors; refused, as loading them could "
            "run code (convert a trusted copy to model.safetensors)"
        )
    elif isinstance(exc, SafetensorError):
        reason = f"corrupt or truncated safetensors file ({' '.join(text.split())})"
    else:
        reason = text.splitlines()[0] if text else type(exc).__name__
    return ModelSourceError(f"could not load {what} from {name!r}: {reason}")


def call_loader(loader: Callable[..., T], name: str, local_only: bool, what: str) -> T:
    """``loader(name, local_files_only=...)`` with errors turned into :class:`ModelSourceError`."""
    import pickle

    from safetensors import SafetensorError

    try:
        try:
            return loader(name, local_files_only=local_only)
        except OSError:
            # a partial cache (an interrupted download): complete it from the hub when it can be reached
            if not local_only or Path(name).is_dir() or not hub_reachable():
                raise
            return loader(name, local_files_only=False)
    except ModelSourceError:
        raise
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise loader_error(exc, what, name) from exc


def load_pretrained(loader: Callable[..., T], source: str | Path, what: str) -> T:
    """Load a folder or hub id (no checkpoint-file conversion: see :func:`grounded.models.sources`)."""
    return call_loader(loader, *resolve_pretrained(source, what), what)
