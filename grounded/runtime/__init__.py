"""Where and how models compute: device and precision choice, fast kernels swapped into transformers models,
memory reuse, subnormal flushing and workarounds for library bugs. Imports only :mod:`grounded.core`.

The names of the former ``grounded.runtime`` module (``pick_device``, ``autocast``, ...) live in
:mod:`grounded.runtime.device`; they are still found here, imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_DEVICE_NAMES = (
    "PRECISIONS",
    "DeviceError",
    "Precision",
    "autocast",
    "check_precision",
    "cpu_has_native_bf16",
    "pick_device",
    "resolve_precision",
)


def __getattr__(name: str) -> Any:
    if name in _DEVICE_NAMES:
        return getattr(importlib.import_module("grounded.runtime.device"), name)
    raise AttributeError(f"module 'grounded.runtime' has no attribute {name!r}")
