"""Semantic-SAM port: official key layout, checkpoint loading, parity with the official code on random weights,
the 6-level predictor, labels, the adapter and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from grounded.core.images import load_image
from grounded.models.checkpoints import CheckpointError
from grounded.models.semantic_sam import (
    SemanticSamModel,
    build_levels,
    config_from_official,
    convert_official_state_dict,
    load_semantic_sam,
    preset,
    resize_short_side,
    save_semantic_sam,
    to_official_state_dict,
)
from grounded.models.semantic_sam.predictor import LabeledLevels, Vocabulary, predict_levels, prompt_anchors
from grounded.models.semantic_sam.testing import (
    TINY_TEXT,
    make_official_checkpoint,
    make_semantic_sam,
    random_model,
)

PARITY = Path(__file__).parent / "parity"


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory) -> Path:
    return make_official_checkpoint(tmp_path_factory.mktemp("semsam") / "tiny.pth", "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return make_semantic_sam(tmp_path_factory.mktemp("semsam") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return data.coffee()[::4, ::4].copy()  # 100 x 150


# ---------------------------------------------------------------------------- official layout
@pytest.mark.parametrize("size", ["swin_t", "swin_l"])
def test_presets_have_exactly_the_official_keys_and_shapes(size):
    """The official module trees (built with random weights from the official configs) list these keys; our
    model under the official names must give the same set with the same shapes."""
    official = json.loads(gzip.decompress((PARITY / "semsam_official_keys.json.gz").read_bytes()))[size]
    with torch.device("meta"):
        model = SemanticSamModel(preset(size))
    ours = {k: list(v.shape) for k, v in to_official_state_dict(model).items()}
    assert sorted(set(official) - set(ours)) == [] and sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    # and the sizes read back from those shapes are the preset
    meta = {k: torch.empty(v, device="meta") for k, v in official.items()}
    assert config_from_official(meta) == preset(size)


def test_official_file_loads_like_the_folder(tiny_official, tiny_folder, tmp_path, coffee):
    from_file, from_folder = load_semantic_sam(tiny_official), load_semantic_sam(tiny_folder)
    assert from_file.config == from_folder.config == preset("tiny")
    for (k1, v1), (k2, v2) in zip(
        from_file.state_dict().items(), from_folder.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    pixels = torch.from_numpy(coffee).permute(2, 0, 1)[None]
    anchors = torch.tensor([[[0.4, 0.6, 0.005, 0.005]]])
    with torch.no_grad():
        a = from_file.decode(from_file.encode(pixels), anchors)
        b = from_folder.decode(from_folder.encode(pixels), anchors)
    assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["iou"], b["iou"])
    # the training checkpoint layout ({"model": ...}) loads too
    wrapped = make_official_checkpoint(tmp_path / "wrapped.pth", "tiny", seed=0, wrapped=True)
    assert torch.equal(
        load_semantic_sam(wrapped).predictor.mask_tokens.weight, from_file.predictor.mask_tokens.weight
    )


def test_unknown_or_damaged_files_fail_clearly(tmp_path, tiny_official):
    other = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(2, 3, 16, 16)}, other)
    with pytest.raises(CheckpointError, match="not a Semantic-SAM checkpoint"):
        load_semantic_sam(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_semantic_sam(tmp_path / "missing.pth")
    state = torch.load(tiny_official, weights_only=True)
    with pytest.raises(CheckpointError, match="unexpected key"):
        convert_official_state_dict(dict(state, **{"model.sem_seg_head.other.weight": torch.zeros(1)}))
    extra = tmp_path / "extra.pth"
    torch.save(dict(state, **{"model.sem_seg_head.predictor.surprise": torch.zeros(1)}), extra)
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_semantic_sam(extra)
    broken = dict(state)
    key = "model.sem_seg_head.predictor.decoder.bbox_embed.1.layers.0.bias"
    broken[key] = broken[key] + 1  # a shared copy that is not shared
    with pytest.raises(CheckpointError, match="shared copy"):
        convert_official_state_dict(broken)
    missing = {k: v for k, v in state.items() if "iou_prediction_head.layers.2" not in k}
    path = tmp_path / "missing_key.pth"
    torch.save(missing, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_semantic_sam(path)
    folder = tmp_path / "not_semsam"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(CheckpointError, match="not a Semantic-SAM one"):
        load_semantic_sam(folder)


# ---------------------------------------------------------------------------- parity
def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_parity_with_the_official_code_on_random_weights(tiny_official):
    """``semsam_reference.npz`` was written by the official Semantic-SAM code (tests/parity/semsam_official.py)
    from this very file: features, masks and IoU predictions must match."""
    ref = np.load(PARITY / "semsam_reference.npz")
    state = torch.load(tiny_official, weights_only=True)
    assert _digest({k[len("model.") :]: v for k, v in state.items()}) == str(ref["weights_sha256"])
    model = load_semantic_sam(tiny_official)
    # preprocessing: torchvision's Resize(72, bicubic) on the PIL image, as the official prepare_image
    assert np.array_equal(resize_short_side(data.coffee(), 72), ref["image"])
    pixels = torch.from_numpy(ref["image"].copy()).permute(2, 0, 1)[None]
    rel = torch.from_numpy(ref["points"])
    anchors = torch.cat([rel, torch.full_like(rel, 0.005)], -1)[None]
    with torch.no_grad():
        features = model.encode(pixels)
        np.testing.assert_allclose(features.mask_features.numpy(), ref["mask_features"], atol=1e-5)
        for i, level in enumerate(features.maps):
            np.testing.assert_allclose(level.numpy(), ref[f"map{i}"], atol=1e-5)
        single = model.decode(features, anchors[:, :1])
        joint = model.decode(features, anchors, group=6 * len(rel))  # clicks see each other, as officially
        isolated = model.decode(features, anchors)
    scale = np.abs(ref["single_masks"]).max()  # random weights give logits of about +-100
    assert scale > 10 and 0.02 < (ref["single_masks"] > 0).mean() < 0.5  # a meaningful comparison
    np.testing.assert_allclose(single["masks"][0, 0].numpy(), ref["single_masks"], atol=1e-5 * scale)
    np.testing.assert_allclose(single["iou"].numpy(), ref["single_iou"], atol=1e-5)
    np.testing.assert_allclose(joint["masks"][0].flatten(0, 1).numpy(), ref["multi_masks"], atol=1e-5 * scale)
    np.testing.assert_allclose(joint["iou"].numpy(), ref["multi_iou"], atol=1e-5)
    # our default decodes each click independently (as in training): it differs from the joint batch
    assert not np.allclose(isolated["masks"][0].flatten(0, 1).numpy(), ref["multi_masks"], atol=1e-3 * scale)
    assert torch.allclose(isolated["masks"][0, :1], single["masks"][0], atol=1e-4 * scale)


# ---------------------------------------------------------------------------- levels
def test_build_levels_orders_merges_and_checks_nesting():
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, :2, :2] = True  # level 1
    masks[1, :2, :2] = True  # level 2: the same mask, better score -> replaces level 1
    masks[2, :4, 4:] = True  # level 3: not containing level 2 -> nesting violation
    masks[3] = True  # level 4
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    out = build_levels(masks, scores, [1, 2, 3, 4])
    assert out.levels == (2, 3, 4) and out.areas == (4, 16, 64)
    assert out.containment == (0.0, 1.0) and out.violations == (2,)
    assert torch.equal(out.scores, torch.tensor([0.9, 0.5, 0.7]))
    assert build_levels(masks, scores, [1, 2, 3, 4], "part").levels == (2,)
    assert build_levels(masks, scores, [1, 2, 3, 4], "whole").levels == (4,)
    empty = build_levels(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2), [1, 2])
    assert len(empty) == 0


def test_prompt_anchors():
    anchors, is_box = prompt_anchors(torch.tensor([[50.0, 20.0]]), None, (40, 100))
    assert torch.allclose(anchors, torch.tensor([[0.5, 0.5, 0.005, 0.005]])) and not is_box.any()
    anchors, is_box = prompt_anchors(None, torch.tensor([[10.0, 0.0, 30.0, 40.0]]), (40, 100))
    assert torch.allclose(anchors, torch.tensor([[0.2, 0.5, 0.2, 1.0]])) and is_box.all()
    with pytest.raises(ValueError, match="one of them"):
        prompt_anchors(None, None, (4, 4))


def test_predict_levels_six_granularities(tiny_folder, coffee):
    from grounded.adapters.semantic_sam import SemanticSAM

    seg = SemanticSAM(model=str(tiny_folder), image_size=64, device="cpu")
    image = load_image(coffee, name="coffee")
    points = torch.tensor([[75.0, 50.0], [20.0, 80.0]])
    results = seg.predict(image, points=points)
    assert len(results) == 2 and seg.fixed_levels == 6
    model = seg.model
    with torch.inference_mode():
        raw = model.decode(seg.encode(image), prompt_anchors(points, None, image.size)[0][None])
    for r, logits in zip(results, raw["masks"][0], strict=True):
        assert r.masks.shape[1:] == image.size and r.masks.dtype == torch.bool
        assert list(r.levels) == sorted(r.levels) and set(r.levels) <= set(range(1, 7)) and len(r) >= 1
        assert r.areas == tuple(int(m.sum()) for m in r.masks)
        # level L is mask token (5, 1, 4, 0, 2, 3)[L - 1], upsampled to the original size
        token = (5, 1, 4, 0, 2, 3)[r.levels[0] - 1]
        up = torch.nn.functional.interpolate(logits[token][None, None], size=image.size, mode="bilinear")[
            0, 0
        ]
        assert torch.equal(r.masks[0], up > 0)
    picked = seg.predict(image, points=points[:1], levels=[2, 5])[0]
    assert set(picked.levels) <= {2, 5}
    assert len(seg.predict(image, points=points[:1], levels="whole")[0]) == 1
    with pytest.raises(ValueError, match="levels"):
        seg.predict(image, points=points[:1], levels=[7])
    boxes = seg.predict_levels(image, boxes=torch.tensor([[10.0, 10.0, 90.0, 70.0]]))
    assert len(boxes) == 1 and boxes[0].masks.shape[1:] == image.size


def test_adapter_segments_detection_boxes(tiny_folder, coffee):
    from grounded.adapters.semantic_sam import SemanticSAM
    from grounded.core.detections import Detections

    image = load_image(coffee, name="coffee")
    det = Detections(
        boxes=torch.tensor([[10.0, 10.0, 90.0, 70.0], [50.0, 20.0, 140.0, 95.0]]),
        scores=torch.tensor([0.9, 0.8]),
        class_ids=torch.tensor([0, 0]),
        classes=("cup",),
        phrases=("cup", "cup"),
        image_size=image.size,
    )
    outs = {}
    for granularity in ("best", "part", "whole"):
        seg = SemanticSAM(model=str(tiny_folder), image_size=64, granularity=granularity, device="cpu")
        (out,) = seg.run([image], [det])["detections"]
        assert out.masks is not None and out.masks.shape == (2, *image.size) and out.mask_scores is not None
        outs[granularity] = out
    levels = SemanticSAM(model=str(tiny_folder), image_size=64, device="cpu").predict(image, boxes=det.boxes)
    for i, lv in enumerate(levels):
        assert torch.equal(outs["part"].masks[i], lv.masks[0])
        assert torch.equal(outs["whole"].masks[i], lv.masks[-1])
        assert any(torch.equal(outs["best"].masks[i], m) for m in lv.masks)
    with pytest.raises(ValueError, match="granularity"):
        SemanticSAM(model=str(tiny_folder), granularity="middle")


def test_labels_from_the_object_and_part_heads(coffee):
    from grounded.models.testing import clip_tokenizer

    model = random_model("tiny", seed=1, text_encoder=TINY_TEXT)
    tokenizer = clip_tokenizer(max_length=TINY_TEXT.context_length)
    objects, parts = ("cup", "table", "spoon"), ("handle", "rim")
    assert model.text is not None
    vocab = Vocabulary(
        objects, model.text.embed_names(objects, tokenizer), parts, model.text.embed_names(parts, tokenizer)
    )
    assert torch.allclose(vocab.object_embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    pixels = torch.from_numpy(coffee).permute(2, 0, 1)[None]
    points = torch.tensor([[75.0, 50.0]])
    with torch.inference_mode():
        features = model.encode(pixels)
        (labelled,) = predict_levels(model, features, coffee.shape[:2], points=points, vocabulary=vocab)
        raw = model.decode(features, prompt_anchors(points, None, coffee.shape[:2])[0][None])
        assert isinstance(labelled, LabeledLevels) and len(labelled.labels) == len(labelled)
        for k, level in enumerate(labelled.levels):
            emb = raw["embeddings"][0, 0, (5, 1, 4, 0, 2, 3)[level - 1]]
            obj = model.class_logits(emb, vocab.object_embeddings).sigmoid()
            part = model.class_logits(emb, vocab.part_embeddings, part=True).sigmoid()  # type: ignore[arg-type]
            assert labelled.labels[k] == objects[int(obj.argmax())]
            assert labelled.part_labels[k] == parts[int(part.argmax())]
            assert labelled.label_scores[k] == pytest.approx(float(obj.max()), abs=1e-6)
    # a model with a text encoder round-trips through the official layout (lang_encoder.* keys)
    official = to_official_state_dict(model)
    assert "model.sem_seg_head.predictor.lang_encoder.lang_encoder.token_embedding.weight" in official
    config = config_from_official(official, nheads=8)
    assert config.text_encoder is not None and config.text_encoder.width == TINY_TEXT.width
    converted = convert_official_state_dict(official)
    assert set(converted) == set(model.state_dict())


def test_released_checkpoints_have_no_text_encoder(tiny_folder, coffee):
    from grounded.adapters.semantic_sam import SemanticSAM
    from grounded.models.sources import ModelSourceError

    seg = SemanticSAM(model=str(tiny_folder), labels=["cup"], tokenizer="x", device="cpu")
    with pytest.raises(ModelSourceError, match="no text encoder"):
        seg.warm_up()


def test_save_and_reload_keeps_outputs(tmp_path, coffee):
    model = random_model("tiny", seed=3)
    folder = save_semantic_sam(model, tmp_path / "m")
    again = load_semantic_sam(folder)
    pixels = torch.from_numpy(coffee).permute(2, 0, 1)[None]
    with torch.no_grad():
        a = model.encode(pixels).mask_features
        b = again.encode(pixels).mask_features
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- CLI
def test_cli_granularity_with_semantic_sam(tiny_folder, tmp_path, coffee):
    from PIL import Image

    from grounded.cli import main

    path = tmp_path / "coffee.png"
    Image.fromarray(coffee).save(path)
    out = tmp_path / "out"
    args = ["granularity", str(path), "--adapter", "semantic_sam", "--segmenter", str(tiny_folder)]
    args += ["--image-size", "64"]
    assert main([*args, "--point", "75,50", "--out", str(out), "--device", "cpu"]) == 0
    doc = json.loads((out / "coffee_levels.json").read_text())
    levels = doc["prompts"][0]["levels"]
    assert levels and all(1 <= lv["level"] <= 6 for lv in levels)
    assert (out / "coffee_levels.png").is_file()
    everything = [*args, "--everything", "--level", "3", "--points-per-side", "3", "--pred-iou-thresh", "-10"]
    assert main([*everything, "--out", str(out), "--device", "cpu"]) == 0
    doc = json.loads((out / "coffee_level3.json").read_text())
    assert doc["level"] == 3 and 1 <= len(doc["detections"]) <= 9
    assert {d["category"] for d in doc["detections"]} == {"level 3"}
    assert main([*everything, "--level", "7", "--out", str(out)]) == 2  # Semantic-SAM has 6 levels
    assert (
        main(["granularity", str(path), "--adapter", "semantic_sam", "--point", "1,1", "--out", str(out)])
        == 2
    )


@pytest.mark.slow
def test_swin_t_real_size_random_weights(tmp_path):
    """The released Swin-T size end to end (random weights, official-format file): 640-pixel short side, 6 levels."""
    import time

    from grounded.adapters.semantic_sam import SemanticSAM

    path = make_official_checkpoint(tmp_path / "swint_only_sam_many2many.pth", "swin_t", seed=0)
    seg = SemanticSAM(model=str(path), device="cpu")
    image = load_image(data.coffee(), name="coffee")  # 400 x 600 -> 640 x 960
    start = time.perf_counter()
    features = seg.encode(image)
    encoded = time.perf_counter()
    (levels,) = seg.predict(image, points=torch.tensor([[300.0, 200.0]]))
    decoded = time.perf_counter()
    assert features.image_size == (640, 960) and features.padded_size == (640, 960)
    assert levels.masks.shape[1:] == (400, 600) and 1 <= len(levels) <= 6
    print(
        f"\nSemantic-SAM Swin-T (CPU): encode {encoded - start:.2f} s, 6-level decode {decoded - encoded:.2f} s"
    )
