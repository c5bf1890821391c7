"""Recognize Anything (RAM / RAM++): tiny random models, official-format loading, parity with the original code
(reference files written by tests/parity/ram_reference.py), the tagger adapter and the ram_grounded_sam pipeline."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from grounded.core.images import load_image
from grounded.core.prompts import Prompt
from grounded.engine import load_pipeline
from grounded.models.ram import (
    Ram,
    RamCheckpointError,
    RamConfig,
    RamModel,
    config_from_official_state_dict,
    convert_official_state_dict,
    default_tags,
    default_thresholds,
    load_ram,
    preprocess,
    save_ram,
    to_official_state_dict,
)
from grounded.models.ram.testing import TINY_TAGS, make_ram, random_ram
from grounded.models.ram.transform import resize
from grounded.models.sources import ModelSourceError
from grounded.runtime.device import autocast

PARITY = Path(__file__).parent / "parity"


@pytest.fixture(scope="module")
def tiny_ram(tmp_path_factory):
    return make_ram(tmp_path_factory.mktemp("ram"), "ram", seed=0)


@pytest.fixture(scope="module")
def tiny_ram_plus(tmp_path_factory):
    return make_ram(tmp_path_factory.mktemp("ram_plus"), "ram_plus", seed=0)


@pytest.fixture(scope="module")
def photos(image_files):
    return [load_image(image_files[n]) for n in ("astronaut", "coffee", "chelsea")]


@pytest.fixture(scope="module")
def scored(photos):
    """A tiny random RAM and its scores of the photos."""
    ram = random_ram("ram", seed=0)
    return ram, ram.probabilities([p.pixels for p in photos])


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("variant", ["ram", "ram_plus"])
def test_forward_shapes(variant, photos):
    ram = random_ram(variant, seed=0)
    config = ram.config
    pixels = preprocess([p.pixels for p in photos], config.image_size)
    assert pixels.shape == (3, 3, 224, 224)
    with torch.no_grad():
        embeds = ram.model.image_embeds(pixels)
        queries = ram.model.label_queries(embeds)
        logits = ram.model(pixels)
    grid = config.image_size // config.patch_size // 2 ** (len(config.depths) - 1)
    assert embeds.shape == (3, 1 + grid * grid, config.text_dim)
    assert queries.shape == (3, len(TINY_TAGS), config.head_hidden_size)
    assert logits.shape == (3, len(TINY_TAGS)) and torch.isfinite(logits).all()
    assert ram.model.label_embed.shape == (len(TINY_TAGS) * config.descriptions_per_class, 512)
    # RAM's tag queries are the same for every image; RAM++ mixes its descriptions per image
    same = torch.allclose(queries[0], queries[1])
    assert same == (variant == "ram")


def test_config_presets_and_dict_round_trip():
    large = RamConfig.swin_large("ram_plus")
    assert (large.image_size, large.embed_dim, large.depths, large.vision_width) == (
        384,
        192,
        (2, 2, 18, 2),
        1536,
    )
    assert large.descriptions_per_class == 51 and RamConfig.swin_large().descriptions_per_class == 1
    assert RamConfig.from_dict(large.to_dict()) == large
    with pytest.raises(ValueError, match="variant"):
        RamConfig(variant="tag2text")
    with pytest.raises(ValueError, match="unknown RAM config"):
        RamConfig.from_dict({"variant": "ram", "vit": "swin_l"})


@pytest.mark.parametrize("variant", ["ram", "ram_plus"])
def test_real_size_key_mapping_on_meta_tensors(variant):
    """Swin-L 384 + 4585 tags (51 descriptions for RAM++): official keys ↔ ours, config read off the shapes."""
    config = RamConfig.swin_large(variant)
    with torch.device("meta"):
        ours = RamModel(config)
    official = to_official_state_dict(ours.state_dict())
    assert "visual_encoder.layers.2.blocks.17.attn.qkv.weight" in official
    assert "tagging_head.encoder.layer.1.crossattention.self.key.weight" in official
    assert official["label_embed"].shape == (4585 * config.descriptions_per_class, 512)
    assert config_from_official_state_dict(official) == config
    with torch.device("meta"):
        rebuilt = RamModel(config)
    rebuilt.load_state_dict(convert_official_state_dict(official), strict=True, assign=True)


# ------------------------------------------------------------------------------------------------ thresholds
def test_thresholds_are_per_class_and_strict(scored):
    model, probs = scored
    ram = Ram(model.model, model.tags, model.thresholds.clone())
    assert probs.shape == (3, len(TINY_TAGS)) and ((probs > 0) & (probs < 1)).all()
    base = ram.select(probs)
    assert base == [
        [t for t, p, th in zip(TINY_TAGS, row, ram.thresholds, strict=True) if p > th] for row in probs
    ]
    assert any(base) and not all(len(t) == len(TINY_TAGS) for t in base)  # both sides of the thresholds occur
    # hand-set thresholds flip one tag of the first image off and another on, and no other of its tags
    on = next(i for i, t in enumerate(TINY_TAGS) if t in base[0])
    off = next(i for i, t in enumerate(TINY_TAGS) if t not in base[0])
    ram.thresholds[on] = float(probs[0, on]) + 0.01
    ram.thresholds[off] = float(probs[0, off]) - 0.01
    flipped = [t for i, t in enumerate(TINY_TAGS) if (t in base[0]) != (i in (on, off))]
    assert ram.select(probs[:1])[0] == flipped
    ram.thresholds[off] = float(probs[0, off])  # kept only when the score is strictly above, as the original
    assert TINY_TAGS[off] not in ram.select(probs[:1])[0]
    # one threshold for all classes replaces the per-class ones
    assert ram.select(probs, threshold=0.0) == [TINY_TAGS] * 3
    assert ram.select(probs, threshold=0.9999) == [[], [], []]
    mid = float(probs[1].median())
    assert ram.select(probs, threshold=mid)[1] == [
        t for t, p in zip(TINY_TAGS, probs[1], strict=True) if p > mid
    ]


def test_exclude_and_max_tags(scored):
    ram, probs = scored
    everything = ram.select(probs, threshold=0.0)
    assert ram.select(probs, threshold=0.0, exclude=["cat", "dog"])[0] == [
        t for t in TINY_TAGS if t not in ("cat", "dog")
    ]
    top3 = ram.select(probs, threshold=0.0, max_tags=3)
    for row, tags, full in zip(probs, top3, everything, strict=True):
        best = {TINY_TAGS[i] for i in row.argsort(descending=True)[:3].tolist()}
        assert set(tags) == best and tags == [t for t in full if t in best]  # the best 3, in tag-list order
    with pytest.raises(ValueError, match="not in the tag list"):
        ram.select(probs, exclude=["unicorn"])


def test_packaged_tag_list():
    tags, thresholds = default_tags(), default_thresholds()
    assert len(tags) == len(thresholds) == 4585 == len(set(tags))
    assert tags[:3] == ["3D CG rendering", "3D glasses", "abacus"]
    assert all(0.4 < t <= 1 for t in thresholds) and thresholds.count(0.65) > 3000
    Prompt.of(tags)  # every tag is a valid detector class (no '.', none empty)


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("variant", ["ram", "ram_plus"])
def test_official_format_load_equals_folder_load(variant, tiny_ram, tiny_ram_plus, photos):
    files = tiny_ram if variant == "ram" else tiny_ram_plus
    from_folder = load_ram(files.folder)
    from_pth = load_ram(files.checkpoint, tags=files.tags, thresholds=files.thresholds)
    assert from_folder.config == from_pth.config and from_folder.config.variant == variant
    assert from_folder.tags == from_pth.tags == TINY_TAGS
    assert torch.equal(from_folder.thresholds, from_pth.thresholds)
    a, b = from_folder.model.state_dict(), from_pth.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pixels = [p.pixels for p in photos]
    assert torch.equal(from_folder.probabilities(pixels), from_pth.probabilities(pixels))
    # the .pth holds the original's key names
    official = torch.load(files.checkpoint, weights_only=True)["model"]
    assert "visual_encoder.layers.0.blocks.0.attn.qkv.weight" in official and "fc.weight" in official
    assert ("reweight_scale" in official) == (variant == "ram_plus")


def test_save_and_reload(tmp_path, photos):
    ram = random_ram("ram_plus", seed=3)
    ram.thresholds[:] = 0.5
    again = load_ram(save_ram(ram, tmp_path / "copy"))
    assert again.tags == ram.tags and torch.equal(again.thresholds, ram.thresholds)
    pixels = [p.pixels for p in photos[:1]]
    assert torch.equal(again.probabilities(pixels), ram.probabilities(pixels))


def test_wrong_files_get_clear_errors(tmp_path, tiny_ram, tiny_ram_plus):
    expected = "ram_swin_large_14m.pth"
    sam_like = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(2, 3, 16, 16)}, sam_like)
    with pytest.raises(
        RamCheckpointError, match=f"unrecognised checkpoint.*{expected}.*ram_plus_swin_large_14m"
    ):
        load_ram(sam_like)
    tag2text = tmp_path / "tag2text_swin_14m.pth"
    torch.save({"model": {"label_embed.weight": torch.zeros(3, 4), "fc.W": torch.zeros(1, 3, 4)}}, tag2text)
    with pytest.raises(RamCheckpointError, match="Tag2Text"):
        load_ram(tag2text)
    code = tmp_path / "code.pth"
    with code.open("wb") as f:
        pickle.dump({"model": {"x": print}}, f, protocol=2)
    with pytest.raises(RamCheckpointError, match=f"refusing.*{expected}"):
        load_ram(code)
    with pytest.raises(RamCheckpointError, match=f"does not exist.*{expected}"):
        load_ram(tmp_path / "missing.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        RamCheckpointError, match=f"not a RAM folder.*config.json.*model.safetensors.*{expected}"
    ):
        load_ram(empty)
    # a tiny official file has 20 tags, not the released 4585: the tag list must be given, and fit
    with pytest.raises(RamCheckpointError, match="has 20 tags, not the released 4585: pass its tag list"):
        load_ram(tiny_ram.checkpoint)
    with pytest.raises(RamCheckpointError, match="20 tags, but the tag list has 3"):
        load_ram(tiny_ram.checkpoint, tags=["a", "b", "c"])
    with pytest.raises(
        RamCheckpointError, match="RAM\\+\\+ checkpoint's label_embed has 60 rows.*list's 7 tags"
    ):
        load_ram(tiny_ram_plus.checkpoint, tags=TINY_TAGS[:7])


def test_unknown_keys_are_refused(tmp_path, tiny_ram):
    state = torch.load(tiny_ram.checkpoint, weights_only=True)["model"]
    state["tagging_head.encoder.layer.0.crossattention.self.extra.weight"] = torch.zeros(2)
    path = tmp_path / "extra.pth"
    torch.save({"model": state}, path)
    with pytest.raises(RamCheckpointError, match="unexpected.*extra"):
        load_ram(path, tags=tiny_ram.tags)


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("variant", ["ram", "ram_plus"])
def test_parity_with_the_original_code(variant, astronaut):
    """Logits and tags of the original code (tests/parity/ram_reference.py, its tiny random model and the
    astronaut photo) through our converter and model."""
    reference = np.load(PARITY / f"{variant}_tiny_reference.npz")
    resized = np.load(PARITY / "ram_tiny_input.npz")["resized"]
    assert np.array_equal(resize(astronaut, 224), resized)  # the same resize as torchvision's on a PIL image
    ram = load_ram(
        PARITY / f"{variant}_tiny_official.pth",
        tags=[str(t) for t in reference["tag_list"]],
        thresholds=reference["thresholds"].tolist(),
    )
    assert ram.config.variant == variant and ram.config.image_size == 224
    with torch.no_grad():
        logits = ram.model(preprocess([astronaut], 224)).numpy()
    diff = float(np.abs(logits - reference["logits"]).max())
    print(f"\n{variant} parity: max |logit difference| = {diff:.2e}")
    assert diff < 1e-5
    tags = ram.select(ram.probabilities([astronaut]))[0]
    assert " | ".join(tags) == str(reference["tags"])
    assert 0 < len(tags) < len(ram.tags)  # a mix of tags above and below their thresholds


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ram", "ram_plus"])
def test_parity_at_real_size(variant, astronaut):
    """Swin-L 384 with the released tag list and thresholds (``ram_reference.py --real-size``, ~2 GB of files)."""
    folder = Path(os.environ.get("GROUNDED_RAM_REAL_REFERENCE", "/nonexistent"))
    if not (folder / f"{variant}_swinl_official.pth").is_file():
        pytest.skip("set GROUNDED_RAM_REAL_REFERENCE to the folder written by ram_reference.py --real-size")
    reference = np.load(folder / f"{variant}_swinl_reference.npz")
    assert np.array_equal(resize(astronaut, 384), np.load(folder / "ram_swinl_input.npz")["resized"])
    ram = load_ram(folder / f"{variant}_swinl_official.pth")  # the packaged tag list and thresholds
    assert ram.config == RamConfig.swin_large(variant)
    assert ram.tags == [str(t) for t in reference["tag_list"]]
    assert torch.equal(ram.thresholds, torch.from_numpy(reference["thresholds"]))
    with torch.no_grad():
        logits = ram.model(preprocess([astronaut], 384)).numpy()
    diff = float(np.abs(logits - reference["logits"]).max())
    print(f"\n{variant} Swin-L parity: max |logit difference| = {diff:.2e}")
    assert diff < 1e-4
    assert " | ".join(ram.select(ram.probabilities([astronaut]))[0]) == str(reference["tags"])


def test_official_keys_round_trip():
    official = torch.load(PARITY / "ram_tiny_official.pth", weights_only=True)["model"]
    ours = convert_official_state_dict(official)
    back = to_official_state_dict(ours)
    used = {
        k for k in official if not k.startswith(("tag_encoder.", "text_decoder.")) and "attn_mask" not in k
    }
    used = {k for k in used if not k.endswith("relative_position_index")}
    assert set(back) == used and all(torch.equal(back[k], official[k]) for k in used)
    assert any(k.startswith("text_decoder.") for k in official)  # the captioning branch was in the file


# ------------------------------------------------------------------------------------------------ adapter
def test_ram_tagger_returns_prompts(tiny_ram, photos):
    from grounded.adapters.ram import RamTagger

    tagger = RamTagger(model=str(tiny_ram.folder), batch_size=2, device="cpu")
    out = tagger.run(photos)
    ram = load_ram(tiny_ram.folder)
    expected = ram.select(ram.probabilities([p.pixels for p in photos]))
    assert len(out["tags"]) == len(out["captions"]) == 3
    for tags, caption, want in zip(out["tags"], out["captions"], expected, strict=True):
        assert isinstance(tags, Prompt)
        assert tags == (Prompt.of(want) if want else Prompt(("object",)))
        assert caption == " | ".join(want)
    assert [tagger.run([p])["captions"][0] for p in photos] == out["captions"]  # batching changes nothing
    # options: one threshold, at most 2 tags, excluded tags, fallback
    capped = RamTagger(model=str(tiny_ram.folder), threshold=0.0, max_tags=2, exclude=["cat"], device="cpu")
    assert all(len(t.classes) == 2 and "cat" not in t.classes for t in capped.run(photos[:2])["tags"])
    none = RamTagger(model=str(tiny_ram.folder), threshold=0.9999, fallback="thing", device="cpu").run(
        photos[:2]
    )
    assert none["tags"] == [Prompt(("thing",))] * 2 and none["captions"] == [""] * 2
    # bf16 autocast: the same scores to bf16's precision
    with autocast(torch.device("cpu"), "bf16"):
        low = ram.probabilities([p.pixels for p in photos])
    assert low.dtype == torch.float32
    assert float((low - ram.probabilities([p.pixels for p in photos])).abs().max()) < 0.05
    assert RamTagger(model=str(tiny_ram.folder), precision="bf16", device="cpu").run(photos[:1])["tags"]


def test_ram_tagger_official_file_and_errors(tiny_ram, tiny_ram_plus, photos, tmp_path):
    from grounded.adapters.ram import RamPlusTagger, RamTagger

    from_pth = RamTagger(
        model=str(tiny_ram.checkpoint),
        tag_list=str(tiny_ram.tags),
        thresholds=str(tiny_ram.thresholds),
        device="cpu",
    )
    assert (
        from_pth.run(photos)["captions"]
        == RamTagger(model=str(tiny_ram.folder), device="cpu").run(photos)["captions"]
    )
    assert RamTagger(model=str(tiny_ram_plus.folder), device="cpu").run(photos[:1])[
        "tags"
    ]  # RAM++ weights too
    with pytest.raises(ModelSourceError, match="'ram' model; the ram_plus adapter takes ram_plus"):
        RamPlusTagger(model=str(tiny_ram.folder), device="cpu").warm_up()
    with pytest.raises(ModelSourceError, match="does not exist.*ram_swin_large_14m.pth"):
        RamTagger(model=str(tmp_path / "ram_swin_large_14m.pth"), device="cpu").warm_up()
    with pytest.raises(ValueError, match="not in the tag list"):
        RamTagger(model=str(tiny_ram.folder), exclude=["unicorn"], device="cpu").warm_up()
    with pytest.raises(ValueError, match="threshold"):
        RamTagger(threshold=1.5)


def test_ram_pipeline_detects_the_tags(tiny_ram, tiny_gdino, tiny_sam, photos):
    import grounded.adapters.ram  # noqa: F401  (registers ram until grounded.adapters imports it)

    pipe = load_pipeline(
        "ram_grounded_sam",
        overrides={
            "tagger": {"model": str(tiny_ram.folder), "max_tags": 4},
            "detector": {"model": str(tiny_gdino), "box_threshold": 0.0, "top_k": 3},
            "segmenter": {"model": str(tiny_sam)},
        },
        shared={"device": "cpu"},
    )
    out = pipe.run(images=photos)
    assert len(out["detections"]) == len(out["tags"]) == len(out["captions"]) == 3
    assert any(caption for caption in out["captions"])
    for det, tags, caption, image in zip(
        out["detections"], out["tags"], out["captions"], photos, strict=True
    ):
        assert det.classes == tags.classes  # the detector was prompted with this image's tags
        assert tags.classes == (tuple(caption.split(" | ")) if caption else ("object",))
        assert len(det) == 3 and det.masks is not None and tuple(det.masks.shape[1:]) == image.size
        assert np.all(det.scores.numpy() >= 0)


def test_annotate_cli_with_the_ram_tagger(tiny_ram, tiny_gdino, tiny_sam, image_files, tmp_path):
    from grounded.cli import main

    out = tmp_path / "dataset"
    code = main(
        [
            "annotate",
            str(image_files["astronaut"]),
            str(image_files["coffee"]),
            "--out",
            str(out),
            "--tagger",
            "ram",
            "--tagger-model",
            str(tiny_ram.folder),
            "--detector",
            str(tiny_gdino),
            "--segmenter",
            str(tiny_sam),
            "--box-threshold",
            "0.0",
            "--top-k",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    coco = json.loads((out / "coco" / "annotations" / "instances_train.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["astronaut.png", "coffee.jpg"]
    assert len(coco["annotations"]) == 4
    # each annotation's class is one of the tags RAM gave its image (tiny random weights: whatever they are)
    from grounded.adapters.ram import RamTagger

    tagger = RamTagger(model=str(tiny_ram.folder), device="cpu")
    tags = tagger.run([load_image(image_files[n]) for n in ("astronaut", "coffee")])["tags"]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        assert names[ann["category_id"]] in tags[ann["image_id"] - coco["images"][0]["id"]].classes
