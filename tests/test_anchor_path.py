"""The anchor path of the speed comparison (issue 8): benchmarks/anchor_weights.py and benchmarks/anchor_path.py.

Default run: the SAM / HQ-SAM inverse key mapping round-trips (official → grounded's layout → official gives
the identical tensors), and the weight writer's files read back to the weights they came from.

``pytest -m slow`` (needs ``.parity-venv``, see tests/parity/make_gdino_venv.sh): small transformers models in
the official layouts go through ``anchor_path.py`` in the official venv, and its boxes and masks must be what
grounded computes from the same folders.
"""

import importlib.util
import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from grounded.models.checkpoints import _rename_sam, detect_variant, read_state_dict
from grounded.models.testing import _tokenizer, grounding_dino_config

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

ROOT = Path(__file__).resolve().parents[1]
TINY_OFFICIAL_SAM = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


anchor_weights = _load_script("anchor_weights")


def _perturbed(model, scale: float = 0.02):
    """Every weight random, including those initialised to 0 / 1 (a mapping mix-up cannot hide)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model.eval()


@pytest.mark.parametrize("hq", [False, True], ids=["sam", "sam_hq"])
def test_sam_inverse_mapping_round_trips_official_keys(hq):
    if hq:
        from segment_anything_hq.build_sam import _build_sam
    else:
        from segment_anything.build_sam import _build_sam
    torch.manual_seed(0)
    official = _build_sam(**TINY_OFFICIAL_SAM, checkpoint=None).state_dict()
    back = anchor_weights.sam_to_official(_rename_sam(official))
    assert set(back) == set(official)
    assert all(torch.equal(back[k], official[k]) for k in official)
    assert any(k.startswith("mask_decoder.hf_mlp.layers.2.") for k in back) == hq


def test_sam_inverse_refuses_two_tensors_on_one_key():
    with pytest.raises(ValueError, match="map to the official key image_encoder.blocks.0.norm1.weight"):
        anchor_weights.sam_to_official(
            {
                "vision_encoder.layers.0.layer_norm1.weight": torch.zeros(1),
                "vision_encoder.layers.0.norm1.weight": torch.ones(1),
            }
        )


def _small_sam(hq: bool):
    """A transformers SAM / HQ-SAM with a ViT of width 32, depth 2 and the official prompt encoder and mask
    decoder sizes (the official constructors, and grounded's reading of the shapes, fix those)."""
    from transformers import (
        SamConfig,
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQModel,
        SamHQVisionConfig,
        SamModel,
        SamVisionConfig,
    )

    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 128}
    vision["global_attn_indexes"] = [1]
    if hq:
        config = SamHQConfig(
            vision_config=SamHQVisionConfig(**vision), mask_decoder_config=SamHQMaskDecoderConfig(vit_dim=32)
        )
        return _perturbed(SamHQModel(config))
    return _perturbed(SamModel(SamConfig(vision_config=SamVisionConfig(**vision))))


@pytest.mark.parametrize("hq", [False, True], ids=["sam", "sam_hq"])
def test_written_sam_file_holds_the_folder_weights(hq, tmp_path):
    model = _small_sam(hq)
    model.save_pretrained(tmp_path / "folder")
    path = anchor_weights.write_sam(tmp_path / "folder", tmp_path, hq=hq)  # reads it back itself, too
    assert path.name == ("sam_hq_vit_b.pth" if hq else "sam_vit_b.pth")
    official = read_state_dict(path)
    assert detect_variant(official) == ("sam_hq" if hq else "sam")
    ours = model.state_dict()
    key = "mask_decoder.output_hypernetworks_mlps.0.layers.1.weight"
    assert torch.equal(official[key], ours["mask_decoder.output_hypernetworks_mlps.0.layers.0.weight"])
    assert not any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in official)


def test_written_gdino_file_and_text_encoder_folder(tmp_path):
    from transformers import AutoTokenizer, BertModel, GroundingDinoForObjectDetection

    config = grounding_dino_config("tiny")
    config.encoder_n_points = config.decoder_n_points = 4  # what the official configs use
    model = _perturbed(GroundingDinoForObjectDetection(config))
    folder = tmp_path / "folder"
    model.save_pretrained(folder)
    _tokenizer(None).save_pretrained(folder)
    path, bert_dir = anchor_weights.write_gdino(folder, tmp_path)  # reads the .pth back itself, too
    raw = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert all(k.startswith("module.") for k in raw)
    assert detect_variant(read_state_dict(path)) == "grounding_dino_swin"
    bert = BertModel.from_pretrained(bert_dir)
    theirs = model.model.text_backbone.state_dict()
    assert all(torch.equal(bert.state_dict()[k], v) for k, v in theirs.items())
    words = raw["module.bert.embeddings.word_embeddings.weight"]
    assert torch.equal(words, theirs["embeddings.word_embeddings.weight"])
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    assert tokenizer("person . flag .")["input_ids"] == _tokenizer(None)("person . flag .")["input_ids"]


# ------------------------------------------------------------------------------------------------ official code
def _parity_python() -> Path | None:
    path = Path(os.environ.get("GROUNDED_GDINO_PARITY_PYTHON", ROOT / ".parity-venv" / "bin" / "python"))
    return path if path.is_file() else None


def _small_official_compatible_models(root: Path) -> tuple[Path, Path, int]:
    """transformers folders the official constructors can rebuild: Grounding DINO on Swin-T (the official
    backbones are named presets) with a small BERT, one encoder and two decoder layers; SAM ViT of width 32,
    depth 2 with the fixed official prompt encoder and decoder sizes. Returns the folders and the FFN width."""
    from transformers import (
        BertConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
    )

    ffn = 256
    config = grounding_dino_config("swin-t")
    config.text_config = BertConfig(
        vocab_size=1030, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256
    )
    config.encoder_layers, config.decoder_layers = 1, 2  # transformers cannot tie one decoder's box head
    config.encoder_ffn_dim = config.decoder_ffn_dim = ffn
    detector = root / "grounding-dino"
    _perturbed(GroundingDinoForObjectDetection(config)).save_pretrained(detector)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(), tokenizer=_tokenizer(None)
    )
    processor.save_pretrained(detector)
    segmenter = root / "sam"
    _small_sam(hq=False).save_pretrained(segmenter)
    return detector, segmenter, ffn


@pytest.mark.slow
@pytest.mark.skipif(
    _parity_python() is None,
    reason="needs the official packages in their own venv: run tests/parity/make_gdino_venv.sh "
    "(or set GROUNDED_GDINO_PARITY_PYTHON)",
)
def test_anchor_path_runs_the_official_code_on_grounded_weights(tmp_path, monkeypatch):
    from skimage import data

    from grounded.adapters import SAM, GroundingDINO
    from grounded.core.images import load_image
    from grounded.core.prompts import Prompt

    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))  # grounded's conversion of the .pth
    detector, segmenter, ffn = _small_official_compatible_models(tmp_path / "models")
    written = anchor_weights.write_official(detector, segmenter, tmp_path / "official")
    python = str(_parity_python())
    package_config = subprocess.run(
        [python, "-c", "import groundingdino, pathlib; print(pathlib.Path(groundingdino.__file__).parent)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    config = tmp_path / "gdino_small.py"  # the official SwinT OGC config, fewer layers (later names win)
    official_config = Path(package_config) / "config" / "GroundingDINO_SwinT_OGC.py"
    config.write_text(
        official_config.read_text() + f"\nenc_layers = 1\ndec_layers = 2\ndim_feedforward = {ffn}\n"
    )
    prompt = "person . flag . helmet"
    dump = tmp_path / "anchor.npz"
    cmd = [python, str(ROOT / "benchmarks" / "anchor_path.py"), "--gdino-config", str(config)]
    cmd += ["--gdino-checkpoint", written["gdino_checkpoint"], "--text-encoder", written["text_encoder"]]
    cmd += ["--sam-checkpoint", written["sam_checkpoint"], "--prompt", prompt, "--repeats", "1"]
    cmd += ["--threads", "2", "--max-boxes", "3", "--dump", str(dump)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # the official code's own prints go to stderr
    result = json.loads(lines[0])
    stages = ("detector_s", "sam_encoder_s", "sam_decoder_s", "end_to_end_s")
    assert all(result[k] > 0 for k in stages) and result["threads"] == 2
    assert result["end_to_end_s"] >= result["detector_s"] + result["sam_encoder_s"]
    anchor = np.load(dump)
    assert result["boxes"] == len(anchor["boxes_xyxy"]) == min(3, result["boxes_above_threshold"]) > 0

    # grounded on the same folders: the same number of queries above the threshold, and the anchor's boxes
    # among them (random weights saturate many scores at 1.0, so which of the tied queries are "best" is
    # arbitrary on both sides: match each anchor box to grounded's nearest one)
    picture = load_image(data.astronaut())
    gdino = GroundingDINO(model=str(detector), device="cpu", image_backend="pil")
    (text,) = gdino.encode_prompt(Prompt.of(prompt.split(" . ")))
    ((_, pixels),) = gdino._batches([picture])
    probs, boxes = gdino._forward(pixels, text)
    scores = probs[0].max(dim=-1).values
    assert int((scores > 0.35).sum()) == result["boxes_above_threshold"]
    ours = boxes[0][scores > 0.35] * 512  # astronaut: 512 x 512
    theirs = torch.from_numpy(anchor["boxes_xyxy"])
    nearest = (ours[None] - theirs[:, None]).abs().amax(dim=-1).min(dim=1)
    assert nearest.values.max() < 0.05  # pixels
    assert torch.allclose(
        scores[scores > 0.35][nearest.indices], torch.from_numpy(anchor["scores"]), atol=1e-5
    )
    # and grounded's SAM (the written official file) on the anchor's boxes: the same masks
    sam = SAM(model=written["sam_checkpoint"], device="cpu")
    (embedding,) = sam.encode([picture])
    masks, iou = sam.decode(embedding, torch.from_numpy(anchor["boxes_xyxy"]))
    theirs = torch.from_numpy(anchor["masks"])
    overlap = [
        ((a & b).sum() / max(int((a | b).sum()), 1)).item() for a, b in zip(masks, theirs, strict=True)
    ]
    assert min(overlap) > 0.99
    assert np.abs(iou.numpy() - anchor["iou"]).max() < 1e-3
