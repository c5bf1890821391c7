"""Random weights for the SAM 2 parity test, made the same way on both sides without the official package.

The official side (``sam2_official.py``, in its own venv) builds its module tree and fills every tensor of its
state dict from :func:`random_state_dict`; grounded's side (``tests/test_sam2_parity.py``) rebuilds the same
tensors from the keys and shapes the official side recorded (``sam2_official_keys.json.gz``) and checks the
SHA-256 the official side wrote into the reference (``weights_digest``). So no weights are committed, and a
change in NumPy's generator would show as a digest mismatch, not as a silent difference.

Each tensor has its own ``numpy.random.RandomState`` (a stream NumPy keeps frozen across releases), seeded from
the seed and a CRC-32 of its key, so the order of the keys does not matter. Scales keep a random network
unsaturated: weights N(0, 1/fan_in), norm weights 1 + N(0, 0.1²), everything else N(0, 0.1²); the object-score
head's last bias is set to ``OBJECT_SCORE_BIAS`` so the random model predicts the objects as present (with a
negative score the official code replaces every mask by -1024 and the comparison would be empty).

Only NumPy and PyTorch are imported: the file runs in the official venv and in grounded's.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["OBJECT_SCORE_BIAS", "random_state_dict", "weights_digest"]

#: the last bias of the official ``sam_mask_decoder.pred_obj_score_head`` (an object-present logit offset)
OBJECT_SCORE_BIAS = 4.0
_SCORE_BIAS_KEY = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"


def _values(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    rng = np.random.RandomState((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**32)
    noise = rng.standard_normal(int(np.prod(shape, dtype=np.int64))).reshape(tuple(shape))
    if key == _SCORE_BIAS_KEY:
        return np.full(tuple(shape), OBJECT_SCORE_BIAS)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:], dtype=np.int64))
        return noise / np.sqrt(max(fan_in, 1))
    if key.endswith(".weight"):  # LayerNorm scales
        return 1.0 + 0.1 * noise
    return 0.1 * noise


def random_state_dict(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, torch.Tensor]:
    """float32 tensors for ``{key: shape}`` (see the module docstring)."""
    return {
        key: torch.from_numpy(_values(key, shape, seed).astype(np.float32)) for key, shape in shapes.items()
    }


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted keys and their float32 bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()
