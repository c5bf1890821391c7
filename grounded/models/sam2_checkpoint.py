"""Official SAM 2 / SAM 2.1 checkpoint files (``sam2.1_hiera_tiny.pt``, ``sam2_hiera_large.pt``, ...: a
``{"model": state_dict}`` of facebookresearch/sam2's ``SAM2Base``) → transformers' ``Sam2VideoModel``.

transformers converts these files with ``models/sam2_video/convert_sam2_video_to_hf.py``, which its wheel does not
ship (and which picks the config by model name): the key renames below follow that script, and the config is read
off the tensor shapes instead, so any Hiera size loads. Four things are not in the shapes and follow the official
configs (``sam2/configs/sam2.1/*.yaml``, ``SAM2Base._build_sam_heads``): the blocks with global attention and
the per-stage windows (known for the four Hiera layouts released: T, S, B+, L; another layout is refused), the
Hiera heads (1 at the first stage for T / S, 2 for B+ / L, doubled at each stage), the mask decoder's 8 heads and
the memory attention's single head. The image size is not in the file either: 1024 unless given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["SAM2_KEY", "Sam2CheckpointError", "load_sam2_video", "rename_sam2", "sam2_video_config"]

#: a key every official SAM 2 / 2.1 checkpoint has (and no other family's)
SAM2_KEY = "memory_attention.layers.0.cross_attn_image.q_proj.weight"


class Sam2CheckpointError(ValueError):
    """An official SAM 2 file whose layout cannot be read (raised as ``CheckpointError`` by the caller)."""


# Hiera layouts released (blocks per stage) → global-attention blocks, windows per stage, first-stage heads
_HIERA: dict[tuple[int, ...], tuple[list[int], list[int], int]] = {
    (1, 2, 7, 2): ([5, 7, 9], [8, 4, 14, 7], 1),  # T
    (1, 2, 11, 2): ([7, 10, 13], [8, 4, 14, 7], 1),  # S
    (2, 3, 16, 3): ([12, 16, 20], [8, 4, 14, 7], 2),  # B+
    (2, 6, 36, 4): ([23, 33, 43], [8, 4, 16, 8], 2),  # L
}
_TRUNK = "image_encoder.trunk."


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = [int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def _hiera(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Hiera sizes from the trunk's keys: width per stage (a block with ``proj`` starts a stage)."""
    depth = _count(state_dict, r"image_encoder\.trunk\.blocks\.(\d+)\.")
    starts = [0] + [i for i in range(depth) if f"{_TRUNK}blocks.{i}.proj.weight" in state_dict]
    blocks = [b - a for a, b in zip(starts, [*starts[1:], depth], strict=True)]
    widths = [int(state_dict[f"{_TRUNK}blocks.{i}.norm2.weight"].shape[0]) for i in starts]
    layout = _HIERA.get(tuple(blocks))
    if layout is None:
        known = ", ".join(str(list(k)) for k in _HIERA)
        raise Sam2CheckpointError(
            f"Hiera with {blocks} blocks per stage is not a released SAM 2 layout ({known}): which of its blocks "
            "use global attention is not in the file"
        )
    global_blocks, windows, heads = layout
    patch = state_dict[f"{_TRUNK}patch_embed.proj.weight"]
    window0 = int(state_dict[f"{_TRUNK}pos_embed_window"].shape[-1])
    if window0 != windows[0]:
        raise Sam2CheckpointError(
            f"the first Hiera window is {window0}, the released {blocks} layout has {windows[0]}"
        )
    return {
        "hidden_size": widths[0],
        "num_attention_heads": heads,
        "blocks_per_stage": blocks,
        "embed_dim_per_stage": widths,
        "num_attention_heads_per_stage": [heads * 2**i for i in range(len(blocks))],
        "window_size_per_stage": windows,
        "global_attention_blocks": global_blocks,
        "window_positional_embedding_background_size": list(state_dict[f"{_TRUNK}pos_embed"].shape[-2:]),
        "patch_kernel_size": int(patch.shape[-1]),
        "mlp_ratio": int(state_dict[f"{_TRUNK}blocks.0.mlp.layers.0.weight"].shape[0]) / widths[0],
    }


def sam2_video_config(state_dict: Mapping[str, torch.Tensor], image_size: int = 1024) -> Any:
    """``Sam2VideoConfig`` read off an official state dict's shapes (see the module docstring)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig

    if image_size % 64:
        raise Sam2CheckpointError(f"image size {image_size} is not a multiple of 64")
    hiera = _hiera(state_dict)
    backbone = Sam2HieraDetConfig(image_size=[image_size, image_size], **hiera)
    necks = _count(state_dict, r"image_encoder\.neck\.convs\.(\d+)\.")
    hidden = int(state_dict["image_encoder.neck.convs.0.conv.weight"].shape[0])
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[
            int(state_dict[f"image_encoder.neck.convs.{i}.conv.weight"].shape[1]) for i in range(necks)
        ],
        backbone_feature_sizes=[[image_size // s] * 2 for s in (4, 8, 16)],
        fpn_hidden_size=hidden,
        fpn_kernel_size=int(state_dict["image_encoder.neck.convs.0.conv.weight"].shape[-1]),
    )
    decoder = "sam_mask_decoder."
    mask_decoder = {
        "hidden_size": hidden,
        "mlp_dim": int(state_dict[f"{decoder}transformer.layers.0.mlp.layers.0.weight"].shape[0]),
        "num_hidden_layers": _count(state_dict, r"sam_mask_decoder\.transformer\.layers\.(\d+)\."),
        "num_attention_heads": 8,
        "num_multimask_outputs": int(state_dict[f"{decoder}mask_tokens.weight"].shape[0]) - 1,
        "iou_head_depth": _count(state_dict, r"sam_mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        "iou_head_hidden_dim": int(state_dict[f"{decoder}iou_prediction_head.layers.0.weight"].shape[0]),
    }
    prompt_encoder = {
        "hidden_size": hidden,
        "image_size": image_size,
        "patch_size": 16,
        "mask_input_channels": int(state_dict["sam_prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        "num_point_embeddings": _count(state_dict, r"sam_prompt_encoder\.point_embeddings\.(\d+)\."),
    }
    memory = "memory_attention.layers.0."
    fuser = "memory_encoder.fuser.layers.0."
    downsampler_layers = _count(state_dict, r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.") // 3
    first_down = state_dict["memory_encoder.mask_downsampler.encoder.0.weight"]
    stride = round(int(first_down.shape[0]) ** 0.5)  # each layer multiplies the channels by stride²
    internal = int(state_dict[f"{memory}self_attn.q_proj.weight"].shape[0])
    return Sam2VideoConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt_encoder,
        mask_decoder_config=mask_decoder,
        image_size=image_size,
        num_maskmem=int(state_dict["maskmem_tpos_enc"].shape[0]),
        enable_occlusion_spatial_embedding="no_obj_embed_spatial" in state_dict,
        enable_temporal_pos_encoding_for_object_pointers="obj_ptr_tpos_proj.weight" in state_dict,
        memory_attention_hidden_size=int(state_dict["memory_attention.norm.weight"].shape[0]),
        memory_attention_num_layers=_count(state_dict, r"memory_attention\.layers\.(\d+)\."),
        memory_attention_num_attention_heads=1,
        memory_attention_downsample_rate=hidden // internal,
        memory_attention_feed_forward_hidden_size=int(state_dict[f"{memory}linear1.weight"].shape[0]),
        memory_attention_rope_feat_sizes=[image_size // 16] * 2,
        memory_encoder_hidden_size=int(state_dict["memory_encoder.pix_feat_proj.weight"].shape[0]),
        memory_encoder_output_channels=int(state_dict["memory_encoder.out_proj.weight"].shape[0]),
        mask_downsampler_embed_dim=int(
            state_dict[f"memory_encoder.mask_downsampler.encoder.{3 * downsampler_layers}.weight"].shape[0]
        ),
        mask_downsampler_kernel_size=int(first_down.shape[-1]),
        mask_downsampler_stride=stride,
        mask_downsampler_padding=int(first_down.shape[-1]) // 2,
        mask_downsampler_total_stride=stride**downsampler_layers,
        memory_fuser_num_layers=_count(state_dict, r"memory_encoder\.fuser\.layers\.(\d+)\."),
        memory_fuser_embed_dim=int(state_dict[f"{fuser}dwconv.weight"].shape[0]),
        memory_fuser_intermediate_dim=int(state_dict[f"{fuser}pwconv1.weight"].shape[0]),
        memory_fuser_kernel_size=int(state_dict[f"{fuser}dwconv.weight"].shape[-1]),
        memory_fuser_padding=int(state_dict[f"{fuser}dwconv.weight"].shape[-1]) // 2,
    )


# official key → Sam2VideoModel key, applied in order (after the MLP layers are renamed)
_RENAMES: list[tuple[str, str]] = [
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^vision_encoder\.backbone\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (
        r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^(memory_attention\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    (r"\.out_proj\.", ".o_proj."),  # every attention's output projection
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.dwconv\.", r"\1.depthwise_conv."),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.pwconv(\d)\.", r"\1.pointwise_conv\2."),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.norm\.", r"\1.layer_norm."),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.gamma$", r"\1.scale"),
    (r"^memory_encoder\.o_proj\.", "memory_encoder.projection."),
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
]
# the official MLP class keeps its linear layers in ``layers``; transformers' names the first and last
_MLP = re.compile(
    r"^(.*(?:\.mlp|output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)|obj_ptr_proj)"
    r"\.layers\.(\d+)\.(weight|bias)$"
)
# the memory encoder's mask downsampler: (conv, norm, activation) × n, then a 1×1 conv
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(.*)$")


def rename_sam2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official keys renamed to ``Sam2VideoModel``'s (the 4 point embeddings stacked into one table, the
    positional Gaussian matrix shared with the model's image-wide embedding)."""
    depth: dict[str, int] = {}
    for key in state_dict:
        if m := _MLP.match(key):
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    downsampler_last = 3 * (_count(state_dict, r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.") // 3)
    out: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := re.match(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$", key):
            points[int(m.group(1))] = value
            continue
        if m := _MLP.match(key):
            prefix, index, kind = m.group(1), int(m.group(2)), m.group(3)
            last = depth[prefix] - 1
            name = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
            key = f"{prefix}.{name}.{kind}"
        if m := _DOWNSAMPLER.match(key):
            index, rest = int(m.group(1)), m.group(2)
            if index == downsampler_last:
                part = "final_conv"
            elif index % 3 == 0:
                part = f"layers.{index // 3}.conv"
            elif index % 3 == 1:
                part = f"layers.{index // 3}.layer_norm"
            else:
                raise Sam2CheckpointError(f"unexpected mask downsampler tensor {key}")
            key = f"memory_encoder.mask_downsampler.{part}.{rest}"
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    if points:
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    shared = out.get("prompt_encoder.shared_embedding.positional_embedding")
    if shared is not None:
        out["shared_image_embedding.positional_embedding"] = shared
    return out


def load_sam2_video(state_dict: Mapping[str, torch.Tensor], image_size: int = 1024) -> Any:
    """A ``Sam2VideoModel`` (eval mode) holding an official state dict; every tensor must be used and every
    weight filled, with the shapes the config read off the file gives."""
    from transformers import Sam2VideoModel

    try:
        config = sam2_video_config(state_dict, image_size)
    except KeyError as exc:
        raise Sam2CheckpointError(f"checkpoint does not match the SAM 2 layout: no tensor {exc}") from None
    model = Sam2VideoModel(config).eval()
    renamed = rename_sam2(state_dict)
    own = model.state_dict()
    missing, unused = sorted(set(own) - set(renamed)), sorted(set(renamed) - set(own))
    if missing or unused:
        raise Sam2CheckpointError(
            f"checkpoint does not match the SAM 2 layout: missing {missing[:5]}, unused {unused[:5]}"
        )
    wrong = sorted(k for k in own if renamed[k].shape != own[k].shape)
    if wrong:
        raise Sam2CheckpointError(
            f"checkpoint tensor {wrong[0]} has shape {tuple(renamed[wrong[0]].shape)}, expected "
            f"{tuple(own[wrong[0]].shape)} (SAM 2 layout)"
        )
    model.load_state_dict(renamed, strict=True)
    return model
