"""Write grounded's benchmark models (random weights) as official checkpoint files, for the anchor path.

The speed comparison of issue 8 runs the official code (``benchmarks/anchor_path.py``, in ``.parity-venv``) and
grounded on identical weights. grounded's benchmark keeps its random-weight models as transformers folders
(``grounded.tasks.bench._models``: Grounding DINO Swin-T + BERT-base, SAM ViT-B); this script writes the same
weights in the released files' layouts:

- ``groundingdino_swint_ogc.pth``: ``{"model": {"module.<key>": tensor}}`` (the key inverse is the independent
  one ``tests/test_checkpoints_gdino.py`` tests the forward mapping with)
- ``sam_vit_b.pth`` (``sam_hq_vit_b.pth`` with ``--hq``): a plain state dict, segment-anything's keys
- ``bert/``: the tokenizer, BERT config and BERT weights for ``groundingdino-py``'s ``text_encoder_type``

Each written file is read back through ``grounded.models.checkpoints`` and must give back every tensor unchanged.

Run (grounded's venv): ``.venv/bin/python benchmarks/anchor_weights.py [--hq] [--out DIR]`` (or
``--detector DIR --segmenter DIR`` for other folders); prints one JSON line with the paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

# transformers' SAM / HQ-SAM layout → segment-anything's (and sam-hq's), applied in order: the inverse of
# grounded.models.checkpoints._SAM_RENAMES (specific conv / norm names before the generic ``layer_norm<i>`` rule)
SAM_INVERSE: list[tuple[str, str]] = [
    (r"^vision_encoder\.layers\.", "image_encoder.blocks."),
    (r"^vision_encoder\.", "image_encoder."),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"\.neck\.conv1\.", ".neck.0."),
    (r"\.neck\.layer_norm1\.", ".neck.1."),
    (r"\.neck\.conv2\.", ".neck.2."),
    (r"\.neck\.layer_norm2\.", ".neck.3."),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (
        r"^prompt_encoder\.shared_embedding\.positional_embedding$",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (r"\.mask_embed\.conv1\.", ".mask_downscaling.0."),
    (r"\.mask_embed\.layer_norm1\.", ".mask_downscaling.1."),
    (r"\.mask_embed\.conv2\.", ".mask_downscaling.3."),
    (r"\.mask_embed\.layer_norm2\.", ".mask_downscaling.4."),
    (r"\.mask_embed\.conv3\.", ".mask_downscaling.6."),
    (r"\.upscale_conv1\.", ".output_upscaling.0."),
    (r"\.upscale_layer_norm\.", ".output_upscaling.1."),
    (r"\.upscale_conv2\.", ".output_upscaling.3."),
    # three-layer MLPs: the middle layer first, so that proj_in can take index 0
    (r"(mlps\.\d+|iou_prediction_head|hq_mask_mlp)\.layers\.0\.", r"\1.layers.1."),
    (r"(mlps\.\d+|iou_prediction_head|hq_mask_mlp)\.proj_in\.", r"\1.layers.0."),
    (r"(mlps\.\d+|iou_prediction_head|hq_mask_mlp)\.proj_out\.", r"\1.layers.2."),
    # HQ-SAM's extra decoder parts
    (r"\.hq_token\.", ".hf_token."),
    (r"\.hq_mask_mlp\.", ".hf_mlp."),
    (r"\.compress_vit_conv1\.", ".compress_vit_feat.0."),
    (r"\.compress_vit_norm\.", ".compress_vit_feat.1."),
    (r"\.compress_vit_conv2\.", ".compress_vit_feat.3."),
    (r"\.encoder_conv1\.", ".embedding_encoder.0."),
    (r"\.encoder_norm\.", ".embedding_encoder.1."),
    (r"\.encoder_conv2\.", ".embedding_encoder.3."),
    (r"\.mask_conv1\.", ".embedding_maskfeature.0."),
    (r"\.mask_norm\.", ".embedding_maskfeature.1."),
    (r"\.mask_conv2\.", ".embedding_maskfeature.3."),
    (r"\.layer_norm(\d)\.", r".norm\1."),
    (r"\.layer_norm_final_attn\.", ".norm_final_attn."),
]


def sam_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``SamModel`` / ``SamHQModel`` state dict in segment-anything's (sam-hq's) key layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("shared_image_embedding."):
            continue  # transformers' copy of the prompt encoder's Gaussian matrix
        for pattern, replacement in SAM_INVERSE:
            key = re.sub(pattern, replacement, key)
        if key in out:
            raise ValueError(f"two SAM tensors map to the official key {key}")
        out[key] = value
    return out


def _gdino_to_official() -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """The Grounding DINO inverse mapping that tests/test_checkpoints_gdino.py keeps (reused, not duplicated)."""
    path = ROOT / "tests" / "test_checkpoints_gdino.py"
    spec = importlib.util.spec_from_file_location("_gdino_inverse", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.to_official


def write_gdino(folder: Path, out_dir: Path) -> tuple[Path, Path]:
    """``groundingdino_swint_ogc.pth`` and the ``bert/`` text-encoder folder from a transformers folder."""
    from transformers import AutoTokenizer, BertModel, GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection.from_pretrained(folder).eval()
    official = _gdino_to_official()(model.state_dict())
    path = out_dir / "groundingdino_swint_ogc.pth"
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}}, path)
    # groundingdino-py builds BERT with BertModel.from_pretrained(text_encoder_type) before the checkpoint
    # overwrites it: give it our weights (its pooler, which the official model never uses, stays random)
    bert_dir = out_dir / "bert"
    torch.manual_seed(0)
    bert = BertModel(model.config.text_config)
    missing, unexpected = bert.load_state_dict(model.model.text_backbone.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ValueError(f"BERT weights do not match: missing {missing}, unexpected {unexpected}")
    bert.save_pretrained(bert_dir)
    AutoTokenizer.from_pretrained(folder).save_pretrained(bert_dir)
    _check_gdino(model, path, bert_dir)
    return path, bert_dir


def _check_gdino(model: Any, path: Path, bert_dir: Path) -> None:
    """The written file, read back by grounded's official-file loader, holds exactly ``model``'s weights."""
    from transformers import AutoConfig

    from grounded.models.checkpoints import _load_gdino, read_state_dict

    back = _load_gdino(read_state_dict(path), AutoConfig.from_pretrained(bert_dir)).state_dict()
    _same(model.state_dict(), back, skip=r"\.swin\.layernorm\.")  # transformers-only, never used


def write_sam(folder: Path, out_dir: Path, hq: bool) -> Path:
    """``sam_vit_b.pth`` (``sam_hq_vit_b.pth``) from a transformers SAM / HQ-SAM folder."""
    from transformers import SamHQModel, SamModel

    from grounded.models.checkpoints import _load_sam, read_state_dict

    model = (SamHQModel if hq else SamModel).from_pretrained(folder).eval()
    path = out_dir / ("sam_hq_vit_b.pth" if hq else "sam_vit_b.pth")
    torch.save(sam_to_official(model.state_dict()), path)
    _same(model.state_dict(), _load_sam(read_state_dict(path), hq=hq).state_dict())
    return path


def _same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], skip: str | None = None) -> None:
    keys = {k for k in a if skip is None or not re.search(skip, k)}
    if keys != {k for k in b if skip is None or not re.search(skip, k)}:
        raise ValueError(f"key sets differ: {sorted(keys ^ set(b))[:5]}")
    differing = sorted(k for k in keys if not torch.equal(a[k], b[k]))
    if differing:
        raise ValueError(f"{len(differing)} tensors changed on the way back, e.g. {differing[0]}")


def write_official(
    detector: Path, segmenter: Path, out_dir: Path, hq_segmenter: Path | None = None
) -> dict[str, str]:
    """Write the official-format files for transformers folders; returns the anchor path's arguments."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gdino, bert = write_gdino(detector, out_dir)
    written = {"gdino_checkpoint": str(gdino), "text_encoder": str(bert)}
    written["sam_checkpoint"] = str(write_sam(segmenter, out_dir, hq=False))
    if hq_segmenter is not None:
        written["sam_hq_checkpoint"] = str(write_sam(hq_segmenter, out_dir, hq=True))
    return written


def main(argv: list[str] | None = None) -> int:
    from grounded.tasks.bench import _cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, help="Grounding DINO folder (default: grounded bench's)")
    parser.add_argument("--segmenter", type=Path, help="SAM folder (default: grounded bench's)")
    parser.add_argument("--hq", action="store_true", help="also write HQ-SAM (default: grounded bench's)")
    parser.add_argument("--hq-segmenter", type=Path, help="HQ-SAM folder (implies --hq)")
    parser.add_argument("--out", type=Path, help="output folder (default: <bench cache>/real-size/official)")
    args = parser.parse_args(argv)
    detector, segmenter, hq = args.detector, args.segmenter, args.hq_segmenter
    if detector is None or segmenter is None or (args.hq and hq is None):
        from grounded.tasks.bench import (
            _models,  # built on first use, exactly as `grounded bench` builds them
        )

        bench = _models(False)
        detector, segmenter = detector or bench[0], segmenter or bench[1]
        if args.hq and hq is None:
            hq = _models(False, hq=True)[1]
    out = args.out or _cache_dir() / "real-size" / "official"
    written = write_official(detector, segmenter, out, hq)
    print(json.dumps(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
