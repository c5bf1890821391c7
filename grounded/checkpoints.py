"""Official checkpoint files (``sam_vit_b_01ec64.pth``, ``sam_hq_vit_b.pth``, ...) → transformers models.

The files are pickles: they are read with ``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only, so a file that needs arbitrary code is refused, never run. The variant (SAM or HQ-SAM, ViT
size, attention layout) is recognised from the keys and tensor shapes; the keys are renamed to transformers'
layout and loaded strictly (every weight must be used, every parameter filled).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "convert_checkpoint", "converted_folder", "detect_variant", "read_state_dict"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or is not one of the known official formats."""


_KNOWN = "SAM (segment-anything: sam_vit_{b,l,h}_*.pth) or HQ-SAM (sam-hq: sam_hq_vit_{b,l,h}.pth)"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file, loaded safely onto the CPU (CUDA tensors included)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"refusing to load {path.name}: it needs more than tensors to unpickle, and running its code is not "
            f"safe ({reason})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {exc}") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # training checkpoints wrap the weights
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
    return dict(obj)


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"sam"`` or ``"sam_hq"``, from the keys; a clear error for anything else."""
    keys = set(state_dict)
    if "image_encoder.patch_embed.proj.weight" in keys and "mask_decoder.iou_token.weight" in keys:
        return "sam_hq" if "mask_decoder.hf_token.weight" in keys else "sam"
    sample = ", ".join(sorted(keys)[:4]) or "no keys"
    raise CheckpointError(f"unrecognised checkpoint (keys {sample}, ...); expected {_KNOWN}")


# ------------------------------------------------------------------------------------------------ SAM
def _sam_config(state_dict: Mapping[str, torch.Tensor], hq: bool) -> Any:
    """SAM / HQ-SAM config read off the tensor shapes (ViT width, depth, heads, global-attention blocks)."""
    from transformers import (
        SamConfig,
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQVisionConfig,
        SamVisionConfig,
    )

    patch = state_dict["image_encoder.patch_embed.proj.weight"]
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    depth = 1 + max(
        int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
    )
    rel_pos = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    head_dim = int(rel_pos[0].shape[1])
    grid = int(state_dict["image_encoder.pos_embed"].shape[1])
    global_blocks = [i for i, r in enumerate(rel_pos) if int(r.shape[0]) == 2 * grid - 1]
    windowed = [int(r.shape[0]) for i, r in enumerate(rel_pos) if i not in global_blocks]
    window = (windowed[0] + 1) // 2 if windowed else 14
    vision: dict[str, Any] = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": width // head_dim,
        "global_attn_indexes": global_blocks,
        "window_size": window,
        "patch_size": patch_size,
        "image_size": grid * patch_size,
        "output_channels": int(state_dict["image_encoder.neck.0.weight"].shape[0]),
        "mlp_dim": int(state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]),
    }
    if hq:
        return SamHQConfig(
            vision_config=SamHQVisionConfig(**vision),
            mask_decoder_config=SamHQMaskDecoderConfig(vit_dim=width),
        )
    return SamConfig(vision_config=SamVisionConfig(**vision))


_SAM_RENAMES: list[tuple[str, str]] = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"\.blocks\.", ".layers."),
    (r"\.norm(\d)\.", r".layer_norm\1."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"patch_embed\.proj\.", "patch_embed.projection."),
    (r"neck\.0\.", "neck.conv1."),
    (r"neck\.1\.", "neck.layer_norm1."),
    (r"neck\.2\.", "neck.conv2."),
    (r"neck\.3\.", "neck.layer_norm2."),
    (r"prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (
        r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    (r"mask_downscaling\.0\.", "mask_embed.conv1."),
    (r"mask_downscaling\.1\.", "mask_embed.layer_norm1."),
    (r"mask_downscaling\.3\.", "mask_embed.conv2."),
    (r"mask_downscaling\.4\.", "mask_embed.layer_norm2."),
    (r"mask_downscaling\.6\.", "mask_embed.conv3."),
    (r"output_upscaling\.0\.", "upscale_conv1."),
    (r"output_upscaling\.1\.", "upscale_layer_norm."),
    (r"output_upscaling\.3\.", "upscale_conv2."),
    # HQ-SAM's extra decoder parts
    (r"mask_decoder\.hf_token\.", "mask_decoder.hq_token."),
    (r"mask_decoder\.hf_mlp\.", "mask_decoder.hq_mask_mlp."),
    (r"compress_vit_feat\.0\.", "compress_vit_conv1."),
    (r"compress_vit_feat\.1\.", "compress_vit_norm."),
    (r"compress_vit_feat\.3\.", "compress_vit_conv2."),
    (r"embedding_encoder\.0\.", "encoder_conv1."),
    (r"embedding_encoder\.1\.", "encoder_norm."),
    (r"embedding_encoder\.3\.", "encoder_conv2."),
    (r"embedding_maskfeature\.0\.", "mask_conv1."),
    (r"embedding_maskfeature\.1\.", "mask_norm."),
    (r"embedding_maskfeature\.3\.", "mask_conv2."),
    # three-layer MLPs (hypernetworks, IoU head, HQ mask MLP): first, middle, last
    (r"(mlps\.\d+|iou_prediction_head|hq_mask_mlp)\.layers\.0\.", r"\1.proj_in."),
    (r"(mlps\.\d+|iou_prediction_head|hq_mask_mlp)\.layers\.2\.", r"\1.proj_out."),
    (r"(mlps\.\d+|iou_prediction_head|hq_mask_mlp)\.layers\.1\.", r"\1.layers.0."),
]


def _rename_sam(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in ("pixel_mean", "pixel_std"):
            continue  # the processor normalises images
        for pattern, replacement in _SAM_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    out["shared_image_embedding.positional_embedding"] = out[
        "prompt_encoder.shared_embedding.positional_embedding"
    ]
    return out


def _load_sam(state_dict: Mapping[str, torch.Tensor], hq: bool) -> Any:
    from transformers import SamHQModel, SamModel

    config = _sam_config(state_dict, hq)
    model = (SamHQModel if hq else SamModel)(config).eval()
    renamed = _rename_sam(state_dict)
    expected = set(model.state_dict())
    missing, unused = sorted(expected - set(renamed)), sorted(set(renamed) - expected)
    if missing or unused:
        raise CheckpointError(
            f"checkpoint does not match the {'HQ-SAM' if hq else 'SAM'} layout: missing {missing[:5]}, unused {unused[:5]}"
        )
    model.load_state_dict(renamed, strict=True)
    return model


# ------------------------------------------------------------------------------------------------ entry points
def convert_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """Convert an official checkpoint to a transformers-format folder (model + processor) at ``out_dir``."""
    from transformers import SamHQProcessor, SamImageProcessorPil, SamProcessor

    state_dict = read_state_dict(path)
    variant = detect_variant(state_dict)
    model = _load_sam(state_dict, hq=variant == "sam_hq")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    size = int(model.config.vision_config.image_size)
    # the PIL backend resizes exactly as the official ResizeLongestSide does (the torchvision one differs by
    # up to 0.02 in normalised pixel values), so converted files give the official results
    image_processor = SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size})
    (SamHQProcessor if variant == "sam_hq" else SamProcessor)(
        image_processor=image_processor
    ).save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)  # nothing half-written at out_dir
    return out


def converted_folder(path: str | Path) -> Path:
    """A cached transformers-format folder for an official checkpoint (converted on first use)."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.blake2b(
        f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode(), digest_size=8
    ).hexdigest()
    root = Path(os.environ.get("GROUNDED_CACHE", Path.home() / ".cache" / "grounded")) / "converted"
    folder = root / f"{path.stem}-{digest}"
    if not (folder / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(path, folder)
    return folder
