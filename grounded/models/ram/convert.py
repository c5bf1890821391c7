"""Official Recognize Anything checkpoints (``ram_swin_large_14m.pth``, ``ram_plus_swin_large_14m.pth``) → our
:class:`~grounded.models.ram.model.RamModel` weights.

The official files hold the whole training model: the Swin encoder (``visual_encoder.*``), ``image_proj``,
``label_embed``, the tagging head (a BERT whose layers only use their cross-attention and feed-forward parts,
``tagging_head.encoder.layer.N.*``; ``vision_multi.*`` in older files), ``wordvec_proj``, ``fc`` and, for RAM++,
``reweight_scale``; plus the Tag2Text captioning branch (``tag_encoder.*``, ``text_decoder.*``) and Swin's
index / mask buffers, which tagging does not use and which are dropped. Everything else must map one to one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from grounded.models.ram.config import RamConfig

__all__ = [
    "EXPECTED_FILES",
    "RamCheckpointError",
    "config_from_official_state_dict",
    "convert_official_state_dict",
    "is_official_ram",
    "to_official_state_dict",
]

EXPECTED_FILES = (
    "an official Recognize Anything checkpoint: ram_swin_large_14m.pth (RAM) or ram_plus_swin_large_14m.pth "
    "(RAM++), from https://huggingface.co/xinyu1205/recognize_anything_model or "
    "https://huggingface.co/xinyu1205/recognize-anything-plus-model"
)


class RamCheckpointError(ValueError):
    """A file that is not an official RAM / RAM++ checkpoint, or one whose weights do not fit."""


_REQUIRED = (
    "visual_encoder.patch_embed.proj.weight",
    "image_proj.weight",
    "label_embed",
    "fc.weight",
    "tagging_head.encoder.layer.0.crossattention.self.query.weight",
)
# parts of the training model that tagging never runs (Tag2Text's captioning branch, Swin's cached buffers, the
# head's unused BERT embeddings and self-attention)
_DROPPED = re.compile(
    r"^(tag_encoder|text_decoder)\."
    r"|\.(relative_position_index|attn_mask)$"
    r"|^tagging_head\.(embeddings\.|encoder\.layer\.\d+\.attention\.)"
)
_RENAMES: list[tuple[str, str]] = [
    # Swin encoder → transformers' SwinModel
    (r"^visual_encoder\.patch_embed\.proj\.", "vision.embeddings.patch_embeddings.projection."),
    (r"^visual_encoder\.patch_embed\.norm\.", "vision.embeddings.norm."),
    (r"^visual_encoder\.layers\.", "vision.encoder.layers."),
    (r"^visual_encoder\.norm\.", "vision.layernorm."),
    (r"(\.blocks\.\d+)\.norm1\.", r"\1.layernorm_before."),
    (r"(\.blocks\.\d+)\.norm2\.", r"\1.layernorm_after."),
    (
        r"\.attn\.relative_position_bias_table$",
        ".attention.relative_position_bias.relative_position_bias_table",
    ),
    (r"\.attn\.proj\.", ".attention.o_proj."),
    (r"\.attn\.qkv\.", ".attention.qkv."),  # split below
    # tagging head
    (r"^tagging_head\.encoder\.layer\.(\d+)\.crossattention\.self\.query\.", r"head.layers.\1.q_proj."),
    (r"^tagging_head\.encoder\.layer\.(\d+)\.crossattention\.self\.key\.", r"head.layers.\1.k_proj."),
    (r"^tagging_head\.encoder\.layer\.(\d+)\.crossattention\.self\.value\.", r"head.layers.\1.v_proj."),
    (r"^tagging_head\.encoder\.layer\.(\d+)\.crossattention\.output\.dense\.", r"head.layers.\1.o_proj."),
    (
        r"^tagging_head\.encoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.",
        r"head.layers.\1.attn_norm.",
    ),
    (r"^tagging_head\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"head.layers.\1.fc1."),
    (r"^tagging_head\.encoder\.layer\.(\d+)\.output\.dense\.", r"head.layers.\1.fc2."),
    (r"^tagging_head\.encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"head.layers.\1.ffn_norm."),
    (r"^wordvec_proj\.", "label_proj."),
    (r"^fc\.", "classifier."),
]


def _normalise(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older files name the tagging head ``vision_multi`` (the original loader renames it too)."""
    return {k.replace("vision_multi.", "tagging_head.", 1): v for k, v in state_dict.items()}


def is_official_ram(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the keys are those of an official RAM / RAM++ checkpoint."""
    return set(_REQUIRED) <= set(_normalise(state_dict))


def _check(state_dict: Mapping[str, torch.Tensor]) -> None:
    if is_official_ram(state_dict):
        return
    keys = set(state_dict)
    if "label_embed.weight" in keys and "fc.W" in keys:
        raise RamCheckpointError(
            f"this is a Tag2Text checkpoint, which is not supported; expected {EXPECTED_FILES}"
        )
    sample = ", ".join(sorted(keys)[:4]) or "no keys"
    raise RamCheckpointError(f"unrecognised checkpoint (keys {sample}, ...); expected {EXPECTED_FILES}")


def _count(keys: Any, pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def config_from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_classes: int | None = None, image_size: int | None = None
) -> RamConfig:
    """The :class:`RamConfig` read off the tensor shapes.

    ``num_classes`` (the length of the tag list) is needed for RAM++, whose ``label_embed`` stacks
    ``num_classes × descriptions`` rows (default: 4585, the released tag list). ``image_size`` defaults to the
    size whose last Swin stage is one window wide (384 for the released window-12 models, 224 for window 7).
    Head counts are not in the shapes; the original always uses 4 in the tagging head.
    """
    _check(state_dict)
    sd = _normalise(state_dict)
    stages = _count(sd, r"visual_encoder\.layers\.(\d+)\.")
    depths = [_count(sd, rf"visual_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    tables = [
        sd[f"visual_encoder.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)
    ]
    patch = sd["visual_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    window = (round(int(tables[0].shape[0]) ** 0.5) + 1) // 2
    mlp = int(sd["visual_encoder.layers.0.blocks.0.mlp.fc1.weight"].shape[0])
    plus = "reweight_scale" in sd
    rows, text_dim = (int(s) for s in sd["label_embed"].shape)
    classes = num_classes if num_classes is not None else (4585 if plus else rows)
    if not plus and rows != classes:
        raise RamCheckpointError(f"this RAM checkpoint has {rows} tags, but the tag list has {classes}")
    if rows % classes:
        raise RamCheckpointError(
            f"this RAM++ checkpoint's label_embed has {rows} rows (tags × descriptions), not a multiple of "
            f"the tag list's {classes} tags"
        )
    hidden = int(sd["fc.weight"].shape[1])
    return RamConfig(
        variant="ram_plus" if plus else "ram",
        image_size=image_size or window * patch_size * 2 ** (stages - 1),
        patch_size=patch_size,
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(int(t.shape[1]) for t in tables),
        window_size=window,
        mlp_ratio=mlp / embed_dim,
        text_dim=text_dim,
        head_hidden_size=hidden,
        head_layers=_count(sd, r"tagging_head\.encoder\.layer\.(\d+)\.crossattention\."),
        head_heads=4,
        head_intermediate_size=int(sd["tagging_head.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        num_classes=classes,
        descriptions_per_class=rows // classes,
    )


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official state dict to :class:`~grounded.models.ram.model.RamModel`'s keys (unused parts dropped,
    Swin's fused ``qkv`` split into query / key / value). Keys it does not know are kept as they are, so a
    strict load reports them."""
    _check(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in _normalise(state_dict).items():
        if _DROPPED.search(key):
            continue
        new = key
        for pattern, replacement in _RENAMES:
            new = re.sub(pattern, replacement, new)
        if m := re.match(r"(.*)\.attention\.qkv\.(weight|bias)$", new):
            base, kind = m.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{base}.attention.{name}.{kind}"] = part.clone()
            continue
        out[new] = value
    return out


_INVERSE: list[tuple[str, str]] = [
    (r"^vision\.embeddings\.patch_embeddings\.projection\.", "visual_encoder.patch_embed.proj."),
    (r"^vision\.embeddings\.norm\.", "visual_encoder.patch_embed.norm."),
    (r"^vision\.encoder\.layers\.", "visual_encoder.layers."),
    (r"^vision\.layernorm\.", "visual_encoder.norm."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (
        r"\.attention\.relative_position_bias\.relative_position_bias_table$",
        ".attn.relative_position_bias_table",
    ),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"^head\.layers\.(\d+)\.q_proj\.", r"tagging_head.encoder.layer.\1.crossattention.self.query."),
    (r"^head\.layers\.(\d+)\.k_proj\.", r"tagging_head.encoder.layer.\1.crossattention.self.key."),
    (r"^head\.layers\.(\d+)\.v_proj\.", r"tagging_head.encoder.layer.\1.crossattention.self.value."),
    (r"^head\.layers\.(\d+)\.o_proj\.", r"tagging_head.encoder.layer.\1.crossattention.output.dense."),
    (r"^head\.layers\.(\d+)\.attn_norm\.", r"tagging_head.encoder.layer.\1.crossattention.output.LayerNorm."),
    (r"^head\.layers\.(\d+)\.fc1\.", r"tagging_head.encoder.layer.\1.intermediate.dense."),
    (r"^head\.layers\.(\d+)\.fc2\.", r"tagging_head.encoder.layer.\1.output.dense."),
    (r"^head\.layers\.(\d+)\.ffn_norm\.", r"tagging_head.encoder.layer.\1.output.LayerNorm."),
    (r"^label_proj\.", "wordvec_proj."),
    (r"^classifier\.", "fc."),
]


def to_official_state_dict(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_official_state_dict`: our keys → the official file's (tagging parts only;
    Swin's query / key / value fused back into ``qkv``). Used to write official-format test files."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        if m := re.match(r"^(vision\..*)\.attention\.([qkv])_proj\.(weight|bias)$", key):
            base, part, kind = m.groups()
            fused.setdefault(f"{base}.attention.qkv.{kind}", {})[part] = value
            continue
        new = key
        for pattern, replacement in _INVERSE:
            new = re.sub(pattern, replacement, new)
        out[new] = value.clone()
    for key, parts in fused.items():
        new = key
        for pattern, replacement in _INVERSE:
            new = re.sub(pattern, replacement, new)
        out[new.replace(".attention.qkv.", ".attn.qkv.")] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
