"""The official SAM 2 side of the parity test; runs in the SAM 2 venv (``tests/parity/make_sam2_venv.sh``).

Builds facebookresearch/sam2's ``SAM2VideoPredictor`` (``build_sam2_video_predictor`` on
``configs/sam2.1/sam2.1_hiera_t.yaml``, shrunk by hydra overrides for ``--size tiny``; real Hiera-T for
``--size hiera-t``), fills every tensor with :func:`sam2_weights.random_state_dict` (seeded, no weights are
committed), saves the official file format (``{"model": state_dict}``), loads it back through the official
``_load_checkpoint`` (strict), and runs the official video path on a synthetic clip written as JPEG files:
``init_state`` → ``add_new_points_or_box`` (object 1, a box on frame 0) → ``add_new_mask`` (object 2, a mask on
frame 0) → ``propagate_in_video``. Writes OUT.npz with the decoded frames, the prompts, the video-resolution mask
logits per frame and object, the object scores, and the weights' digest; ``--keys OUT.json.gz`` writes the
official keys and shapes of the tiny, Hiera-T 2.1 and Hiera-T 2.0 models instead.

Usage: python tests/parity/sam2_official.py [--size tiny|hiera-t] [--fp32-memory] OUT.npz [CHECKPOINT_OUT.pt]
       python tests/parity/sam2_official.py --keys OUT.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sam2_weights import random_state_dict, weights_digest

warnings.filterwarnings("ignore")
SEED = 0
CONFIG_21 = "configs/sam2.1/sam2.1_hiera_t.yaml"
CONFIG_20 = "configs/sam2/sam2_hiera_t.yaml"
TINY_IMAGE = 128
#: hydra overrides of sam2.1_hiera_t.yaml for the tiny model: Hiera 12 wide (same 1-2-7-2 layout as T), width
#: 128, memory 64 wide, 2 memory-attention layers, 3 memory frames, 128-pixel input
TINY = [
    f"++model.image_size={TINY_IMAGE}",
    "++model.num_maskmem=3",
    "++model.max_obj_ptrs_in_encoder=4",
    "++model.image_encoder.trunk.embed_dim=12",
    "++model.image_encoder.neck.d_model=128",
    "++model.image_encoder.neck.backbone_channel_list=[96,48,24,12]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=128",
    "++model.memory_attention.d_model=128",
    "++model.memory_attention.num_layers=2",
    "++model.memory_attention.layer.d_model=128",
    "++model.memory_attention.layer.dim_feedforward=256",
    "++model.memory_attention.layer.self_attention.embedding_dim=128",
    f"++model.memory_attention.layer.self_attention.feat_sizes=[{TINY_IMAGE // 16},{TINY_IMAGE // 16}]",
    "++model.memory_attention.layer.cross_attention.embedding_dim=128",
    f"++model.memory_attention.layer.cross_attention.feat_sizes=[{TINY_IMAGE // 16},{TINY_IMAGE // 16}]",
    "++model.memory_encoder.in_dim=128",
    "++model.memory_encoder.mask_downsampler.embed_dim=128",
    "++model.memory_encoder.fuser.layer.dim=128",
    "++model.memory_encoder.fuser.num_layers=1",
]
FRAMES, HEIGHT, WIDTH = 4, 96, 128
BOX = [20.0, 30.0, 56.0, 66.0]  # object 1 (the disk) on frame 0, x0 y0 x1 y1


def synthetic_clip() -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a disk moving right and a square moving down: (frames, square mask on 0)."""
    rng = np.random.RandomState(7)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    base = np.stack([60 + 40 * np.sin(xx / 9.0), 80 + 30 * np.cos(yy / 7.0), 90 + 0 * xx], -1)
    frames = []
    for t in range(FRAMES):
        img = base + rng.normal(0, 6, base.shape)
        disk = (xx - (38 + 6 * t)) ** 2 + (yy - 48) ** 2 < 17**2
        img[disk] = [230, 200, 40]
        y0 = 14 + 5 * t
        square = (xx >= 80) & (xx < 110) & (yy >= y0) & (yy < y0 + 28)
        img[square] = [40, 120, 220]
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    first = (xx >= 80) & (xx < 110) & (yy >= 14) & (yy < 42)
    return np.stack(frames), first


def build(size: str, checkpoint: str | None = None, config: str = CONFIG_21):
    from sam2.build_sam import build_sam2_video_predictor

    overrides = TINY if size == "tiny" else []
    return build_sam2_video_predictor(config, checkpoint, device="cpu", hydra_overrides_extra=overrides)


def shapes_of(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def fp32_memory() -> None:
    """Diagnostic (``--fp32-memory``): keep the memory features in float32 where the official code (like
    transformers) stores them as bfloat16, to see how much of the difference that rounding makes."""
    original = torch.Tensor.to

    def to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        args = tuple(torch.float32 if a is torch.bfloat16 else a for a in args)
        if kwargs.get("dtype") is torch.bfloat16:
            kwargs["dtype"] = torch.float32
        return original(self, *args, **kwargs)

    torch.Tensor.to = to  # type: ignore[method-assign]


def main(size: str, out: str, checkpoint_out: str | None) -> None:
    from PIL import Image

    shapes = shapes_of(build(size))
    state = random_state_dict(shapes, SEED)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint_out or str(Path(tmp) / "sam2.1_hiera_tiny.pt")
        torch.save({"model": state}, ckpt)
        predictor = build(size, ckpt)  # the official loader: strict, raises on missing / unexpected keys
        for key, value in predictor.state_dict().items():
            assert torch.equal(value, state[key]), key
        frames, square = synthetic_clip()
        folder = Path(tmp) / "frames"
        folder.mkdir()
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)
        decoded = np.stack(
            [np.asarray(Image.open(folder / f"{t:05d}.jpg").convert("RGB")) for t in range(FRAMES)]
        )
        with torch.inference_mode():
            state_ = predictor.init_state(str(folder))
            images = state_["images"].numpy()
            predictor.add_new_points_or_box(state_, frame_idx=0, obj_id=1, box=np.array(BOX, np.float32))
            predictor.add_new_mask(state_, frame_idx=0, obj_id=2, mask=square)
            logits = np.zeros((FRAMES, 2, HEIGHT, WIDTH), np.float32)
            for t, obj_ids, masks in predictor.propagate_in_video(state_):
                assert list(obj_ids) == [1, 2], obj_ids
                logits[t] = masks[:, 0].float().numpy()
            scores = np.zeros((FRAMES, 2), np.float32)
            for i in range(2):
                outputs = state_["output_dict_per_obj"][i]
                for t in range(FRAMES):
                    o = outputs["cond_frame_outputs"].get(t) or outputs["non_cond_frame_outputs"][t]
                    scores[t, i] = float(o["object_score_logits"].flatten()[0])
    np.savez_compressed(
        out,
        frames=decoded,
        box=np.array(BOX, np.float32),
        mask=square,
        logits=logits,
        object_scores=scores,
        image_size=np.array(predictor.image_size),
        # the official input tensors (normalised, image_size²): their digest lets the test check its recipe
        images_sha256=np.array(_digest(images)),
        weights_sha256=np.array(weights_digest(state)),
        seed=np.array(SEED),
    )
    print(f"wrote {out}: logits {logits.shape}, object scores {scores.round(2).tolist()}")


def _digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


def dump_keys(out: str) -> None:
    keys = {
        "tiny": shapes_of(build("tiny")),
        "sam2.1_hiera_t": shapes_of(build("hiera-t")),
        "sam2_hiera_t": shapes_of(build("hiera-t", config=CONFIG_20)),
    }
    with gzip.open(out, "wb", compresslevel=9) as f:
        f.write(json.dumps(keys, separators=(",", ":")).encode())
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)} keys" for k, v in keys.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", action="store_true")
    parser.add_argument("--size", default="tiny", choices=["tiny", "hiera-t"])
    parser.add_argument("--fp32-memory", action="store_true")
    parser.add_argument("out")
    parser.add_argument("checkpoint_out", nargs="?")
    args = parser.parse_args()
    if args.fp32_memory:
        fp32_memory()
    if args.keys:
        dump_keys(args.out)
    else:
        main(args.size, args.out, args.checkpoint_out)
