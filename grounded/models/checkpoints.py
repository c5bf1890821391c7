"""Official checkpoint files (``sam_vit_b_01ec64.pth``, ``sam_hq_vit_b.pth``, ``groundingdino_swint_ogc.pth``,
...) → transformers models.

The files are pickles: they are read with ``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only, so a file that needs arbitrary code is refused, never run. The variant (SAM or HQ-SAM, ViT
size, attention layout; Grounding DINO with a Swin-T or Swin-B backbone) is recognised from the keys and tensor
shapes; the keys are renamed to transformers' layout and loaded strictly (every weight must be used, every
parameter filled).
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

__all__ = [
    "CONVERSION_MARKER",
    "TEXT_ENCODER_ENV",
    "CheckpointError",
    "check_conversion_target",
    "convert_checkpoint",
    "converted_folder",
    "detect_variant",
    "read_state_dict",
]

#: Environment variable naming the tokenizer (hub id or local folder) for Grounding DINO's official files, whose
#: BERT weights are inside the ``.pth`` but whose tokenizer is not; ``bert-base-uncased`` when unset.
TEXT_ENCODER_ENV = "GROUNDED_TEXT_ENCODER"
DEFAULT_TEXT_ENCODER = "bert-base-uncased"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or is not one of the known official formats."""


_KNOWN = (
    "SAM (segment-anything: sam_vit_{b,l,h}_*.pth) or HQ-SAM (sam-hq: sam_hq_vit_{b,l,h}.pth), their TinyViT "
    "versions (MobileSAM: mobile_sam.pt; Light HQ-SAM: sam_hq_vit_tiny.pth), or Grounding "
    "DINO (GroundingDINO: groundingdino_swint_ogc.pth, groundingdino_swinb_cogcoor.pth), or SAM 2 / 2.1 "
    "(sam2: sam2_hiera_tiny.pt, sam2.1_hiera_tiny.pt, ...)"
)


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
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}  # saved from a DistributedDataParallel wrapper
    return dict(obj)


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"sam"``, ``"sam_hq"``, ``"sam_tinyvit"`` (MobileSAM), ``"sam_hq_tinyvit"`` (Light HQ-SAM),
    ``"grounding_dino_swin_t"``, ``"grounding_dino_swin_b"`` or ``"grounding_dino_swin"`` (another Swin size),
    from the keys and shapes; a clear error for anything else."""
    keys = set(state_dict)
    if "image_encoder.patch_embed.proj.weight" in keys and "mask_decoder.iou_token.weight" in keys:
        return "sam_hq" if "mask_decoder.hf_token.weight" in keys else "sam"
    if "image_encoder.patch_embed.seq.0.c.weight" in keys and "mask_decoder.iou_token.weight" in keys:
        return "sam_hq_tinyvit" if "mask_decoder.hf_token.weight" in keys else "sam_tinyvit"
    if {
        "backbone.0.patch_embed.proj.weight",
        "transformer.level_embed",
        "bert.embeddings.word_embeddings.weight",
    } <= keys:
        swin = _swin_shape(state_dict)
        if swin["embed_dim"] == 96 and swin["depths"] == [2, 2, 6, 2]:
            return "grounding_dino_swin_t"
        if swin["embed_dim"] == 128 and swin["depths"] == [2, 2, 18, 2]:
            return "grounding_dino_swin_b"
        return "grounding_dino_swin"
    from grounded.models.sam2_checkpoint import SAM2_KEY

    if SAM2_KEY in keys and "image_encoder.trunk.patch_embed.proj.weight" in keys:
        return "sam2.1" if "no_obj_embed_spatial" in keys else "sam2"
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


# TinyViT image encoders (MobileSAM, Light HQ-SAM): the ImageNet classifier head is never used by SAM, and
# attention-bias index tables are recomputed (older TinyViT code saved them)
_TINYVIT_DROPPED = re.compile(r"^image_encoder\.(norm_head|head)\.|\.attention_bias_idxs$")


def _load_sam_tinyvit(state_dict: Mapping[str, torch.Tensor], hq: bool) -> Any:
    """MobileSAM / Light HQ-SAM: our TinyViT port as ``vision_encoder`` (keys 1:1 under the new prefix), the
    prompt encoder and mask decoder renamed as for SAM / HQ-SAM; loaded strictly."""
    from grounded.models.tinyvit import build_tinyvit_sam, tinyvit_config_from_state_dict

    try:
        encoder_config = tinyvit_config_from_state_dict(state_dict)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not match the TinyViT encoder layout: {exc}") from None
    vit_dim = int(state_dict["mask_decoder.compress_vit_feat.0.weight"].shape[0]) if hq else None
    model = build_tinyvit_sam(encoder_config, hq, vit_dim)
    encoder = {
        "vision_encoder." + k[len("image_encoder.") :]: v
        for k, v in state_dict.items()
        if k.startswith("image_encoder.") and not _TINYVIT_DROPPED.search(k)
    }
    renamed = _rename_sam({k: v for k, v in state_dict.items() if not k.startswith("image_encoder.")})
    renamed.update(encoder)
    own = model.state_dict()
    expected = set(own)
    missing, unused = sorted(expected - set(renamed)), sorted(set(renamed) - expected)
    name = "Light HQ-SAM" if hq else "MobileSAM"
    if missing or unused:
        raise CheckpointError(
            f"checkpoint does not match the {name} (TinyViT) layout: missing {missing[:5]}, unused {unused[:5]}"
        )
    wrong = sorted(k for k in expected if renamed[k].shape != own[k].shape)
    if wrong:
        raise CheckpointError(
            f"checkpoint tensor {wrong[0]} has shape {tuple(renamed[wrong[0]].shape)}, expected "
            f"{tuple(own[wrong[0]].shape)} ({name} layout)"
        )
    model.load_state_dict(renamed, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ Grounding DINO
# Official layout (IDEA-Research/GroundingDINO) → transformers' GroundingDinoForObjectDetection. Rules apply in
# order to a key with its "module." prefix removed; fused attention projections (Swin's ``qkv``,
# nn.MultiheadAttention's ``in_proj_*``) are split into query / key / value afterwards.
_SWIN = "model.backbone.conv_encoder.model"
_GDINO_RENAMES: list[tuple[str, str]] = [
    # Swin backbone
    (r"^backbone\.0\.norm(\d)\.", "BACKBONE_NORM_\\1."),  # stage index fixed up in _rename_gdino_key
    (r"^backbone\.0\.patch_embed\.proj\.", f"{_SWIN}.swin.embeddings.patch_embeddings.projection."),
    (r"^backbone\.0\.patch_embed\.norm\.", f"{_SWIN}.swin.embeddings.norm."),
    (r"^backbone\.0\.layers\.", f"{_SWIN}.swin.encoder.layers."),
    (r"(\.blocks\.\d+)\.norm1\.", r"\1.layernorm_before."),
    (r"(\.blocks\.\d+)\.norm2\.", r"\1.layernorm_after."),
    (
        r"\.attn\.relative_position_bias_table$",
        ".attention.relative_position_bias.relative_position_bias_table",
    ),
    (r"\.attn\.proj\.", ".attention.o_proj."),
    (r"\.attn\.qkv\.", ".attention.qkv."),
    # text encoder and projections
    (r"^bert\.", "model.text_backbone."),
    (r"^feat_map\.", "model.text_projection."),
    (r"^input_proj\.", "model.input_proj_vision."),
    # encoder: deformable (image), text-enhancer and fusion layers share one transformers layer per index
    (
        r"^transformer\.encoder\.layers\.(\d+)\.norm1\.",
        r"model.encoder.layers.\1.deformable_layer.self_attn_layer_norm.",
    ),
    (
        r"^transformer\.encoder\.layers\.(\d+)\.norm2\.",
        r"model.encoder.layers.\1.deformable_layer.final_layer_norm.",
    ),
    (
        r"^transformer\.encoder\.layers\.(\d+)\.linear(\d)\.",
        r"model.encoder.layers.\1.deformable_layer.fc\2.",
    ),
    (
        r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.",
        r"model.encoder.layers.\1.deformable_layer.self_attn.",
    ),
    (
        r"^transformer\.encoder\.text_layers\.(\d+)\.norm1\.",
        r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_before.",
    ),
    (
        r"^transformer\.encoder\.text_layers\.(\d+)\.norm2\.",
        r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_after.",
    ),
    (
        r"^transformer\.encoder\.text_layers\.(\d+)\.linear(\d)\.",
        r"model.encoder.layers.\1.text_enhancer_layer.fc\2.",
    ),
    (
        r"^transformer\.encoder\.text_layers\.(\d+)\.self_attn\.",
        r"model.encoder.layers.\1.text_enhancer_layer.self_attn.",
    ),
    (r"^transformer\.encoder\.fusion_layers\.(\d+)\.", r"model.encoder.layers.\1.fusion_layer."),
    (r"\.fusion_layer\.gamma_v$", ".fusion_layer.vision_param"),
    (r"\.fusion_layer\.gamma_l$", ".fusion_layer.text_param"),
    (r"\.fusion_layer\.layer_norm_v\.", ".fusion_layer.layer_norm_vision."),
    (r"\.fusion_layer\.layer_norm_l\.", ".fusion_layer.layer_norm_text."),
    (r"\.fusion_layer\.attn\.(values_|out_)?v_proj\.", r".fusion_layer.attn.\1vision_proj."),
    (r"\.fusion_layer\.attn\.(values_|out_)?l_proj\.", r".fusion_layer.attn.\1text_proj."),
    # decoder
    (r"^transformer\.decoder\.layers\.(\d+)\.", r"model.decoder.layers.\1.DEC."),
    (r"\.DEC\.cross_attn\.", ".encoder_attn."),
    (r"\.DEC\.norm1\.", ".encoder_attn_layer_norm."),
    (r"\.DEC\.ca_text\.", ".encoder_attn_text."),
    (r"\.DEC\.catext_norm\.", ".encoder_attn_text_layer_norm."),
    (r"\.DEC\.norm2\.", ".self_attn_layer_norm."),
    (r"\.DEC\.norm3\.", ".final_layer_norm."),
    (r"\.DEC\.linear(\d)\.", r".fc\1."),
    (r"\.DEC\.", "."),
    (r"^transformer\.decoder\.norm\.", "model.decoder.layer_norm."),
    (r"^transformer\.decoder\.ref_point_head\.", "model.decoder.reference_points_head."),
    (r"^transformer\.decoder\.bbox_embed\.", "model.decoder.bbox_embed."),
    # two-stage proposals and queries
    (r"^transformer\.level_embed$", "model.level_embed"),
    (r"^transformer\.tgt_embed\.", "model.query_position_embeddings."),
    (r"^transformer\.enc_output(_norm)?\.", r"model.enc_output\1."),
    (r"^transformer\.enc_out_bbox_embed\.", "model.encoder_output_bbox_embed."),
]
# buffers recomputed by transformers, and BERT's pooler, whose output the official model never uses
_GDINO_DROPPED = re.compile(
    r"(\.relative_position_index|\.attn_mask|^bert\.pooler\..*|^bert\.embeddings\.position_ids)$"
)
# transformers' SwinBackbone keeps a final layer norm its backbone output never goes through
_GDINO_UNUSED_TARGETS = re.compile(rf"^{re.escape(_SWIN)}\.swin\.layernorm\.(weight|bias)$")


def _swin_shape(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Swin backbone sizes read off the official keys: width, depths, heads and window per stage."""
    blocks: dict[int, int] = {}
    for key in state_dict:
        if m := re.match(r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.", key):
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    depths = [blocks[i] for i in range(len(blocks))]
    tables = [
        state_dict[f"backbone.0.layers.{i}.blocks.0.attn.relative_position_bias_table"]
        for i in range(len(depths))
    ]
    patch = state_dict["backbone.0.patch_embed.proj.weight"]
    embed_dim = int(patch.shape[0])
    return {
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": [int(t.shape[1]) for t in tables],
        "window_size": (round(int(tables[0].shape[0]) ** 0.5) + 1) // 2,
        "patch_size": int(patch.shape[-1]),
        "mlp_ratio": int(state_dict["backbone.0.layers.0.blocks.0.mlp.fc1.weight"].shape[0]) / embed_dim,
        "out_indices": sorted(
            int(m.group(1)) + 1 for k in state_dict if (m := re.match(r"backbone\.0\.norm(\d)\.weight$", k))
        ),
    }


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = [int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def _gdino_config(state_dict: Mapping[str, torch.Tensor], text_config: Any | None) -> Any:
    """Grounding DINO config from the tensor shapes.

    Not recoverable from shapes: how the deformable attention's ``heads × points`` split (the official configs
    all use 4 sampling points, so heads = rows / levels / 4), and BERT's head count (taken from the text
    encoder's config when it has one, else ``hidden / 64`` as in every BERT release).
    """
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = _swin_shape(state_dict)
    outputs: dict[str, Any] = {
        "out_indices": swin["out_indices"]
    }  # a property on the config: pass as a mapping
    backbone = SwinConfig(
        embed_dim=swin["embed_dim"],
        depths=swin["depths"],
        num_heads=swin["num_heads"],
        window_size=swin["window_size"],
        patch_size=swin["patch_size"],
        mlp_ratio=swin["mlp_ratio"],
        image_size=384 if swin["window_size"] == 12 else 224,
        **outputs,
    )
    words = state_dict["bert.embeddings.word_embeddings.weight"]
    hidden = int(words.shape[1])
    text: dict[str, Any] = {
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": _count(state_dict, r"bert\.encoder\.layer\.(\d+)\."),
        "intermediate_size": int(state_dict["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(state_dict["bert.embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state_dict["bert.embeddings.token_type_embeddings.weight"].shape[0]),
        "num_attention_heads": max(1, hidden // 64),
    }
    if text_config is not None and getattr(text_config, "model_type", None) == "bert":
        if int(text_config.hidden_size) != hidden:
            raise CheckpointError(
                f"the text encoder's config has hidden size {text_config.hidden_size}, the checkpoint's BERT {hidden}"
            )
        text["num_attention_heads"] = int(text_config.num_attention_heads)
        text["layer_norm_eps"] = float(text_config.layer_norm_eps)
        text["hidden_act"] = text_config.hidden_act
    level_embed = state_dict["transformer.level_embed"]
    levels, d_model = int(level_embed.shape[0]), int(level_embed.shape[1])
    points = 4

    def heads(key: str) -> int:
        rows = int(state_dict[key].shape[0])
        if rows % (levels * points):
            raise CheckpointError(
                f"{key} has {rows} rows, not a multiple of {levels} levels × {points} points"
            )
        return rows // (levels * points)

    last = _count(state_dict, r"bbox_embed\.(\d+)\.") - 1
    shared_box_head = torch.equal(
        state_dict["bbox_embed.0.layers.0.weight"], state_dict[f"bbox_embed.{last}.layers.0.weight"]
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=BertConfig(**text),
        d_model=d_model,
        num_feature_levels=levels,
        num_queries=int(state_dict["transformer.tgt_embed.weight"].shape[0]),
        encoder_layers=_count(state_dict, r"transformer\.encoder\.layers\.(\d+)\."),
        decoder_layers=_count(state_dict, r"transformer\.decoder\.layers\.(\d+)\."),
        encoder_ffn_dim=int(state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0]),
        decoder_ffn_dim=int(state_dict["transformer.decoder.layers.0.linear1.weight"].shape[0]),
        encoder_attention_heads=heads("transformer.encoder.layers.0.self_attn.attention_weights.weight"),
        decoder_attention_heads=heads("transformer.decoder.layers.0.cross_attn.attention_weights.weight"),
        encoder_n_points=points,
        decoder_n_points=points,
        decoder_bbox_embed_share=shared_box_head,
    )


def _rename_gdino(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _GDINO_DROPPED.search(key):
            continue
        new = key
        for pattern, replacement in _GDINO_RENAMES:
            new = re.sub(pattern, replacement, new)
        if m := re.match(r"BACKBONE_NORM_(\d)\.(.*)$", new):  # official norm{i} follows stage i+1
            new = f"{_SWIN}.hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}"
        if m := re.match(r"(.*)\.(?:attention\.qkv\.|in_proj_)(weight|bias)$", new):
            base, kind = m.groups()
            names = ("q_proj", "k_proj", "v_proj") if ".attention.qkv." in new else ("query", "key", "value")
            prefix = f"{base}.attention." if ".attention.qkv." in new else f"{base}."
            for name, part in zip(names, value.chunk(3, dim=0), strict=True):
                out[f"{prefix}{name}.{kind}"] = part.clone()
            continue
        out[new] = value
    return out


def _load_gdino(state_dict: Mapping[str, torch.Tensor], text_config: Any | None = None) -> Any:
    from transformers import GroundingDinoForObjectDetection

    config = _gdino_config(state_dict, text_config)
    model = GroundingDinoForObjectDetection(config).eval()
    renamed = _rename_gdino(state_dict)
    own = model.state_dict()
    for key in own:  # not in the official files, and never used on the backbone's output path
        if _GDINO_UNUSED_TARGETS.match(key):
            renamed[key] = own[key]
    expected = set(own)
    missing, unused = sorted(expected - set(renamed)), sorted(set(renamed) - expected)
    if missing or unused:
        raise CheckpointError(
            f"checkpoint does not match the Grounding DINO layout: missing {missing[:5]}, unused {unused[:5]}"
        )
    wrong = [k for k in expected if renamed[k].shape != own[k].shape]
    if wrong:
        k = sorted(wrong)[0]
        raise CheckpointError(
            f"checkpoint tensor {k} has shape {tuple(renamed[k].shape)}, expected {tuple(own[k].shape)}"
        )
    model.load_state_dict(renamed, strict=True)
    return model


def _text_encoder(source: str | Path | None, checkpoint: str) -> tuple[Any, Any | None]:
    """The BERT tokenizer (and config, when the source has one) for a Grounding DINO checkpoint."""
    from transformers import AutoConfig, AutoTokenizer

    from grounded.models.hub import ModelSourceError, load_pretrained

    source = str(source or os.environ.get(TEXT_ENCODER_ENV) or DEFAULT_TEXT_ENCODER)
    folder = Path(source).expanduser()
    try:
        if folder.is_dir():  # a tokenizer folder needs no model config.json
            tokenizer = AutoTokenizer.from_pretrained(folder)
            config = AutoConfig.from_pretrained(folder) if (folder / "config.json").is_file() else None
        else:
            tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "text encoder")
            config = load_pretrained(AutoConfig.from_pretrained, source, "text encoder")
    except (ModelSourceError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{checkpoint} is a Grounding DINO checkpoint: it holds the BERT text encoder's weights but not its "
            f"tokenizer, which could not be loaded from {source!r} ({reason}). Download it on a connected "
            f"machine (`hf download {DEFAULT_TEXT_ENCODER} --local-dir DIR`) and pass DIR as the text encoder "
            f"(`grounded convert --text-encoder DIR`, or {TEXT_ENCODER_ENV}=DIR)"
        ) from None
    return tokenizer, config


# ------------------------------------------------------------------------------------------------ entry points
#: the file that marks a folder written by :func:`convert_checkpoint` (which may replace such a folder)
CONVERSION_MARKER = "grounded_conversion.json"


def check_conversion_target(checkpoint: Path, out: Path) -> None:
    """Refuse (one line) an ``out`` that a conversion may not replace: anything but a missing path, an empty
    folder or a previous conversion; never ``.``, ``..``, a link, the current folder, or a folder holding
    ``checkpoint``."""
    from grounded.core.errors import UserError

    def refuse(why: str) -> UserError:
        return UserError(f"cannot convert to {out}: {why}; choose a new folder")

    if out.name in ("", ".", ".."):
        raise refuse("give the name of the folder to write, not . or ..")
    target = out.resolve()
    holders = {Path.cwd().resolve(), *Path.cwd().resolve().parents}
    if target == checkpoint.resolve().parent or target in checkpoint.resolve().parents:
        raise refuse("it holds the checkpoint")
    if target in holders:
        raise refuse("it holds the current folder")
    if out.is_symlink():
        raise refuse("it is a link")
    if not out.exists():
        return
    if not out.is_dir():
        raise refuse("it exists and is not a folder")
    content = sorted(p.name for p in out.iterdir())
    if content and CONVERSION_MARKER not in content:
        shown = ", ".join(content[:3]) + (", ..." if len(content) > 3 else "")
        raise refuse(f"it holds other files ({shown}), not a grounded conversion")


def _save_sam2(state_dict: dict[str, torch.Tensor], folder: Path, image_size: int | None) -> None:
    """SAM 2 / 2.1: the video model (``Sam2VideoModel``) and its processor at the image size."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    from grounded.models.sam2_checkpoint import Sam2CheckpointError, load_sam2_video

    side = int(image_size or 1024)
    try:
        model = load_sam2_video(state_dict, side)
    except Sam2CheckpointError as exc:
        raise CheckpointError(str(exc)) from None
    model.save_pretrained(folder)
    square = {"height": side, "width": side}
    Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=square, mask_size={"height": side // 4, "width": side // 4}),
        video_processor=Sam2VideoVideoProcessor(size=square),
        target_size=side,
    ).save_pretrained(folder)


def _save(
    state_dict: dict[str, torch.Tensor],
    variant: str,
    folder: Path,
    text_encoder: Any,
    name: str,
    image_size: int | None = None,
) -> None:
    """Write the model and processor of ``state_dict`` (of ``variant``) into ``folder``."""
    from transformers import SamHQProcessor, SamImageProcessorPil, SamProcessor

    if variant in ("sam2", "sam2.1"):
        _save_sam2(state_dict, folder, image_size)
        return

    if variant.startswith("grounding_dino"):
        from transformers import GroundingDinoImageProcessorPil, GroundingDinoProcessor

        tokenizer, text_config = _text_encoder(text_encoder, name)
        model = _load_gdino(state_dict, text_config)
        if len(tokenizer) != model.config.text_config.vocab_size:
            raise CheckpointError(
                f"the text encoder's tokenizer has {len(tokenizer)} tokens, the checkpoint's BERT embeds "
                f"{model.config.text_config.vocab_size}: use the tokenizer the checkpoint was trained with"
            )
        model.save_pretrained(folder)
        # the official load_image resizes the PIL image (shorter side 800, longer at most 1333): the PIL
        # backend does the same, so converted files see the pixels the official code sees
        GroundingDinoProcessor(
            image_processor=GroundingDinoImageProcessorPil(), tokenizer=tokenizer
        ).save_pretrained(folder)
        return
    hq = variant.startswith("sam_hq")
    if variant.endswith("_tinyvit"):  # no transformers TinyViT: our port, rebuilt by the SAM adapter
        from grounded.models.tinyvit import save_tinyvit_sam

        model = _load_sam_tinyvit(state_dict, hq=hq)
        save_tinyvit_sam(model, folder)
    else:
        model = _load_sam(state_dict, hq=hq)
        model.save_pretrained(folder)
    size = int(model.config.vision_config.image_size)
    # the PIL backend resizes exactly as the official ResizeLongestSide does (the torchvision one differs
    # by up to 0.02 in normalised pixel values), so converted files give the official results
    image_processor = SamImageProcessorPil(
        size={"longest_edge": size}, pad_size={"height": size, "width": size}
    )
    (SamHQProcessor if hq else SamProcessor)(image_processor=image_processor).save_pretrained(folder)


def _install(tmp: Path, out: Path, checkpoint: Path, replace: bool) -> None:
    """Move the finished conversion ``tmp`` to ``out``; a previous conversion there is replaced (``replace``)
    or kept (``tmp`` discarded)."""
    import shutil

    from grounded.core.files import make_temp_dir

    check_conversion_target(checkpoint, out)  # again: the conversion took a while
    if not out.exists():
        os.rename(tmp, out)
        return
    if not replace and (out / CONVERSION_MARKER).is_file():
        shutil.rmtree(tmp)
        return
    old = make_temp_dir(out.parent)
    os.replace(
        out, old
    )  # out is empty or a conversion: renamed aside, never deleted before the new one is in
    os.rename(tmp, out)
    shutil.rmtree(old)


def convert_checkpoint(
    path: str | Path,
    out_dir: str | Path,
    text_encoder: str | Path | None = None,
    image_size: int | None = None,
) -> Path:
    """Convert an official checkpoint to a transformers-format folder (model + processor) at ``out_dir``.

    MobileSAM / Light HQ-SAM (TinyViT encoder, which transformers lacks) give a folder that grounded's SAM
    adapter loads (:mod:`grounded.models.tinyvit`: config.json + ``tinyvit_sam.safetensors``), not plain ``AutoModel``.

    ``text_encoder`` (Grounding DINO only): hub id or local folder of the BERT tokenizer the official files
    leave out; default ``$GROUNDED_TEXT_ENCODER``, else ``bert-base-uncased``.

    The folder is written beside ``out_dir`` under a temporary name, marked with :data:`CONVERSION_MARKER`,
    then renamed into place: ``out_dir`` must be missing, an empty folder or a previous conversion
    (:func:`check_conversion_target`); anything else is refused before the checkpoint is read.

    ``image_size`` (SAM 2 only, default 1024 as in every official config): the square input side, which the
    file does not record.
    """
    return _convert(Path(path), Path(out_dir), text_encoder, replace=True, image_size=image_size)


def _convert(
    path: Path, out: Path, text_encoder: str | Path | None, *, replace: bool, image_size: int | None = None
) -> Path:
    import shutil

    from grounded.core.files import OutputFolder, atomic_write_text, compact_json, make_temp_dir

    check_conversion_target(path, out)
    state_dict = read_state_dict(path)
    variant = detect_variant(state_dict)
    with OutputFolder(out.parent, "output folder") as parent:
        tmp = make_temp_dir(parent.path)
        try:
            _save(state_dict, variant, tmp, text_encoder, path.name, image_size)
            marker = {"source": path.name, "variant": variant}
            atomic_write_text(tmp / CONVERSION_MARKER, compact_json(marker))
            _install(tmp, out, path, replace)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def converted_folder(path: str | Path) -> Path:
    """A cached transformers-format folder for an official checkpoint (converted on first use).

    Grounding DINO files take their tokenizer from ``$GROUNDED_TEXT_ENCODER`` (default ``bert-base-uncased``).
    """
    path = Path(path)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if os.environ.get(TEXT_ENCODER_ENV):  # the tokenizer is part of a converted Grounding DINO folder
        key += f"|{os.environ[TEXT_ENCODER_ENV]}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    from grounded.models.hub import cache_folder, writable_folder

    root = cache_folder("converted")  # $GROUNDED_CACHE
    folder = root / f"{path.stem}-{digest}"
    if not (folder / "config.json").is_file():
        writable_folder(root)  # an unwritable cache: one line naming it and the variable
        _convert(path, folder, None, replace=False)  # another process's conversion meanwhile: kept
    return folder
