"""Loading RAM / RAM++: from an official ``.pth`` (converted in memory) or from a folder saved by :func:`save_ram`
(``config.json`` + ``model.safetensors`` + the tag list and its per-class thresholds); the tags of a batch.

The released tag list (4585 English tags) and its per-class thresholds ship with this package, read from the
official repository (xinyu1205/recognize-anything, Apache-2.0): ``ram_tag_list.txt`` and
``ram_tag_list_threshold.txt``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from grounded.models.ram.config import RamConfig
from grounded.models.ram.convert import (
    EXPECTED_FILES,
    RamCheckpointError,
    config_from_official_state_dict,
    convert_official_state_dict,
)
from grounded.models.ram.model import RamModel
from grounded.models.ram.transform import preprocess

__all__ = [
    "CONFIG_NAME",
    "TAGS_NAME",
    "THRESHOLDS_NAME",
    "WEIGHTS_NAME",
    "Ram",
    "default_tags",
    "default_thresholds",
    "load_ram",
    "read_lines",
    "save_ram",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TAGS_NAME = "ram_tag_list.txt"
THRESHOLDS_NAME = "ram_tag_list_threshold.txt"
MODEL_TYPE = "recognize_anything"


def read_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _packaged(name: str) -> list[str]:
    text = resources.files("grounded.models.ram").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def default_tags() -> list[str]:
    """The released 4585 English tags, in the order of the models' outputs."""
    return _packaged(TAGS_NAME)


def default_thresholds() -> list[float]:
    """The released per-class thresholds of :func:`default_tags`."""
    return [float(x) for x in _packaged(THRESHOLDS_NAME)]


@dataclass
class Ram:
    """A RAM / RAM++ model with its tag list and per-class thresholds (``sigmoid(logit) > threshold`` = tag)."""

    model: RamModel
    tags: list[str]
    thresholds: torch.Tensor

    def __post_init__(self) -> None:
        n = self.model.config.num_classes
        self.thresholds = torch.as_tensor(self.thresholds, dtype=torch.float32).flatten()
        if len(self.tags) != n or self.thresholds.numel() != n:
            raise ValueError(
                f"the model has {n} classes but got {len(self.tags)} tags and {self.thresholds.numel()} thresholds"
            )

    @property
    def config(self) -> RamConfig:
        return self.model.config

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(N, num_classes)`` sigmoid scores (float32, on the CPU) of ``(H, W, 3)`` uint8 RGB images."""
        param = next(self.model.parameters())
        pixels = preprocess(images, self.config.image_size).to(param.device)
        return torch.sigmoid(self.model(pixels).float()).cpu()

    def select(
        self,
        probabilities: torch.Tensor,
        threshold: float | None = None,
        exclude: Sequence[str] = (),
        max_tags: int | None = None,
    ) -> list[list[str]]:
        """The tags of each row, in tag-list order (the original's output order).

        ``threshold`` replaces every per-class threshold; ``exclude`` lists tags never returned (the original's
        ``delete_tag_index``); ``max_tags`` keeps the highest-scoring ones.
        """
        limits = self.thresholds if threshold is None else torch.full_like(self.thresholds, float(threshold))
        keep = probabilities > limits
        if exclude:
            index = {t: i for i, t in enumerate(self.tags)}
            unknown = [t for t in exclude if t not in index]
            if unknown:
                raise ValueError(f"excluded tags not in the tag list: {', '.join(unknown)}")
            keep[:, [index[t] for t in exclude]] = False
        out = []
        for row, scores in zip(keep, probabilities, strict=True):
            chosen = row.nonzero().flatten().tolist()
            if max_tags is not None and len(chosen) > max_tags:
                chosen = sorted(sorted(chosen, key=lambda i: -float(scores[i]))[:max_tags])
            out.append([self.tags[i] for i in chosen])
        return out


def _as_tags(tags: str | Path | Sequence[str] | None) -> list[str] | None:
    if tags is None:
        return None
    if isinstance(tags, str | Path):
        return read_lines(tags)
    return [str(t) for t in tags]


def _as_thresholds(thresholds: str | Path | Sequence[float] | None) -> list[float] | None:
    if thresholds is None:
        return None
    if isinstance(thresholds, str | Path):
        return [float(x) for x in read_lines(thresholds)]
    return [float(x) for x in thresholds]


def _thresholds_for(tags: list[str], given: list[float] | None, config: RamConfig) -> list[float]:
    if given is not None:
        return given
    if tags == default_tags():
        return default_thresholds()
    return [config.threshold] * len(tags)


def load_ram(
    source: str | Path,
    tags: str | Path | Sequence[str] | None = None,
    thresholds: str | Path | Sequence[float] | None = None,
    image_size: int | None = None,
) -> Ram:
    """A :class:`Ram` (in eval mode, on the CPU) from an official ``.pth`` or a folder saved by :func:`save_ram`.

    Args:
        source: ``ram_swin_large_14m.pth`` / ``ram_plus_swin_large_14m.pth`` (read with
            ``torch.load(weights_only=True)``), or a folder.
        tags: the tag list (a file with one tag per line, or a list), for a model trained on another list than
            the released one. Default: the folder's list, else the released 4585 tags.
        thresholds: per-class thresholds (file or list). Default: the folder's, the released ones for the
            released list, else the config's single threshold (0.68) for every class.
        image_size: input size of an official file (default: read off its Swin window, 384 for the releases).

    Raises:
        RamCheckpointError: the file is not an official RAM / RAM++ checkpoint, or it does not fit the tags.
    """
    path = Path(source).expanduser()
    tag_list, threshold_list = _as_tags(tags), _as_thresholds(thresholds)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise RamCheckpointError(
                f"{path} is not a RAM folder: expected {CONFIG_NAME} and {WEIGHTS_NAME} (written by "
                f"grounded.models.ram.save_ram), or pass {EXPECTED_FILES}"
            )
        from safetensors.torch import load_file

        data = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        if data.get("model_type") != MODEL_TYPE:
            raise RamCheckpointError(
                f"{path / CONFIG_NAME} is not a RAM config (model_type {data.get('model_type')!r})"
            )
        config = RamConfig.from_dict(data)
        if tag_list is None:
            tag_list = read_lines(path / TAGS_NAME) if (path / TAGS_NAME).is_file() else default_tags()
        if threshold_list is None and (path / THRESHOLDS_NAME).is_file():
            threshold_list = [float(x) for x in read_lines(path / THRESHOLDS_NAME)]
        weights = load_file(str(path / WEIGHTS_NAME))
    elif path.is_file():
        from grounded.models.checkpoints import CheckpointError, read_state_dict

        try:
            state_dict = read_state_dict(path)
        except CheckpointError as exc:
            raise RamCheckpointError(f"{exc}; expected {EXPECTED_FILES}") from None
        try:
            config = config_from_official_state_dict(
                state_dict, None if tag_list is None else len(tag_list), image_size
            )
        except RamCheckpointError as exc:
            raise RamCheckpointError(f"{path.name}: {exc}") from None
        if tag_list is None:
            tag_list = default_tags()
            if config.num_classes != len(tag_list):
                raise RamCheckpointError(
                    f"{path.name} has {config.num_classes} tags, not the released {len(tag_list)}: pass its tag list"
                )
        weights = convert_official_state_dict(state_dict)
    else:
        raise RamCheckpointError(
            f"{path} does not exist; expected {EXPECTED_FILES}, or a folder saved by save_ram"
        )
    if len(tag_list) != config.num_classes:
        raise RamCheckpointError(
            f"{path.name}: the model has {config.num_classes} tags, the tag list {len(tag_list)}"
        )
    model = RamModel(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RamCheckpointError(
            f"{path.name}: weights do not fit a {config.variant} model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    return Ram(model.eval(), tag_list, torch.tensor(_thresholds_for(tag_list, threshold_list, config)))


def save_ram(ram: Ram, folder: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors``, the tag list and its thresholds to ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"model_type": MODEL_TYPE, **ram.config.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ram.model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / TAGS_NAME).write_text("\n".join(ram.tags) + "\n", encoding="utf-8")
    (folder / THRESHOLDS_NAME).write_text(
        "\n".join(repr(round(float(t), 6)) for t in ram.thresholds) + "\n", encoding="utf-8"
    )
    return folder
