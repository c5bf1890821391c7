"""Official checkpoint files: safe loading, variant detection, conversion, and parity with the official code.

The official packages (segment-anything, segment-anything-hq) build their models with random weights; we save
the state dict in the official file format, load that file through grounded and compare on a real photo.
"""

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from skimage import data

from grounded.adapters import SAM
from grounded.cli import main
from grounded.core.detections import Detections
from grounded.core.images import load_image
from grounded.models.checkpoints import CheckpointError, convert_checkpoint, detect_variant, read_state_dict
from grounded.models.sources import ModelSourceError

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

BOX = np.array([50.0, 40.0, 380.0, 300.0])  # on coffee (600 x 400)
TINY = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
}


@pytest.fixture(autouse=True)
def _conversion_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))


def _official(hq: bool, seed: int = 0, **size):
    if hq:
        from segment_anything_hq.build_sam import _build_sam
    else:
        from segment_anything.build_sam import _build_sam
    torch.manual_seed(seed)
    return _build_sam(**(size or TINY), checkpoint=None).eval()


def _official_predict(model, hq: bool, image: np.ndarray):
    if hq:
        from segment_anything_hq import SamPredictor
    else:
        from segment_anything import SamPredictor
    predictor = SamPredictor(model)
    predictor.set_image(image)
    kwargs = {"hq_token_only": False} if hq else {}
    logits, iou, low_res = predictor.predict(box=BOX, multimask_output=False, return_logits=True, **kwargs)
    return predictor, logits[0] > 0, float(iou[0]), torch.from_numpy(low_res[0])


def _parity(hq: bool, tmp_path, **size) -> dict[str, float]:
    official = _official(hq, **size)
    path = tmp_path / ("sam_hq_vit_b.pth" if hq else "sam_vit_b_01ec64.pth")
    torch.save(official.state_dict(), path)
    image = data.coffee()
    predictor, their_mask, their_iou, their_low = _official_predict(official, hq, image)

    sam = SAM(model=str(path), device="cpu")
    assert sam.is_hq == hq
    picture = load_image(image)
    (embedding,) = sam.encode([picture])
    # the same preprocessed input through both image encoders: the models themselves agree
    with torch.no_grad():
        ours_same_input = sam._model.get_image_embeddings(predictor.input_image_tensor_for_parity)
    ours_same_input = ours_same_input[0] if hq else ours_same_input
    encoder_diff = (ours_same_input - predictor.features).abs().max().item()
    # end to end, each side with its own preprocessing
    scale = torch.tensor([embedding.reshaped_size[1] / 600, embedding.reshaped_size[0] / 400] * 2)
    with torch.no_grad():
        out = sam._model(
            input_boxes=(torch.tensor(BOX, dtype=torch.float32) * scale)[None, None],
            multimask_output=False,
            **sam._decoder_inputs(embedding),
        )
    low_diff = (out.pred_masks[0, 0, 0] - their_low).abs().max().item()
    iou_diff = abs(out.iou_scores[0, 0, 0].item() - their_iou)
    det = Detections(
        torch.tensor([BOX], dtype=torch.float32),
        torch.ones(1),
        torch.zeros(1, dtype=torch.int64),
        ("x",),
        ("x",),
        picture.size,
    )
    ours = sam.segment([picture], [det])[0].masks[0].numpy()
    mask_iou = (ours & their_mask).sum() / max((ours | their_mask).sum(), 1)
    diffs = {
        "encoder": encoder_diff,
        "low_res_logits": low_diff,
        "iou": iou_diff,
        "mask_iou": float(mask_iou),
    }
    print(f"\n{'HQ-SAM' if hq else 'SAM'} parity: {diffs}")
    return diffs


@pytest.fixture(autouse=True)
def _keep_input_tensor(monkeypatch):
    """Record the official predictor's preprocessed input so both encoders can see the same tensor."""
    import segment_anything
    import segment_anything_hq

    for module in (segment_anything, segment_anything_hq):
        original = module.SamPredictor.set_torch_image

        def set_torch_image(self, transformed_image, original_image_size, _original=original):
            self.input_image_tensor_for_parity = self.model.preprocess(transformed_image)
            return _original(self, transformed_image, original_image_size)

        monkeypatch.setattr(module.SamPredictor, "set_torch_image", set_torch_image)


@pytest.mark.parametrize("hq", [False, True], ids=["sam", "sam_hq"])
def test_parity_with_the_official_code_on_random_weights(hq, tmp_path):
    diffs = _parity(hq, tmp_path)
    assert diffs["encoder"] <= 1e-4
    assert diffs["low_res_logits"] <= 1e-4 and diffs["iou"] <= 1e-4
    assert diffs["mask_iou"] >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("hq", [False, True], ids=["sam_vit_b", "sam_hq_vit_b"])
def test_parity_at_official_vit_b_size(hq, tmp_path):
    vit_b = {
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": [2, 5, 8, 11],
    }
    diffs = _parity(hq, tmp_path, **vit_b)
    assert diffs["encoder"] <= 1e-3  # 12 layers of fp32 accumulation
    assert diffs["low_res_logits"] <= 1e-3 and diffs["iou"] <= 1e-4
    assert diffs["mask_iou"] >= 0.999


def test_variant_read_from_keys_and_shapes(tmp_path):
    from transformers import AutoConfig

    for hq in (False, True):
        path = tmp_path / f"file{int(hq)}.pth"
        torch.save(_official(hq).state_dict(), path)
        assert detect_variant(read_state_dict(path)) == ("sam_hq" if hq else "sam")
        out = convert_checkpoint(path, tmp_path / f"converted{int(hq)}")
        config = AutoConfig.from_pretrained(out)
        assert config.model_type == ("sam_hq" if hq else "sam")
        assert config.vision_config.hidden_size == 32 and config.vision_config.num_attention_heads == 2
        assert (
            list(config.vision_config.global_attn_indexes) == [1] and config.vision_config.window_size == 14
        )


def test_unknown_checkpoints_get_a_clear_error(tmp_path):
    path = tmp_path / "groundingdino_like.pth"
    torch.save({"backbone.0.weight": torch.zeros(2), "transformer.level_embed": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint .* expected SAM .*HQ-SAM"):
        detect_variant(read_state_dict(path))
    with pytest.raises(ModelSourceError, match="unrecognised checkpoint"):
        SAM(model=str(path)).warm_up()
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint|needs more than tensors"):
        read_state_dict(tmp_path / "garbage.pth")


class _Booby:
    """Unpickling this would run ``os.system`` — unless the loader refuses code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_booby_trapped_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "sam_vit_b_evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": _Booby(marker)}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_state_dict(path)
    assert not marker.exists()


def test_convert_command_and_segment_with_official_files(tiny_gdino, image_files, tmp_path, capsys):
    path = tmp_path / "sam_hq_vit_b.pth"
    torch.save(_official(True).state_dict(), path)
    out = tmp_path / "converted"
    assert main(["convert", str(path), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "sam_hq"
    assert not list(tmp_path.glob(".converted*"))  # no temporary folder left behind
    run = tmp_path / "run"
    argv = ["segment", str(image_files["coffee"]), "--prompt", "cup", "--out", str(run), "-q"]
    argv += ["--detector", str(tiny_gdino), "--segmenter", str(path), "--box-threshold", "0", "--top-k", "2"]
    assert main(argv) == 0
    assert len(json.loads((run / "coffee.json").read_text())["detections"]) == 2
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "nope.pth"), str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
