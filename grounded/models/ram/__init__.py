"""Recognize Anything (RAM / RAM++) image tagging, implemented natively (pure PyTorch + transformers' Swin).

``load_ram("ram_swin_large_14m.pth")`` reads an official checkpoint (or a folder written by :func:`save_ram`);
``Ram.probabilities(images)`` scores the tags; ``Ram.select(...)`` applies the per-class thresholds.
"""

from grounded.models.ram.config import VARIANTS, RamConfig
from grounded.models.ram.convert import (
    EXPECTED_FILES,
    RamCheckpointError,
    config_from_official_state_dict,
    convert_official_state_dict,
    is_official_ram,
    to_official_state_dict,
)
from grounded.models.ram.loading import Ram, default_tags, default_thresholds, load_ram, save_ram
from grounded.models.ram.model import RamModel
from grounded.models.ram.transform import preprocess

__all__ = [
    "EXPECTED_FILES",
    "VARIANTS",
    "Ram",
    "RamCheckpointError",
    "RamConfig",
    "RamModel",
    "config_from_official_state_dict",
    "convert_official_state_dict",
    "default_tags",
    "default_thresholds",
    "is_official_ram",
    "load_ram",
    "preprocess",
    "save_ram",
    "to_official_state_dict",
]
