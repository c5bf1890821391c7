"""Where and how models compute: device and precision choice, fast kernels swapped into transformers models,
memory reuse, subnormal flushing and workarounds for library bugs. Imports only :mod:`grounded.core`.

The names of the former ``grounded.runtime`` module (``pick_device``, ``autocast``, ...) live in
:mod:`grounded.runtime.device`; they are still found here, imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    """The former module's names, from :mod:`grounded.runtime.device` (imported on first use)."""
    device = importlib.import_module("grounded.runtime.device")
    if name in device.__all__:
        return getattr(device, name)
    raise AttributeError(f"module 'grounded.runtime' has no attribute {name!r}")
