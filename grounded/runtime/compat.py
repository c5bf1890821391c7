"""Workarounds for bugs in the libraries we build on, each applied only where the bug is present.

SAM-HQ in transformers 5.x (``SamHQMaskDecoder.forward``) names the two-way transformer's second output
``iou_token_out`` and then upsamples the image embeddings from *before* the transformer (transposed), where
the official HQ-SAM (SysCV/sam-hq ``mask_decoder_hq.py``) upsamples the transformer's updated image
embeddings. The IoU predictions agree, the masks do not (max low-res logit difference ≈ 1 on random weights).
:func:`fix_sam_hq_decoder` restores the official computation with two forward hooks (no weights change, the
state dict is untouched): one records the transformer's updated embeddings, one feeds them to the
upsampling convolution. ``tests/test_checkpoints.py`` proves parity with the official package.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["fix_sam_hq_decoder", "sam_hq_decoder_is_buggy"]

_BUGGY_LINE = "point_embedding, iou_token_out = self.transformer("


def sam_hq_decoder_is_buggy(decoder: Any) -> bool:
    """Whether this SAM-HQ mask decoder discards the transformer's updated image embeddings."""
    try:
        return _BUGGY_LINE in inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return False


def fix_sam_hq_decoder(model: Any) -> bool:
    """Make a transformers ``SamHQModel`` decode like the official HQ-SAM; returns whether it was needed."""
    decoder = model.mask_decoder
    if getattr(decoder, "_grounded_fixed", False) or not sam_hq_decoder_is_buggy(decoder):
        return False
    state: dict[str, torch.Tensor] = {}

    def record_updated_embeddings(
        _module: Any, _inputs: Any, output: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        state["keys"] = output[1]  # (batch, point_batch, height * width, channels)

    def upsample_updated_embeddings(
        _module: Any, inputs: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        keys = state.pop("keys")
        return (keys.transpose(2, 3).reshape(inputs[0].shape),)

    decoder.transformer.register_forward_hook(record_updated_embeddings)
    decoder.upscale_conv1.register_forward_pre_hook(upsample_updated_embeddings)
    decoder._grounded_fixed = True
    return True
