"""Loading Semantic-SAM: official ``.pth`` files (key mapping, sizes read from the tensors) and our own folders.

The official files (``swint_only_sam_many2many.pth``, ``swinl_only_sam_many2many.pth``) hold the state dict of
the official ``BaseModel`` wrapper: keys ``model.backbone.*``, ``model.sem_seg_head.pixel_decoder.*`` and
``model.sem_seg_head.predictor.*`` (sometimes inside ``{"model": ...}``). The mapping is a prefix rename; the
box head, shared by every decoder layer, is stored three times (``_bbox_embed``, ``bbox_embed.{i}``,
``decoder.bbox_embed.{i}``) and the decoder's output norm twice (``decoder_norm``, ``decoder.norm``): one copy is
kept after checking the others are equal. Swin's ``relative_position_index`` buffers are recomputed, training-only
state (``criterion.*``) is dropped; any other unknown key is an error, and every parameter must be filled.

Our folder format: ``config.json`` (``{"model_type": "semantic_sam", ...sizes}``) + ``model.safetensors``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from grounded.models.checkpoints import CheckpointError, read_state_dict
from grounded.models.semantic_sam.config import SemanticSamConfig, TextEncoderConfig
from grounded.models.semantic_sam.model import SemanticSamModel

__all__ = [
    "MODEL_TYPE",
    "config_from_official",
    "convert_official_state_dict",
    "is_official_semantic_sam",
    "load_semantic_sam",
    "save_semantic_sam",
    "to_official_state_dict",
]

MODEL_TYPE = "semantic_sam"
WEIGHTS_NAME = "model.safetensors"
_PREFIXES = (
    ("backbone.", "backbone."),
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.predictor.lang_encoder.", "text."),
    ("sem_seg_head.predictor.", "predictor."),
)
_IGNORED = re.compile(r"^criterion\.|\.relative_position_index$|^pixel_(mean|std)$")
_ALIASES = re.compile(r"^sem_seg_head\.predictor\.((decoder\.)?bbox_embed\.\d+|decoder\.norm)\.")
_MARKER = "sem_seg_head.predictor.mask_tokens.weight"


def _strip_wrapper(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``model.`` prefix of the official BaseModel wrapper (and ``module.`` of DDP)."""
    out = dict(state_dict)
    for prefix in ("module.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def is_official_semantic_sam(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the keys are those of an official Semantic-SAM checkpoint."""
    return _MARKER in _strip_wrapper(state_dict)


def _count(keys: set[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def config_from_official(state_dict: Mapping[str, torch.Tensor], nheads: int = 8) -> SemanticSamConfig:
    """The model sizes, read from the tensor shapes. The attention head count is not visible in the shapes:
    it is ``nheads`` (8 in both official configs), and the sampling points per head follow from it."""
    sd = _strip_wrapper(state_dict)
    if _MARKER not in sd:
        raise CheckpointError(f"not a Semantic-SAM checkpoint (no {_MARKER!r})")
    keys = set(sd)
    stages = _count(keys, r"backbone\.layers\.(\d+)\.")
    depths = [_count(keys, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    heads = [
        int(sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1])
        for i in range(stages)
    ]
    table = int(sd["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])
    patch = sd["backbone.patch_embed.proj.weight"]
    pd, pr = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    levels = int(sd[pd + "transformer.level_embed"].shape[0])
    offsets = int(sd[pd + "transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0])
    text = None
    if pr + "lang_encoder.lang_proj" in sd:
        tok = sd[pr + "lang_encoder.lang_encoder.token_embedding.weight"]
        text = TextEncoderConfig(
            vocab_size=int(tok.shape[0]),
            context_length=int(sd[pr + "lang_encoder.lang_encoder.positional_embedding"].shape[0]),
            width=int(tok.shape[1]),
            layers=_count(keys, rf"{re.escape(pr)}lang_encoder\.lang_encoder\.resblocks\.(\d+)\."),
            heads=nheads,
        )
    return SemanticSamConfig(
        embed_dim=int(patch.shape[0]),
        depths=depths,
        num_heads=heads,
        window_size=(round(table**0.5) + 1) // 2,
        patch_size=int(patch.shape[-1]),
        mlp_ratio=sd["backbone.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / patch.shape[0],
        conv_dim=int(sd[pd + "mask_features.weight"].shape[1]),
        mask_dim=int(sd[pd + "mask_features.weight"].shape[0]),
        encoder_layers=_count(keys, rf"{re.escape(pd)}transformer\.encoder\.layers\.(\d+)\."),
        num_feature_levels=levels,
        hidden_dim=int(sd[pr + "mask_tokens.weight"].shape[1]),
        nheads=nheads,
        dim_feedforward=int(sd[pr + "decoder.layers.0.linear1.weight"].shape[0]),
        decoder_layers=_count(keys, rf"{re.escape(pr)}decoder\.layers\.(\d+)\."),
        n_points=offsets // (nheads * levels * 2),
        num_mask_tokens=int(sd[pr + "mask_tokens.weight"].shape[0]),
        dim_proj=int(sd[pr + "class_embed"].shape[1]),
        text_encoder=text,
    )


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys → ours (see the module docstring); raises :class:`CheckpointError` on unknown keys."""
    sd = _strip_wrapper(state_dict)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    aliases = {}
    for key, value in sd.items():
        if _IGNORED.search(key):
            continue
        if _ALIASES.match(key):
            aliases[key] = value
            continue
        key = key.replace("sem_seg_head.predictor._bbox_embed.", "sem_seg_head.predictor.bbox_embed.")
        for old, new in _PREFIXES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} unexpected key(s) for Semantic-SAM, e.g. {', '.join(sorted(unknown)[:3])}"
        )
    for key, value in aliases.items():  # the shared copies must equal the one kept
        tail = re.sub(
            r"^sem_seg_head\.predictor\.((decoder\.)?bbox_embed\.\d+)\.", "predictor.bbox_embed.", key
        )
        tail = tail.replace("sem_seg_head.predictor.decoder.norm.", "predictor.decoder_norm.")
        if tail not in out or not torch.equal(out[tail], value):
            raise CheckpointError(f"{key} should be a shared copy of {tail}, but differs from it")
    return out


def to_official_state_dict(model: SemanticSamModel) -> dict[str, torch.Tensor]:
    """Our weights under the official key names, shared copies and Swin index buffers included, exactly as the
    official ``BaseModel(...).state_dict()`` lists them (used to build official-format test files)."""
    ours = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    back = [(new, old) for old, new in _PREFIXES]
    for key, value in ours.items():
        for new, old in back:
            if key.startswith(new):
                official = old + key[len(new) :]
                break
        else:  # pragma: no cover - every module is under one of the prefixes
            raise AssertionError(key)
        if official.startswith("sem_seg_head.predictor.bbox_embed."):
            tail = official[len("sem_seg_head.predictor.bbox_embed.") :]
            out["sem_seg_head.predictor._bbox_embed." + tail] = value
            for i in range(model.config.decoder_layers):
                out[f"sem_seg_head.predictor.bbox_embed.{i}.{tail}"] = value
                out[f"sem_seg_head.predictor.decoder.bbox_embed.{i}.{tail}"] = value
            continue
        out[official] = value
        if official.startswith("sem_seg_head.predictor.decoder_norm."):
            out["sem_seg_head.predictor.decoder.norm." + official.rsplit(".", 1)[1]] = value
    for name, module in model.backbone.named_modules():
        index = getattr(module, "relative_position_index", None)
        if isinstance(index, torch.Tensor):
            out[f"backbone.{name}.relative_position_index"] = index.clone()
    return {"model." + k: v for k, v in out.items()}


def save_semantic_sam(model: SemanticSamModel, folder: str | Path) -> Path:
    """Write our folder format (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": MODEL_TYPE, **model.config.to_dict()}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_NAME))
    return folder


def _load_strict(model: SemanticSamModel, weights: Mapping[str, torch.Tensor], origin: str) -> None:
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or extra:
        raise CheckpointError(
            f"{origin} does not match the Semantic-SAM model it describes: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})"
        )
    for key, value in model.state_dict().items():
        if value.shape != weights[key].shape:
            raise CheckpointError(
                f"{origin}: {key} has shape {tuple(weights[key].shape)}, expected {tuple(value.shape)}"
            )
    model.load_state_dict(dict(weights), strict=True)


def load_semantic_sam(source: str | Path) -> SemanticSamModel:
    """A Semantic-SAM model (eval mode, CPU) from an official ``.pth`` file or one of our folders."""
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"Semantic-SAM folder {path} has no config.json")
        data = json.loads(config_file.read_text())
        if data.get("model_type") != MODEL_TYPE:
            raise CheckpointError(
                f"{path} holds a {data.get('model_type')!r} model, not a Semantic-SAM one ({MODEL_TYPE!r})"
            )
        if not (path / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"Semantic-SAM folder {path} has no {WEIGHTS_NAME}")
        from safetensors.torch import load_file

        model = SemanticSamModel(SemanticSamConfig.from_dict(data))
        _load_strict(model, load_file(str(path / WEIGHTS_NAME)), str(path))
        return model.eval()
    if not path.exists():
        raise CheckpointError(f"Semantic-SAM checkpoint {path} does not exist")
    state_dict = read_state_dict(path)
    if not is_official_semantic_sam(state_dict):
        raise CheckpointError(
            f"{path.name} is not a Semantic-SAM checkpoint (expected the official keys, e.g. "
            f"'model.{_MARKER}', as in swint_only_sam_many2many.pth / swinl_only_sam_many2many.pth)"
        )
    model = SemanticSamModel(config_from_official(state_dict))
    _load_strict(model, convert_official_state_dict(state_dict), path.name)
    return model.eval()
