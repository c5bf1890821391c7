"""Official SAM 2 / 2.1 checkpoint files and parity of the SAM 2 video tracker with the official ``sam2`` package.

``tests/parity/sam2_official.py`` ran once in its own venv (``tests/parity/make_sam2_venv.sh``): the official
``SAM2VideoPredictor`` built from ``sam2.1_hiera_t.yaml`` shrunk by hydra overrides, weights from
``tests/parity/sam2_weights.py`` (seeded; rebuilt here and checked by digest), a box on frame 0 for object 1, a
mask for object 2, propagated over 3 more frames of a synthetic clip. ``sam2_reference.npz`` holds what it gave;
here the same weights are saved in the official file format, loaded through grounded's user path (``grounded
convert`` / the ``sam2_video`` adapter) and run on the same frames with the same prompts. Numbers print with -s.
"""

import gzip
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.models.checkpoints import CheckpointError, convert_checkpoint, detect_variant
from grounded.models.sam2_checkpoint import load_sam2_video

sys.path.insert(0, str(Path(__file__).parent / "parity"))
from sam2_weights import random_state_dict, weights_digest

warnings.filterwarnings("ignore", category=UserWarning)
PARITY = Path(__file__).parent / "parity"
ROOT = Path(__file__).parent.parent
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
MAX_OBJECT_POINTERS = 4  # sam2_official.TINY's ++model.max_obj_ptrs_in_encoder


@pytest.fixture(autouse=True)
def _conversion_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def official_keys():
    return json.loads(gzip.decompress((PARITY / "sam2_official_keys.json.gz").read_bytes()))


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(PARITY / "sam2_reference.npz"))


def _official_file(shapes, seed, path: Path, digest: str | None = None) -> Path:
    state = random_state_dict(shapes, seed)
    if digest is not None:
        assert weights_digest(state) == digest, (
            "the seeded weights differ from the ones the official code ran on"
        )
    torch.save({"model": state}, path)
    return path


def official_pixels(frame: np.ndarray, side: int) -> torch.Tensor:
    """The official ``_load_img_as_tensor`` + normalisation: PIL's default (bicubic) resize to a square."""
    resized = np.asarray(Image.fromarray(frame).resize((side, side))) / 255.0
    return (torch.from_numpy(resized).permute(2, 0, 1).float() - MEAN) / STD  # float32 first, as there


def run_grounded(folder: Path, ref: dict, same_input: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """grounded's tracker on the reference clip: (logits upsampled as the official code does, logits through
    grounded's own upsampling, grounded's binary masks), each (frames, 2 objects, H, W)."""
    from grounded.adapters.sam2_video import SAM2Video

    frames = ref["frames"]
    side = int(ref["image_size"])
    size = frames.shape[1:3]
    tracker = SAM2Video(model=str(folder), device="cpu")
    tracker.start(size, Prompt.of("thing"))
    if same_input:
        tracker._pixels = lambda image: official_pixels(image.pixels, side)  # type: ignore[method-assign]
    low_res: dict[int, torch.Tensor] = {}
    ours_upsampled: dict[int, np.ndarray] = {}
    original = tracker._masks

    def capture(output):
        ids = [int(i) for i in output.object_ids]
        low = output.pred_masks.float()
        order = [ids.index(1), ids.index(2)]
        low_res[int(output.frame_idx)] = low[order]
        post = tracker._processor.post_process_masks(
            [low], original_sizes=[list(size)], mask_threshold=0.0, binarize=False
        )[0]
        ours_upsampled[int(output.frame_idx)] = post.reshape(len(ids), *size)[order].numpy()
        return original(output)

    tracker._masks = capture  # type: ignore[method-assign]
    binary = []
    for t, frame in enumerate(frames):
        image = LoadedImage(pixels=np.ascontiguousarray(frame), name=f"f{t}")
        masks = tracker.step(t, image)
        if t == 0:
            masks = tracker.add(0, {1: ref["box"], 2: ref["mask"].astype(bool)})
        binary.append(np.stack([masks[1], masks[2]]))
    logits = np.stack(
        [
            F.interpolate(low_res[t], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
            for t in range(len(frames))
        ]
    )
    return logits, np.stack([ours_upsampled[t] for t in range(len(frames))]), np.stack(binary)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def _report(name: str, logits, ours_upsampled, binary, ref) -> dict[str, float]:
    theirs = ref["logits"]
    ious = [_iou(binary[t, o], theirs[t, o] > 0) for t in range(len(theirs)) for o in range(2)]
    found = {
        "logits_max_abs": float(np.abs(logits - theirs).max()),
        "logits_grounded_upsampling_max_abs": float(np.abs(ours_upsampled - theirs).max()),
        "min_mask_iou": min(ious),
    }
    print(
        f"\nSAM 2 video parity ({name}): {json.dumps(found)}; per frame/object IoU {np.round(ious, 5).tolist()}"
    )
    return found


def test_reference_is_not_trivial(reference):
    """The official masks are neither empty nor full and the objects are scored present on every frame, so the
    comparison below says something."""
    logits = reference["logits"]
    assert logits.shape[:2] == (4, 2)
    area = (logits > 0).mean(axis=(2, 3))
    assert (area > 0.005).all() and (area < 0.99).all(), area
    assert (reference["object_scores"] > 0).all(), reference["object_scores"]


def test_official_preprocessing_recipe_matches_the_reference(reference):
    side = int(reference["image_size"])
    pixels = torch.stack([official_pixels(f, side) for f in reference["frames"]]).numpy()
    assert hashlib.sha256(np.ascontiguousarray(pixels, np.float32).tobytes()).hexdigest() == str(
        reference["images_sha256"]
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, official_keys, reference):
    tmp = tmp_path_factory.mktemp("sam2-official")
    path = _official_file(
        official_keys["tiny"],
        int(reference["seed"]),
        tmp / "sam2.1_hiera_tiny.pt",
        str(reference["weights_sha256"]),
    )
    assert detect_variant(torch.load(path, weights_only=True)["model"]) == "sam2.1"
    folder = convert_checkpoint(path, tmp / "converted", image_size=int(reference["image_size"]))
    # the one setting of the official tiny config that no file carries (the released configs all use 16)
    config = json.loads((folder / "config.json").read_text())
    config["max_object_pointers_in_encoder"] = MAX_OBJECT_POINTERS
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_parity_same_input(tiny_folder, reference):
    """The official input tensor fed to grounded's tracker: every frame's logits agree (measured 7.6e-6)."""
    logits, ours_upsampled, binary = run_grounded(tiny_folder, reference, same_input=True)
    found = _report("same input", logits, ours_upsampled, binary, reference)
    assert found["logits_max_abs"] < 1e-4
    assert found["logits_grounded_upsampling_max_abs"] < 1e-4
    assert found["min_mask_iou"] > 0.999


def test_without_the_prompted_frame_patch_transformers_differs(tiny_folder, reference, monkeypatch):
    """transformers as it is (sam2_video.official_prompted_frames off): the mask-prompted object drifts."""
    from grounded.adapters.sam2_video import SAM2Video

    monkeypatch.setattr(SAM2Video, "prepare", lambda self: None)
    logits, ours_upsampled, binary = run_grounded(tiny_folder, reference, same_input=True)
    _report("same input, transformers unpatched", logits, ours_upsampled, binary, reference)
    diff = np.abs(logits - reference["logits"]).max(axis=(2, 3))  # (frames, objects)
    assert diff[1:, 0].max() < 1e-4  # the box-prompted object is not affected
    assert diff[1:, 1].max() > 1e-3, diff


def test_parity_end_to_end(tiny_folder, reference):
    """Each side with its own preprocessing: grounded resizes frames as the official loader does."""
    logits, ours_upsampled, binary = run_grounded(tiny_folder, reference, same_input=False)
    found = _report("end to end", logits, ours_upsampled, binary, reference)
    assert found["logits_max_abs"] < 1e-4
    assert found["min_mask_iou"] > 0.999


@pytest.mark.parametrize("name", ["sam2.1_hiera_t", "sam2_hiera_t"])
def test_released_hiera_tiny_layouts_load_strictly(official_keys, name):
    """Every key and shape of the official Hiera-T models (2.1 and 2.0) lands in transformers' Sam2VideoModel
    with the config transformers' own conversion gives them."""
    from transformers import Sam2VideoConfig

    state = {k: torch.zeros(v) for k, v in official_keys[name].items()}
    model = load_sam2_video(state)
    config, default = model.config, Sam2VideoConfig()
    backbone = config.vision_config.backbone_config
    assert backbone.blocks_per_stage == [1, 2, 7, 2] and backbone.global_attention_blocks == [5, 7, 9]
    assert backbone.embed_dim_per_stage == [96, 192, 384, 768]
    assert config.num_maskmem == default.num_maskmem and config.memory_attention_num_layers == 4
    assert config.enable_occlusion_spatial_embedding == (name == "sam2.1_hiera_t")
    assert config.enable_temporal_pos_encoding_for_object_pointers == (name == "sam2.1_hiera_t")
    assert config.memory_fuser_intermediate_dim == default.memory_fuser_intermediate_dim


def test_damaged_or_unknown_files_are_refused(official_keys, tmp_path):
    shapes = official_keys["tiny"]
    state = random_state_dict(shapes, 1)
    missing = dict(state)
    missing.pop("memory_encoder.out_proj.weight")
    torch.save({"model": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="out_proj"):
        convert_checkpoint(tmp_path / "missing.pt", tmp_path / "a", image_size=128)
    extra = dict(state, **{"memory_attention.layers.9.linear1.weight": torch.zeros(2, 2)})
    torch.save({"model": extra}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="SAM 2"):
        convert_checkpoint(tmp_path / "extra.pt", tmp_path / "b", image_size=128)
    odd = {k: v for k, v in state.items() if "trunk.blocks.11." not in k}  # Hiera 1-2-7-1: not released
    torch.save({"model": odd}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="blocks per stage"):
        convert_checkpoint(tmp_path / "odd.pt", tmp_path / "c", image_size=128)
    assert not any((tmp_path / n).exists() for n in "abc")


def _sam2_python() -> Path:
    return Path(os.environ.get("GROUNDED_SAM2_PARITY_PYTHON", ROOT / ".parity-sam2-venv" / "bin" / "python"))


@pytest.mark.slow
def test_parity_real_hiera_tiny_with_the_official_package(tmp_path, official_keys):
    """Real SAM 2.1 Hiera-T size: the official code runs now, in its venv (skipped without it)."""
    python = _sam2_python()
    if not python.is_file():
        pytest.skip(f"no official sam2 venv at {python} (tests/parity/make_sam2_venv.sh)")
    out, ckpt = tmp_path / "ref.npz", tmp_path / "sam2.1_hiera_tiny.pt"
    cmd = [str(python), str(PARITY / "sam2_official.py"), "--size", "hiera-t", str(out), str(ckpt)]
    subprocess.run(cmd, check=True, timeout=3000, stdout=subprocess.DEVNULL)
    ref = dict(np.load(out))
    area = (ref["logits"] > 0).mean(axis=(2, 3))
    assert (area > 0.005).all() and (area < 0.99).all() and (ref["object_scores"] > 0).all(), area
    folder = convert_checkpoint(ckpt, tmp_path / "converted")
    # the official predictor knows the video's length and caps the pointers at min(frames, 16); a streaming
    # tracker does not: give it the official cap for this 4-frame clip
    config = json.loads((folder / "config.json").read_text())
    config["max_object_pointers_in_encoder"] = min(len(ref["frames"]), 16)
    (folder / "config.json").write_text(json.dumps(config))
    logits, ours_upsampled, binary = run_grounded(folder, ref, same_input=True)
    found = _report("Hiera-T, same input", logits, ours_upsampled, binary, ref)
    assert found["logits_max_abs"] < 1e-3
    assert found["min_mask_iou"] > 0.999


def test_file_loads_directly_and_through_the_cli(official_keys, tmp_path):
    """``--tracker sam2.1_hiera_tiny.pt`` (converted once, 1024 input as in the official configs) and
    ``grounded convert --image-size``."""
    from grounded.adapters.sam2_video import SAM2Video
    from grounded.cli import main

    path = _official_file(official_keys["tiny"], 3, tmp_path / "sam2.1_hiera_tiny.pt")
    tracker = SAM2Video(model=str(path), device="cpu")
    tracker.warm_up()
    assert tracker._model.config.image_size == 1024
    assert int(tracker._processor.image_processor.size.height) == 1024
    expected = random_state_dict(official_keys["tiny"], 3)["memory_attention.layers.1.linear2.weight"]
    assert torch.equal(tracker._model.memory_attention.layers[1].linear2.weight, expected)
    assert main(["convert", str(path), str(tmp_path / "out"), "--image-size", "128"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "sam2_video" and config["image_size"] == 128
