"""Official Grounding DINO checkpoint files: variant detection, key mapping, conversion, parity with the official code.

Default run: a transformers-built tiny Grounding DINO is saved in the official file layout (keys renamed *back*
with an independent inverse mapping, ``{"model": {"module.<key>": tensor}}`` as the released files store them),
loaded through grounded, and must give identical weights and outputs: the key mapping round-trips.

``pytest -m slow``: the official package (``groundingdino-py``, which needs transformers < 5) runs in its own
venv, ``tests/parity/make_gdino_venv.sh`` → ``.parity-venv/`` (or ``$GROUNDED_GDINO_PARITY_PYTHON``); it builds
the Swin-T model from its own config with random weights, saves the .pth and its raw outputs, and we compare.
"""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from grounded.adapters import GroundingDINO
from grounded.cli import main
from grounded.core.images import load_image
from grounded.models.checkpoints import (
    CheckpointError,
    _swin_shape,
    convert_checkpoint,
    detect_variant,
    read_state_dict,
)
from grounded.models.testing import _tokenizer, grounding_dino_config

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

ROOT = Path(__file__).resolve().parents[1]
CAPTION_CLASSES = ["person", "flag", "helmet"]


@pytest.fixture(autouse=True)
def _conversion_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GROUNDED_TEXT_ENCODER", raising=False)


def _text_encoder_folder(path: Path, text_config=None) -> Path:
    """The offline WordPiece tokenizer (bert-base ids for [CLS]/[SEP]/./?), plus a BERT config if given."""
    _tokenizer(None if text_config is None else text_config.vocab_size).save_pretrained(path)
    if text_config is not None:
        text_config.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------ inverse map
# transformers' layout → the official one, written independently of grounded.models.checkpoints' forward rules
_SW = r"^model\.backbone\.conv_encoder\.model\."
_INVERSE: list[tuple[str, str]] = [
    (_SW + r"swin\.embeddings\.patch_embeddings\.projection\.", "backbone.0.patch_embed.proj."),
    (_SW + r"swin\.embeddings\.norm\.", "backbone.0.patch_embed.norm."),
    (_SW + r"swin\.encoder\.layers\.", "backbone.0.layers."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (
        r"\.attention\.relative_position_bias\.relative_position_bias_table$",
        ".attn.relative_position_bias_table",
    ),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.(q|k|v)_proj\.", r".attn.QKV_\1."),
    (r"^model\.text_backbone\.", "bert."),
    (r"^model\.text_projection\.", "feat_map."),
    (r"^model\.input_proj_vision\.", "input_proj."),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.", r"transformer.encoder.layers.\1.DEFORM."),
    (r"\.DEFORM\.self_attn_layer_norm\.", ".norm1."),
    (r"\.DEFORM\.final_layer_norm\.", ".norm2."),
    (r"\.DEFORM\.fc(\d)\.", r".linear\1."),
    (r"\.DEFORM\.", "."),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.", r"transformer.encoder.text_layers.\1.TEXT."),
    (r"\.TEXT\.layer_norm_before\.", ".norm1."),
    (r"\.TEXT\.layer_norm_after\.", ".norm2."),
    (r"\.TEXT\.fc(\d)\.", r".linear\1."),
    (r"\.TEXT\.", "."),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.", r"transformer.encoder.fusion_layers.\1."),
    (r"\.vision_param$", ".gamma_v"),
    (r"\.text_param$", ".gamma_l"),
    (r"\.layer_norm_vision\.", ".layer_norm_v."),
    (r"\.layer_norm_text\.", ".layer_norm_l."),
    (r"\.attn\.(values_|out_)?vision_proj\.", r".attn.\1v_proj."),
    (r"\.attn\.(values_|out_)?text_proj\.", r".attn.\1l_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.", r"transformer.decoder.layers.\1."),
    (r"\.encoder_attn_text_layer_norm\.", ".catext_norm."),
    (r"\.encoder_attn_text\.", ".ca_text."),
    (r"\.encoder_attn_layer_norm\.", ".norm1."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"(decoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.norm2."),
    (r"(decoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm3."),
    (r"(decoder\.layers\.\d+)\.fc(\d)\.", r"\1.linear\2."),
    (r"\.(self_attn|ca_text)\.(query|key|value)\.", r".\1.INPROJ_\2."),
    (r"^model\.decoder\.layer_norm\.", "transformer.decoder.norm."),
    (r"^model\.decoder\.reference_points_head\.", "transformer.decoder.ref_point_head."),
    (r"^model\.decoder\.bbox_embed\.", "transformer.decoder.bbox_embed."),
    (r"^model\.level_embed$", "transformer.level_embed"),
    (r"^model\.query_position_embeddings\.", "transformer.tgt_embed."),
    (r"^model\.enc_output(_norm)?\.", r"transformer.enc_output\1."),
    (r"^model\.encoder_output_bbox_embed\.", "transformer.enc_out_bbox_embed."),
]


def to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers GroundingDinoForObjectDetection state dict in the official GroundingDINO layout."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if re.search(r"\.swin\.layernorm\.", key):
            continue  # transformers-only, unused by the backbone
        if m := re.match(_SW + r"hidden_states_norms\.stage(\d)\.(.*)$", key):
            out[f"backbone.0.norm{int(m.group(1)) - 1}.{m.group(2)}"] = value
            continue
        for pattern, replacement in _INVERSE:
            key = re.sub(pattern, replacement, key)
        if m := re.match(r"(.*)\.attn\.QKV_(q|k|v)\.(weight|bias)$", key):
            fused.setdefault(f"{m.group(1)}.attn.qkv.{m.group(3)}", {})["qkv".index(m.group(2))] = value
        elif m := re.match(r"(.*)\.INPROJ_(query|key|value)\.(weight|bias)$", key):
            index = ("query", "key", "value").index(m.group(2))
            fused.setdefault(f"{m.group(1)}.in_proj_{m.group(3)}", {})[index] = value
        else:
            out[key] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts[i] for i in range(3)])
    return out


def _tiny_transformers_model(seed: int = 0):
    from transformers import GroundingDinoForObjectDetection

    config = grounding_dino_config("tiny")
    config.encoder_n_points = config.decoder_n_points = 4  # the official configs' sampling points
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    with torch.no_grad():  # every weight matters, including the ones initialised to 0 (box heads) or 1e-4
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def _save_official(model, path: Path) -> Path:
    official = to_official(model.state_dict())
    # what the released files carry besides: buffers transformers recomputes, BERT's unused pooler
    official["backbone.0.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(
        49, 49, dtype=torch.long
    )
    hidden = model.config.text_config.hidden_size
    official["bert.pooler.dense.weight"] = torch.zeros(hidden, hidden)
    official["bert.pooler.dense.bias"] = torch.zeros(hidden)
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "epoch": 11}, path)
    return path


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory):
    """(transformers model, its official-layout .pth, a text-encoder folder, the same model as a folder)."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    root = tmp_path_factory.mktemp("gdino-official")
    model = _tiny_transformers_model()
    path = _save_official(model, root / "groundingdino_tiny.pth")
    text_encoder = _text_encoder_folder(root / "bert", model.config.text_config)
    folder = root / "reference"
    model.save_pretrained(folder)
    # the processor convert_checkpoint writes: the official sizes (shorter side 800, longer at most 1333)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(), tokenizer=_tokenizer(None)
    ).save_pretrained(folder)
    return model, path, text_encoder, folder


# ------------------------------------------------------------------------------------------------ tests
def test_official_layout_round_trips_to_identical_weights_and_outputs(official_tiny, tmp_path):
    from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessor

    model, path, text_encoder, _ = official_tiny
    state_dict = read_state_dict(path)
    assert not any(k.startswith("module.") for k in state_dict)  # the DDP prefix is removed
    assert detect_variant(state_dict) == "grounding_dino_swin"  # a tiny Swin: neither T nor B
    out = convert_checkpoint(path, tmp_path / "converted", text_encoder=text_encoder)
    converted = GroundingDinoForObjectDetection.from_pretrained(out).eval()
    assert converted.config.encoder_attention_heads == 2 and converted.config.decoder_attention_heads == 2
    assert converted.config.text_config.num_attention_heads == 2  # from the text encoder's config
    assert list(converted.config.backbone_config.out_indices) == [2, 3, 4]
    theirs, ours = model.state_dict(), converted.state_dict()
    assert set(theirs) == set(ours)
    differing = [k for k in theirs if not torch.equal(theirs[k], ours[k]) and ".swin.layernorm." not in k]
    assert differing == []

    processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 200})
    pixels = processor(data.astronaut(), return_tensors="pt")
    tokenizer = _tokenizer(None)
    text = tokenizer("person . flag . helmet .", return_tensors="pt")
    with torch.no_grad():
        a = model(**pixels, **text)
        b = converted(**pixels, **text)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)
    assert a.logits[..., : text["input_ids"].shape[1]].sigmoid().std() > 0.01  # not a degenerate output


def test_loading_the_pth_through_grounded_equals_the_original_model(official_tiny, monkeypatch):
    _, path, text_encoder, folder = official_tiny
    monkeypatch.setenv("GROUNDED_TEXT_ENCODER", str(text_encoder))
    image = load_image(data.astronaut())
    kwargs = {"box_threshold": 0.0, "top_k": 10, "nms_threshold": None, "device": "cpu"}
    from_pth = GroundingDINO(model=str(path), **kwargs)
    reference = GroundingDINO(model=str(folder), **kwargs)
    (ours,) = from_pth.detect([image], CAPTION_CLASSES)
    (theirs,) = reference.detect([image], CAPTION_CLASSES)
    assert len(ours) == len(theirs) == 10
    assert torch.equal(ours.boxes, theirs.boxes) and torch.equal(ours.scores, theirs.scores)
    assert ours.phrases == theirs.phrases and torch.equal(ours.class_ids, theirs.class_ids)


def test_swin_t_and_swin_b_recognised_from_shapes():
    def fake(embed_dim, depths, heads, window):
        sd = {
            "backbone.0.patch_embed.proj.weight": torch.empty(embed_dim, 3, 4, 4),
            "transformer.level_embed": torch.empty(4, 256),
            "bert.embeddings.word_embeddings.weight": torch.empty(30522, 768),
            "backbone.0.layers.0.blocks.0.mlp.fc1.weight": torch.empty(4 * embed_dim, embed_dim),
        }
        for stage, (depth, h) in enumerate(zip(depths, heads, strict=True)):
            for block in range(depth):
                table = torch.empty((2 * window - 1) ** 2, h)
                sd[f"backbone.0.layers.{stage}.blocks.{block}.attn.relative_position_bias_table"] = table
        for i in (1, 2, 3):
            sd[f"backbone.0.norm{i}.weight"] = torch.empty(embed_dim * 2**i)
        return sd

    swin_t = fake(96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    swin_b = fake(128, [2, 2, 18, 2], [4, 8, 16, 32], 12)
    assert detect_variant(swin_t) == "grounding_dino_swin_t"
    assert detect_variant(swin_b) == "grounding_dino_swin_b"
    shape = _swin_shape(swin_b)
    assert shape["depths"] == [2, 2, 18, 2] and shape["num_heads"] == [4, 8, 16, 32]
    assert shape["window_size"] == 12 and shape["out_indices"] == [2, 3, 4] and shape["mlp_ratio"] == 4.0
    assert _swin_shape(swin_t)["window_size"] == 7


def test_convert_command_and_segment_with_an_official_detector_file(
    official_tiny, tiny_sam, image_files, tmp_path, monkeypatch, capsys
):
    _, path, text_encoder, _ = official_tiny
    out = tmp_path / "gdino"
    assert main(["convert", str(path), str(out), "--text-encoder", str(text_encoder)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "grounding-dino"
    assert (out / "tokenizer.json").is_file() and (out / "processor_config.json").is_file()

    monkeypatch.setenv("GROUNDED_TEXT_ENCODER", str(text_encoder))
    run = tmp_path / "run"
    argv = ["segment", str(image_files["astronaut"]), "--prompt", "person . helmet", "--out", str(run), "-q"]
    argv += ["--detector", str(path), "--segmenter", str(tiny_sam), "--box-threshold", "0", "--top-k", "3"]
    assert main(argv) == 0
    detections = json.loads((run / "astronaut.json").read_text())["detections"]
    assert len(detections) == 3


def test_segment_with_official_detector_and_segmenter_files(
    official_tiny, image_files, tmp_path, monkeypatch
):
    """`grounded segment --detector X.pth --segmenter Y.pth`: both official-format random-weight files."""
    from segment_anything_hq.build_sam import _build_sam

    _, path, text_encoder, _ = official_tiny
    torch.manual_seed(0)
    tiny = {
        "encoder_embed_dim": 32,
        "encoder_depth": 2,
        "encoder_num_heads": 2,
        "encoder_global_attn_indexes": [1],
    }
    sam_path = tmp_path / "sam_hq_vit_tiny_random.pth"
    torch.save(_build_sam(**tiny, checkpoint=None).state_dict(), sam_path)
    monkeypatch.setenv("GROUNDED_TEXT_ENCODER", str(text_encoder))
    run = tmp_path / "run"
    argv = ["segment", str(image_files["coffee"]), "--prompt", "cup . spoon", "--out", str(run), "-q"]
    argv += ["--detector", str(path), "--segmenter", str(sam_path), "--box-threshold", "0", "--top-k", "2"]
    assert main(argv) == 0
    records = json.loads((run / "coffee.json").read_text())["detections"]
    assert len(records) == 2 and all("segmentation" in r and "mask_score" in r for r in records)


def test_missing_tokenizer_gets_an_error_naming_what_to_download(
    official_tiny, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    _, path, _, _ = official_tiny
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as err:
        convert_checkpoint(path, tmp_path / "x", text_encoder="nobody/no-such-bert-tokenizer")
    message = str(err.value)
    assert "holds the BERT text encoder's weights but not its tokenizer" in message
    assert "hf download bert-base-uncased --local-dir DIR" in message and "GROUNDED_TEXT_ENCODER" in message
    assert not (tmp_path / "x").exists()
    assert main(["convert", str(path), str(tmp_path / "x"), "--text-encoder", str(tmp_path / "nope")]) == 2
    assert "--text-encoder DIR" in capsys.readouterr().err


def test_a_tokenizer_of_another_vocabulary_is_refused(official_tiny, tmp_path):
    _, path, _, _ = official_tiny
    other = tmp_path / "bert-30522"
    _tokenizer(30522).save_pretrained(other)
    with pytest.raises(
        CheckpointError, match="tokenizer has 30522 tokens, the checkpoint's BERT embeds 1030"
    ):
        convert_checkpoint(path, tmp_path / "x", text_encoder=other)


# ------------------------------------------------------------------------------------------------ official code
def _parity_python() -> Path | None:
    path = Path(os.environ.get("GROUNDED_GDINO_PARITY_PYTHON", ROOT / ".parity-venv" / "bin" / "python"))
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(
    _parity_python() is None,
    reason="needs the official groundingdino-py in its own venv: run tests/parity/make_gdino_venv.sh "
    "(or set GROUNDED_GDINO_PARITY_PYTHON)",
)
def test_parity_with_the_official_grounding_dino_on_random_weights(tmp_path, monkeypatch):
    from PIL import Image
    from transformers import BertConfig

    text_config = BertConfig(
        vocab_size=1030, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256
    )
    text_encoder = _text_encoder_folder(tmp_path / "bert", text_config)
    image_path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image_path)
    caption = " . ".join(CAPTION_CLASSES) + " ."
    official = tmp_path / "official"
    script = ROOT / "tests" / "parity" / "gdino_official.py"
    # a tiny official SAM for the anchor pipeline (Grounding DINO predict -> SamPredictor.predict_torch)
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    sam_path = tmp_path / "sam_vit_tiny.pth"
    tiny_sam = {
        "encoder_embed_dim": 32,
        "encoder_depth": 2,
        "encoder_num_heads": 2,
        "encoder_global_attn_indexes": [1],
    }
    torch.save(_build_sam(**tiny_sam, checkpoint=None).state_dict(), sam_path)
    cmd = [str(_parity_python()), str(script), str(image_path), caption, str(text_encoder), str(official)]
    cmd += ["0", str(sam_path)]
    subprocess.run(cmd, check=True, timeout=900, stdout=subprocess.DEVNULL)
    ref = np.load(official / "official.npz")
    path = official / "groundingdino_swint_ogc.pth"
    assert detect_variant(read_state_dict(path)) == "grounding_dino_swin_t"

    monkeypatch.setenv("GROUNDED_TEXT_ENCODER", str(text_encoder))
    picture = load_image(data.astronaut())
    diffs: dict[str, float] = {}
    for backend in ("pil", None):
        detector = GroundingDINO(model=str(path), device="cpu", image_backend=backend)
        (text,) = detector.encode_prompt(_prompt())
        assert text.caption.text == caption and text.input_ids[0].tolist() == ref["input_ids"].tolist()
        num_tokens = len(ref["input_ids"])
        ((_, pixels),) = detector._batches([picture])
        name = backend or "torchvision"
        diffs[f"pixels_{name}"] = (
            (pixels["pixel_values"][0] - torch.from_numpy(ref["pixel_values"])).abs().max().item()
        )
        inputs = [(f"end_to_end_{name}", pixels)]
        if backend == "pil":  # the official preprocessed tensor itself, through our model
            same = torch.from_numpy(ref["pixel_values"])[None]
            inputs.insert(
                0,
                (
                    "same_input",
                    {"pixel_values": same, "pixel_mask": torch.ones_like(same[:, 0], dtype=torch.long)},
                ),
            )
        for label, pix in inputs:
            probs, _ = detector._forward(pix, text)
            with torch.no_grad():
                boxes = detector._model(
                    pixel_values=pix["pixel_values"],
                    pixel_mask=pix["pixel_mask"],
                    input_ids=text.input_ids,
                    attention_mask=text.attention_mask,
                    token_type_ids=text.token_type_ids,
                ).pred_boxes[0]
            # Random weights put many encoder proposals in near-ties: a 1e-6 difference can swap which proposal
            # fills a query slot, and that slot then differs entirely. Compare the slots holding the same
            # proposal (boxes within 1e-3) and report how many do.
            box_diff = np.abs(boxes.numpy() - ref["boxes"]).max(axis=1)
            same = box_diff <= 1e-3
            prob_diff = np.abs(probs[0].numpy() - ref["probs"][:, :num_tokens]).max(axis=1)
            diffs[f"{label}_same_slots"] = float(same.mean())
            diffs[f"{label}_probs"] = float(prob_diff[same].max()) if same.any() else 1.0
            diffs[f"{label}_boxes"] = float(box_diff[same].max()) if same.any() else 1.0
        del detector
    _anchor_parity(official, path, sam_path, picture, diffs)
    print(f"\nGrounding DINO (Swin-T, random weights) parity: {diffs}", file=sys.stderr)
    assert (ref["probs"][:, num_tokens:] == 0).all()  # padding positions are masked on the official side too
    assert diffs["pixels_pil"] <= 1e-6
    for label in ("same_input", "end_to_end_pil"):
        assert diffs[f"{label}_same_slots"] >= 0.9
        assert diffs[f"{label}_probs"] <= 1e-4 and diffs[f"{label}_boxes"] <= 1e-4
    # the anchor pipeline: the same queries pass its threshold, the same boxes, then SAM on the anchor's boxes
    assert diffs["anchor_same_queries"] == 1.0 and diffs["anchor_boxes_px"] <= 1e-2
    assert diffs["anchor_min_mask_iou"] >= 0.999 and diffs["anchor_iou"] <= 1e-4


def _anchor_parity(
    official: Path, gdino_path: Path, sam_path: Path, picture, diffs: dict[str, float]
) -> None:
    """grounded's detector + SAM against the anchor pipeline (Grounded-SAM's demo wiring) on the same files."""
    from grounded.adapters import SAM

    anchor = np.load(official / "anchor.npz")
    detector = GroundingDINO(model=str(gdino_path), device="cpu", image_backend="pil")
    (text,) = detector.encode_prompt(_prompt())
    ((_, pixels),) = detector._batches([picture])
    probs, boxes = detector._forward(pixels, text)
    # the anchor keeps queries whose best token (any caption token) beats the threshold: select ours the same way
    keep = probs[0].max(dim=-1).values > float(anchor["threshold"])
    height, width = picture.size
    ours_xyxy = boxes[0][keep][: len(anchor["boxes_xyxy"])] * torch.tensor([width, height, width, height])
    theirs = torch.from_numpy(anchor["boxes_xyxy"])
    diffs["anchor_same_queries"] = float(int(keep.sum()) == int(anchor["kept"]))
    # predict() returns boxes in query order, as we index them
    diffs["anchor_boxes_px"] = (
        (ours_xyxy - theirs).abs().max().item() if len(ours_xyxy) == len(theirs) else 1e9
    )
    sam = SAM(model=str(sam_path), device="cpu")
    (embedding,) = sam.encode([picture])
    masks, iou = sam.decode(embedding, theirs)  # the anchor's own boxes
    their_masks = torch.from_numpy(anchor["masks"])
    ious = [
        ((a & b).sum() / max(int((a | b).sum()), 1)).item() for a, b in zip(masks, their_masks, strict=True)
    ]
    diffs["anchor_min_mask_iou"] = min(ious)
    diffs["anchor_iou"] = (iou - torch.from_numpy(anchor["iou"])).abs().max().item()


def _prompt():
    from grounded.core.prompts import Prompt

    return Prompt.of(CAPTION_CLASSES)
