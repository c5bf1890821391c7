"""Registry of adapter classes: built-ins register by decorator, third parties by entry point.

Nothing is imported until a name is asked for: a pipeline imports only the modules of its own adapters (the
built-ins are found by name in :data:`BUILTIN_ADAPTERS`, plug-ins by entry point).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points

from grounded.engine.adapter import Adapter

__all__ = [
    "BUILTIN_ADAPTERS",
    "ENTRY_POINT_GROUP",
    "UnknownAdapterError",
    "available_adapters",
    "get_adapter",
    "register_adapter",
]

ENTRY_POINT_GROUP = "grounded.adapters"
_log = logging.getLogger(__name__)
_REGISTRY: dict[str, type[Adapter]] = {}
_loaded_entry_points = False

#: built-in adapter name -> the module that registers it (imported when the name is first asked for)
BUILTIN_ADAPTERS: dict[str, str] = {
    "blip": "grounded.adapters.taggers",
    "grounding_dino": "grounded.adapters.grounding_dino",
    "mask_ops": "grounded.adapters.mask_ops",
    "mm_grounding_dino": "grounded.adapters.grounding_dino",
    "owlv2": "grounded.adapters.owlv2",
    "ram": "grounded.adapters.ram",
    "ram_plus": "grounded.adapters.ram",
    "sam": "grounded.adapters.sam",
    "sam2": "grounded.adapters.sam",
    "sam2_video": "grounded.adapters.sam2_video",
    "sam3": "grounded.adapters.sam3",
    "sam3_video": "grounded.adapters.sam3_video",
    "sam_hq": "grounded.adapters.sam",
    "sd_inpaint": "grounded.adapters.inpaint",
    "semantic_sam": "grounded.adapters.semantic_sam",
}


class UnknownAdapterError(KeyError):
    """A pipeline named an adapter type that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_adapter(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator registering an :class:`Adapter` subclass under ``name``."""

    def decorate(cls: type[Adapter]) -> type[Adapter]:
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            raise TypeError(f"@register_adapter({name!r}) must decorate an Adapter subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"adapter name {name!r} is already registered by {existing.__module__}.{existing.__name__}"
            )
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorate


def _load_builtin(name: str) -> None:
    """Import the module of built-in adapter ``name`` (it registers itself)."""
    if name not in _REGISTRY and name in BUILTIN_ADAPTERS:
        importlib.import_module(BUILTIN_ADAPTERS[name])


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY or ep.name in BUILTIN_ADAPTERS:
            continue
        try:
            register_adapter(ep.name)(ep.load())
        except Exception as exc:  # a broken plug-in must not break the built-ins
            _log.warning("could not load grounded adapter %r from %s: %s", ep.name, ep.value, exc)


def get_adapter(name: str) -> type[Adapter]:
    """The adapter class registered as ``name`` (built-ins first, then entry points)."""
    _load_builtin(name)
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(set(_REGISTRY) | set(BUILTIN_ADAPTERS))) or "none"
        raise UnknownAdapterError(f"unknown adapter type {name!r}; registered adapters: {known}") from None


def available_adapters() -> dict[str, type[Adapter]]:
    """All registered adapters, by name (imports every built-in and plug-in adapter)."""
    for name in BUILTIN_ADAPTERS:
        _load_builtin(name)
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))
