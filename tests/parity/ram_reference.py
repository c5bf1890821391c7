"""The official side of the RAM / RAM++ parity test: runs the original code (xinyu1205/recognize-anything) on a
tiny random model and writes the reference files tests/test_ram.py compares ``grounded.models.ram`` against.

Runs in a separate venv (the original needs transformers < 4.50 and timm), e.g.::

    python3 -m venv .ram-venv
    .ram-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 'timm<1.1' 'transformers<4.50' scipy scikit-image
    .ram-venv/bin/python tests/parity/ram_reference.py /path/to/recognize-anything [OUT_DIR [SEED]] [--real-size]

The original reads its sizes from files under its package folder (``CONFIG_PATH``: the Swin config, the tagging
head's ``q2l_config.json``, the per-class thresholds); the script points ``CONFIG_PATH`` at a temporary folder
holding tiny versions of them (Swin: 224 px, width 4, window 7; head: width 16, 4 heads, 2 layers; text width
512 as hard-coded; 20 tags; a small WordPiece vocabulary and captioning branch, present in the file as in the
released checkpoints). The original constructors (``RAM``, ``RAM_plus``) and their ``generate_tag`` are used
as they are; every parameter is then re-drawn from a seeded generator (the original's eval-time init leaves
``label_embed`` at zero, which would give every tag the same score), the classifier bias is centred on the
photo (its scores then straddle the thresholds), and RAM++ keeps 3 description embeddings per tag (the original
infers that count from ``label_embed``).

With ``--real-size`` the original's own configs, tag list and thresholds are used instead (Swin-L 384, 4585
tags, 51 descriptions per tag for RAM++, a 30522-word synthetic vocabulary for its tokenizer) and the files are
named ``*_swinl_*``: too large to commit, they feed the slow test ``test_parity_at_real_size`` through
``GROUNDED_RAM_REAL_REFERENCE=OUT_DIR``.

Writes ``ram_tiny_input.npz``: ``resized``, the astronaut photo after the original's resize (uint8), and per
variant (``ram``, ``ram_plus``):

- ``<variant>_tiny_official.pth``: ``{"model": state_dict}``, the released files' layout (captioning branch and
  Swin buffers included)
- ``<variant>_tiny_reference.npz``: ``logits`` (``fc`` output, before the sigmoid), ``tags`` (``generate_tag``'s
  string), ``tag_list``, ``thresholds``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

TAGS = [
    "astronaut",
    "cat",
    "coffee",
    "coffee cup",
    "dog",
    "flag",
    "helmet",
    "man",
    "person",
    "rocket",
    "space",
    "table",
    "woman",
    "car",
    "tree",
    "sky",
    "red",
    "white",
    "spoon",
    "saucer",
]
DESCRIPTIONS = 3  # RAM++: description embeddings per tag (51 in the released model)
SWIN = {
    "vision_width": 32,
    "image_res": 224,
    "window_size": 7,
    "embed_dim": 4,
    "depths": [1, 2, 2, 1],
    "num_heads": [1, 1, 2, 2],
}
WORDS = ["a", "picture", "of", "the", "and", "in", *sorted({w for t in TAGS for w in t.split()})]


def _bert(hidden: int, layers: int, vocab: int, encoder_width: int) -> dict[str, object]:
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * hidden,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 4,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab,
        "encoder_width": encoder_width,
        "add_cross_attention": True,
    }


def write_config_folder(root: Path, thresholds: list[float]) -> dict[str, Path]:
    """The tiny versions of the files the original reads: configs, tag list, thresholds, tokenizer."""
    (root / "configs" / "swin").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "tokenizer").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    vocab_size = len(vocab) + 2  # init_tokenizer adds [DEC] and [ENC]
    for name in ("config_swinL_224.json", "config_swinL_384.json"):
        (root / "configs" / "swin" / name).write_text(json.dumps({"ckpt": "", **SWIN}))
    (root / "configs" / "q2l_config.json").write_text(json.dumps(_bert(16, 2, vocab_size, 512)))
    (root / "configs" / "med_config.json").write_text(json.dumps(_bert(16, 2, vocab_size, 16)))
    (root / "data" / "ram_tag_list_threshold.txt").write_text(
        "\n".join(f"{t:.4f}" for t in thresholds) + "\n"
    )
    (root / "data" / "tags.txt").write_text("\n".join(TAGS) + "\n")
    return {
        "med_config": root / "configs" / "med_config.json",
        "tags": root / "data" / "tags.txt",
        "tokenizer": root / "tokenizer",
    }


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter re-drawn, in name order: weights ~ N(0, 1/fan_in), norms ~ 1, biases small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):  # tied parameters are listed once
            noise = torch.randn(param.shape, generator=generator)
            if name == "reweight_scale":
                param.copy_(math.log(1 / 0.07) + 0.1 * noise)
            elif ("norm" in name or "LayerNorm" in name) and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias") or name.endswith("relative_position_bias_table"):
                param.copy_(0.1 * noise)
            elif name == "label_embed":
                param.copy_(noise)
            else:
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(noise / math.sqrt(fan_in))


def write_tokenizer(folder: Path, size: int = 30522) -> Path:
    """A WordPiece vocabulary of bert-base-uncased's size (the real one cannot be downloaded here)."""
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [*special, *WORDS, *(f"w{i}" for i in range(size - len(special) - len(WORDS)))]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return folder


def build(
    variant: str, seed: int, root: Path, image: torch.Tensor, real_size: bool = False
) -> tuple[torch.nn.Module, np.ndarray]:
    """The original model with random weights, and its per-class thresholds: tiny configs, or (``real_size``)
    its own configs, tag list and thresholds as shipped (Swin-L 384, 4585 tags, 51 descriptions for RAM++)."""
    import ram.models  # noqa: F401  (the package's __init__ shadows the submodules by their functions)

    module = sys.modules["ram.models.ram_plus" if variant == "ram_plus" else "ram.models.ram"]
    cls = module.RAM_plus if variant == "ram_plus" else module.RAM
    if real_size:
        model = cls(image_size=384, vit="swin_l", text_encoder_type=str(write_tokenizer(root / "tokenizer")))
    else:
        generator = torch.Generator().manual_seed(seed + 1)
        thresholds = (0.3 + 0.4 * torch.rand(len(TAGS), generator=generator)).tolist()
        files = write_config_folder(root, thresholds)
        module.CONFIG_PATH = root  # where the original looks for its configs and thresholds
        model = cls(
            med_config=str(files["med_config"]),
            image_size=224,
            vit="swin_l",
            text_encoder_type=str(files["tokenizer"]),
            tag_list=str(files["tags"]),
            tag_list_chinese=str(files["tags"]),
        )
        if variant == "ram_plus":
            model.label_embed = torch.nn.Parameter(torch.zeros(len(TAGS) * DESCRIPTIONS, 512))
    model.eval()
    randomize(model, seed)
    # centre the classifier on the photo, so that its scores fall on both sides of the thresholds
    captured: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with torch.no_grad():
        model.generate_tag(image)
        model.fc.bias -= captured[-1].mean()
    hook.remove()
    return model, np.asarray(model.class_threshold.numpy(), dtype=np.float32)


def main(official_repo: str, out_dir: str, seed: int = 0, real_size: bool = False) -> None:
    sys.path.insert(0, str(Path(official_repo).resolve()))
    from PIL import Image
    from ram import get_transform
    from skimage import data
    from torchvision.transforms import Resize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size, name = (384, "swinl") if real_size else (224, "tiny")
    photo = Image.fromarray(data.astronaut())
    resized = np.asarray(Resize((size, size))(photo.convert("RGB")))
    image = get_transform(image_size=size)(photo).unsqueeze(0)
    np.savez_compressed(out / f"ram_{name}_input.npz", resized=resized)
    for variant in ("ram", "ram_plus"):
        with tempfile.TemporaryDirectory() as tmp:
            model, thresholds = build(variant, seed, Path(tmp), image, real_size)
        captured: list[torch.Tensor] = []
        model.fc.register_forward_hook(lambda _m, _i, out, store=captured: store.append(out.detach()))
        with torch.no_grad():
            tags, _ = model.generate_tag(image)
        logits = captured[-1].squeeze(-1).numpy()
        torch.save({"model": model.state_dict()}, out / f"{variant}_{name}_official.pth")
        np.savez_compressed(
            out / f"{variant}_{name}_reference.npz",
            logits=logits.astype(np.float32),
            tags=np.array(tags[0]),
            tag_list=np.array([str(t) for t in model.tag_list]),
            thresholds=thresholds,
            seed=np.array(seed),
        )
        probs = 1 / (1 + np.exp(-logits[0]))
        print(f"{variant}: {int((probs > thresholds).sum())} tags: {tags[0]!r}")
        del model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official_repo", help="a checkout of xinyu1205/recognize-anything")
    parser.add_argument("out_dir", nargs="?", default=str(Path(__file__).parent))
    parser.add_argument("seed", nargs="?", type=int, default=0)
    parser.add_argument(
        "--real-size",
        action="store_true",
        help="Swin-L 384 and the released tag list (files of ~2 GB: not committed)",
    )
    args = parser.parse_args()
    main(args.official_repo, args.out_dir, args.seed, args.real_size)
