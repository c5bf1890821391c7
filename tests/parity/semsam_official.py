"""The official Semantic-SAM side of the parity test: run once to make ``semsam_reference.npz``.

Runs UX-Decoder/Semantic-SAM's own model code (``semantic_sam.architectures.build_model``, ``BaseModel``,
``GeneralizedMaskDINO.evaluate_demo`` - the path its ``SemanticSAMPredictor`` and automatic mask generator use) on
the CPU with random weights, and writes its outputs for ``tests/test_semantic_sam.py`` to compare ours with.

It needs an environment where the official package imports: its source tree (``SEMSAM_SRC``) and detectron2's
Python sources on ``sys.path``, plus timm, fvcore, kornia. Two CPU adaptations are made here and nowhere in the
official code: the compiled ``MultiScaleDeformableAttention`` module is replaced by a stub whose functions raise, so
the official ``MSDeformAttn`` takes its own pure-PyTorch fallback (``ms_deform_attn_core_pytorch``); and the
``.cuda()`` / ``.to("cuda")`` calls of the demo code are redirected to the CPU.

The weights are the official-format file that ``grounded.models.semantic_sam.testing.make_official_checkpoint`` writes
(``{"model.<official key>": tensor}``): the official ``BaseModel.from_pretrained`` loads it, and the script checks
that it filled every parameter of the official module tree and that no key went unused.

Usage: python tests/parity/semsam_official.py SEMSAM_SRC CHECKPOINT.pth OUT.npz
       python tests/parity/semsam_official.py --keys SEMSAM_SRC OUT.json.gz
The second form builds the official Swin-T and Swin-L module trees (random weights, nothing loaded) and writes
every state-dict key with its shape: ``semsam_official_keys.json.gz``, which the key-layout test checks against.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import types
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

#: the tiny preset of grounded.models.semantic_sam.config, as overrides of the official Swin-T config
TINY = {
    ("MODEL", "BACKBONE", "SWIN", "EMBED_DIM"): 16,
    ("MODEL", "BACKBONE", "SWIN", "DEPTHS"): [1, 1, 2, 1],
    ("MODEL", "BACKBONE", "SWIN", "NUM_HEADS"): [1, 2, 2, 4],
    ("MODEL", "BACKBONE", "SWIN", "WINDOW_SIZE"): 4,
    ("MODEL", "BACKBONE", "LOAD_PRETRAINED"): False,
    ("MODEL", "ENCODER", "CONVS_DIM"): 32,
    ("MODEL", "ENCODER", "MASK_DIM"): 32,
    ("MODEL", "ENCODER", "TRANSFORMER_ENC_LAYERS"): 1,
    ("MODEL", "DECODER", "HIDDEN_DIM"): 32,
    ("MODEL", "DECODER", "NHEADS"): 8,
    ("MODEL", "DECODER", "DIM_FEEDFORWARD"): 64,
    ("MODEL", "DECODER", "DEC_LAYERS"): 2,
    ("MODEL", "DIM_PROJ"): 24,
}
SHORT_SIDE = 72  # the demo resizes to a 640-pixel short side; small here to keep the reference arrays small
POINTS = [[0.5, 0.5], [0.2, 0.3], [0.8, 0.7], [0.35, 0.85], [0.65, 0.15]]  # relative x, y


def _cpu_only() -> None:
    stub = types.ModuleType("MultiScaleDeformableAttention")

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("compiled op not built: the official code falls back to PyTorch")

    stub.ms_deform_attn_forward = unavailable  # type: ignore[attr-defined]
    stub.ms_deform_attn_backward = unavailable  # type: ignore[attr-defined]
    sys.modules["MultiScaleDeformableAttention"] = stub
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    original_to = torch.Tensor.to

    def to_cpu(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        def fix(v: object) -> object:
            return "cpu" if isinstance(v, (str, torch.device)) and str(v).startswith("cuda") else v

        return original_to(self, *[fix(a) for a in args], **{k: fix(v) for k, v in kwargs.items()})

    torch.Tensor.to = to_cpu  # type: ignore[method-assign]


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted keys and their float32 bytes (the test checks its file has the same weights)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(src: str, checkpoint: str, out: str) -> None:
    sys.path.insert(0, src)
    _cpu_only()
    from PIL import Image
    from semantic_sam.architectures import build_model
    from semantic_sam.BaseModel import BaseModel
    from skimage import data
    from torchvision import transforms
    from utils.arguments import load_opt_from_config_file

    opt = load_opt_from_config_file(f"{src}/configs/semantic_sam_only_sa-1b_swinT.yaml")
    for path, value in TINY.items():
        node = opt
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    torch.manual_seed(0)
    model = BaseModel(opt, build_model(opt))
    expected = set(model.model.state_dict())
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    loaded = {k[len("model.") :] for k in state}
    if loaded != expected:
        raise SystemExit(
            f"key mismatch: missing {sorted(expected - loaded)[:5]}, unused {sorted(loaded - expected)[:5]}"
        )
    logging.disable(logging.WARNING)
    model = model.from_pretrained(checkpoint).eval()
    for key, value in model.model.state_dict().items():  # every tensor really came from the file
        assert torch.equal(value, state["model." + key]), key

    image = Image.fromarray(data.coffee())
    resized = np.asarray(transforms.Resize(SHORT_SIDE, interpolation=Image.BICUBIC)(image))
    pixels = torch.from_numpy(resized.copy()).permute(2, 0, 1)
    h, w = resized.shape[:2]
    results: dict[str, np.ndarray] = {"image": resized, "points": np.array(POINTS, np.float32)}

    def run(points: list[list[float]]) -> tuple[np.ndarray, np.ndarray, object]:
        rel = torch.tensor(points, dtype=torch.float32)
        anchors = torch.cat([rel, rel.new_tensor([[0.005, 0.005]]).repeat(len(rel), 1)], -1)
        batch = [
            {
                "image": pixels,
                "height": h,
                "width": w,
                "targets": [{"points": anchors, "pb": rel.new_zeros(len(rel))}],
            }
        ]
        with torch.no_grad():
            masks, ious, mask_features, maps = model.model.evaluate_demo(
                batch, return_features=True, level=list(range(6))
            )
        return masks.numpy(), ious.numpy(), (mask_features, maps)

    # one click, as SemanticSAMPredictor.predict: (6, h, w) logits and (1, 1, 6) IoU predictions
    masks, ious, (mask_features, maps) = run(POINTS[:1])
    results["single_masks"], results["single_iou"] = masks, ious
    results["mask_features"] = mask_features.numpy()
    for i, m in enumerate(maps):
        results[f"map{i}"] = m.numpy()
    # several clicks in one call, as the automatic mask generator batches them (clicks see each other)
    masks, ious, _ = run(POINTS)
    results["multi_masks"], results["multi_iou"] = masks.astype(np.float32), ious
    results["weights_sha256"] = np.array(weights_digest({k[len("model.") :]: v for k, v in state.items()}))
    np.savez_compressed(out, **results)
    print(f"wrote {out}: image {resized.shape}, single {results['single_masks'].shape}, multi {masks.shape}")


def dump_keys(src: str, out: str) -> None:
    import gzip
    import json

    sys.path.insert(0, src)
    _cpu_only()
    from semantic_sam.architectures import build_model
    from semantic_sam.BaseModel import BaseModel
    from utils.arguments import load_opt_from_config_file

    keys = {}
    for name, config in (("swin_t", "swinT"), ("swin_l", "swinL")):
        opt = load_opt_from_config_file(f"{src}/configs/semantic_sam_only_sa-1b_{config}.yaml")
        opt["MODEL"]["BACKBONE"]["LOAD_PRETRAINED"] = False
        state = BaseModel(opt, build_model(opt)).state_dict()
        keys[name] = {k: list(v.shape) for k, v in state.items()}
    with gzip.open(out, "wb", compresslevel=9) as f:
        f.write(json.dumps(keys, separators=(",", ":")).encode())
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)} keys" for k, v in keys.items()))


if __name__ == "__main__":
    if sys.argv[1] == "--keys":
        dump_keys(*sys.argv[2:4])
    else:
        main(*sys.argv[1:4])
