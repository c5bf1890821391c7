"""Real-size architectures (Grounding DINO Swin-T + BERT-base, SAM ViT-B) with random weights. Slow: on request."""

import json

import numpy as np
import pytest
from PIL import Image

from grounded.cli import main
from grounded.core.rle import decode_rle
from grounded.models.testing import make_grounding_dino, make_sam

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return make_grounding_dino(root / "gdino", size="swin-t"), make_sam(root / "sam", size="vit-b")


def test_real_size_configs_have_the_released_shapes(real_models):
    from transformers import AutoConfig

    gdino, sam = (AutoConfig.from_pretrained(p) for p in real_models)
    assert gdino.d_model == 256 and gdino.num_queries == 900 and gdino.text_config.vocab_size == 30522
    assert gdino.backbone_config.embed_dim == 96 and gdino.backbone_config.depths == [2, 2, 6, 2]
    assert sam.vision_config.hidden_size == 768 and sam.vision_config.num_hidden_layers == 12


def test_segment_end_to_end_with_real_size_models(real_models, image_files, tmp_path):
    gdino, sam = real_models
    out = tmp_path / "out"
    argv = ["segment", str(image_files["coffee"]), "--prompt", "cup . saucer . spoon", "--out", str(out)]
    argv += ["--detector", str(gdino), "--segmenter", str(sam), "--box-threshold", "0", "--top-k", "3", "-q"]
    assert main(argv) == 0
    records = json.loads((out / "coffee.json").read_text())["detections"]
    labels = np.array(Image.open(out / "coffee_labels.png"))
    assert len(records) == 3 and labels.shape == (400, 600)
    for i, rec in enumerate(records):
        mask = decode_rle(rec["segmentation"])
        assert mask.shape == (400, 600) and rec["category"] in ("cup", "saucer", "spoon")
        assert np.all(mask[labels == i + 1])  # every pixel labelled i+1 is in mask i
