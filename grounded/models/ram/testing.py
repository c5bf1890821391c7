"""Tiny random RAM / RAM++ models for tests, written both as an official-format ``.pth`` (the original's key
names, wrapped in ``{"model": ...}`` like the released files) and as a folder (:func:`grounded.models.ram.save_ram`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from grounded.models.ram.config import RamConfig
from grounded.models.ram.convert import to_official_state_dict
from grounded.models.ram.loading import TAGS_NAME, THRESHOLDS_NAME, Ram, save_ram
from grounded.models.ram.model import RamModel
from grounded.models.ram.transform import preprocess

__all__ = ["TINY_TAGS", "TinyRamFiles", "make_ram", "random_ram", "randomize"]

#: 20 tags of the released list, several of them in skimage's test photos (astronaut, coffee, chelsea).
TINY_TAGS = [
    "astronaut",
    "cat",
    "coffee",
    "coffee cup",
    "dog",
    "flag",
    "helmet",
    "man",
    "person",
    "rocket",
    "space",
    "table",
    "woman",
    "car",
    "tree",
    "sky",
    "red",
    "white",
    "spoon",
    "saucer",
]


class TinyRamFiles(NamedTuple):
    folder: Path  #: our format (config.json, model.safetensors, tag list, thresholds)
    checkpoint: Path  #: official format (.pth)
    tags: Path  #: the tag list of the .pth (one per line)
    thresholds: Path  #: its per-class thresholds


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Unsaturated random weights (weights ~ N(0, 1/fan_in), norms ~ 1, biases small), from a seed, in name
    order: the tag scores spread over (0, 1) instead of collapsing to one value as with zero-initialised labels."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("reweight_scale"):
                param.copy_(math.log(1 / 0.07) + 0.1 * noise)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias") or name.endswith("relative_position_bias_table"):
                param.copy_(0.1 * noise)
            elif name.endswith("label_embed"):
                param.copy_(noise)
            else:
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(noise / math.sqrt(fan_in))


def random_ram(variant: str = "ram", seed: int = 0, tags: list[str] | None = None) -> Ram:
    """A tiny :class:`Ram` with random weights and per-class thresholds between 0.3 and 0.7.

    The classifier bias is shifted so that a smooth random colour image scores 0.5 on average, so that photos
    get some tags but not all (skimage's astronaut, coffee and chelsea: 7, 6 and 1 of the 20 for RAM, seed 0).
    """
    tags = list(TINY_TAGS if tags is None else tags)
    config = RamConfig.tiny(variant, num_classes=len(tags))
    model = RamModel(config).eval()
    randomize(model, seed)
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(1, 3, 8, 8, generator=generator) * 255
    size = (config.image_size, config.image_size)
    smooth = F.interpolate(colours, size=size, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        model.classifier.bias.sub_(model(preprocess([smooth[0].permute(1, 2, 0).numpy()], size[0])).mean())
    generator = torch.Generator().manual_seed(seed + 1)
    thresholds = 0.3 + 0.4 * torch.rand(len(tags), generator=generator)
    return Ram(model, tags, thresholds)


def make_ram(root: str | Path, variant: str = "ram", seed: int = 0) -> TinyRamFiles:
    """Write a tiny random model under ``root``: ``folder/`` (ours) and ``<variant>_tiny.pth`` (official keys)
    with its tag list and thresholds beside it."""
    root = Path(root)
    ram = random_ram(variant, seed)
    folder = save_ram(ram, root / f"{variant}_tiny")
    checkpoint = root / f"{variant}_tiny.pth"
    torch.save({"model": to_official_state_dict(ram.model.state_dict())}, checkpoint)
    tags, thresholds = root / f"{variant}_tiny_{TAGS_NAME}", root / f"{variant}_tiny_{THRESHOLDS_NAME}"
    tags.write_bytes((folder / TAGS_NAME).read_bytes())
    thresholds.write_bytes((folder / THRESHOLDS_NAME).read_bytes())
    return TinyRamFiles(folder, checkpoint, tags, thresholds)
