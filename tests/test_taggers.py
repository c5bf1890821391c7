"""BLIP tagger on a tiny random BLIP, and noun-phrase extraction on hand-written captions."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, BlipForConditionalGeneration

from grounded.core.images import load_image
from grounded.core.noun_phrases import noun_phrases
from grounded.core.prompts import Prompt
from grounded.engine import load_pipeline
from grounded.models.testing import make_blip

CAPTIONS = [
    ("a man riding a red bicycle next to a brown dog", ["man", "red bicycle", "brown dog"]),
    ("arafed man and a woman sitting on a bench with a dog", ["man", "woman", "bench", "dog"]),
    ("a close up of a cat laying on a couch", ["cat", "couch"]),
    ("a picture of a cup of coffee on a wooden table", ["cup", "coffee", "wooden table"]),
    ("a red and white bus parked on the side of the road", ["red and white bus", "road"]),
    ("an image of two dogs playing in the grass, with a frisbee", ["dogs", "grass", "frisbee"]),
    ("a group of people standing around a table with laptops", ["people", "table", "laptops"]),
    ("there is a black cat that is sitting on the floor", ["black cat", "floor"]),
    ("the astronaut's helmet and a flag", ["astronaut", "helmet", "flag"]),
    ("A dog. A dog! the dog", ["dog"]),
    ("a picture", []),
    ("", []),
]


@pytest.mark.parametrize(("caption", "expected"), CAPTIONS)
def test_noun_phrases(caption, expected):
    assert noun_phrases(caption) == expected


def test_custom_stop_phrases():
    assert noun_phrases("a dog on a wooden table", stop_phrases={"table"}) == ["dog"]
    assert noun_phrases("a picture of a dog", stop_phrases=()) == ["picture", "dog"]


@pytest.fixture(scope="module")
def tiny_blip(models_dir):
    return make_blip(models_dir / "blip", seed=0)


@pytest.fixture(scope="module")
def images(image_files):
    return [load_image(image_files[n]) for n in ("astronaut", "coffee", "chelsea")]


def test_blip_tagger_captions_match_transformers_and_feed_phrases(tiny_blip, images):
    from grounded.adapters.taggers import BlipTagger

    tagger = BlipTagger(model=str(tiny_blip), max_new_tokens=12, batch_size=2, device="cpu")
    out = tagger.run(images)
    model = BlipForConditionalGeneration.from_pretrained(tiny_blip).eval()
    processor = AutoProcessor.from_pretrained(tiny_blip)
    with torch.no_grad():
        ids = model.generate(
            **processor(images=[im.pixels for im in images], return_tensors="pt"), max_new_tokens=12
        )
    expected = [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]
    assert out["captions"] == expected
    assert all(len(c.split()) >= 3 for c in expected)  # real words of the vocabulary, no filler tokens
    for caption, tags in zip(out["captions"], out["tags"], strict=True):
        phrases = noun_phrases(caption)
        assert tags == (Prompt.of(phrases[:16]) if phrases else Prompt(("object",)))
    # one image at a time gives the same tags
    assert [tagger.run([im])["tags"][0] for im in images] == out["tags"]


def test_blip_pipeline_detects_the_tags(tiny_blip, tiny_gdino, tiny_sam, images):
    pipe = load_pipeline(
        "blip_grounded_sam",
        overrides={
            "tagger": {"model": str(tiny_blip), "max_new_tokens": 12},
            "detector": {"model": str(tiny_gdino), "box_threshold": 0.0, "top_k": 3},
            "segmenter": {"model": str(tiny_sam)},
        },
        shared={"device": "cpu"},
    )
    out = pipe.run(images=images)
    assert len(out["detections"]) == len(out["tags"]) == 3
    for det, tags, image in zip(out["detections"], out["tags"], images, strict=True):
        assert det.classes == tags.classes  # the detector was prompted with this image's tags
        assert len(det) == 3 and det.masks is not None and tuple(det.masks.shape[1:]) == image.size
        assert all(isinstance(p, str) and p for p in det.phrases)
        assert np.all(det.scores.numpy() >= 0)
