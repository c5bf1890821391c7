"""The official Grounding DINO side of the parity test; runs in the parity venv (see make_gdino_venv.sh).

Builds ``groundingdino-py``'s model from its ``GroundingDINO_SwinT_OGC.py`` config with random weights (every
parameter perturbed, so weights initialised to zero or 1e-4 matter too), saves the state dict the way the
official ``groundingdino_swint_ogc.pth`` stores it (``{"model": {"module.<key>": tensor}}``), and runs the
official ``load_image`` + ``predict`` forward on a photo. Writes to OUT_DIR:

- ``groundingdino_swint_ogc.pth``: the weights, official layout
- ``official.npz``: ``pixel_values`` (the official preprocessing), ``input_ids``, ``probs`` (sigmoid of
  ``pred_logits``, before thresholds) and ``boxes`` (``pred_boxes``, normalised cxcywh)

Usage: .parity-venv/bin/python tests/parity/gdino_official.py IMAGE CAPTION TEXT_ENCODER_DIR OUT_DIR [SEED]
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


def main(image_path: str, caption: str, text_encoder: str, out_dir: str, seed: int = 0) -> None:
    import groundingdino
    from groundingdino.models import build_model
    from groundingdino.util.inference import load_image, preprocess_caption
    from groundingdino.util.slconfig import SLConfig
    from transformers import BertConfig, BertModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the official code loads BERT with from_pretrained: give it a local folder with the tokenizer, the config
    # and random weights (they are overwritten below anyway)
    bert_dir = out / "text_encoder"
    shutil.copytree(text_encoder, bert_dir, dirs_exist_ok=True)
    BertModel(BertConfig.from_pretrained(bert_dir)).save_pretrained(bert_dir)

    config = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    args = SLConfig.fromfile(str(config))
    args.text_encoder_type = str(bert_dir)
    args.device = "cpu"
    torch.manual_seed(seed)
    model = build_model(args)
    with torch.no_grad():
        for param in model.parameters():  # shared modules (bbox_embed) are visited once
            param.add_(torch.randn_like(param) * 0.02)
    model.eval()
    torch.save(
        {"model": {f"module.{k}": v for k, v in model.state_dict().items()}},
        out / "groundingdino_swint_ogc.pth",
    )

    _, image = load_image(image_path)
    caption = preprocess_caption(caption)
    start = time.perf_counter()
    with torch.no_grad():
        outputs = model(image[None], captions=[caption])
    print(f"official forward: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    input_ids = model.tokenizer(caption, return_tensors="pt")["input_ids"][0]
    np.savez(
        out / "official.npz",
        pixel_values=image.numpy(),
        input_ids=input_ids.numpy(),
        probs=outputs["pred_logits"].sigmoid()[0].numpy(),  # as predict() computes them, before thresholds
        boxes=outputs["pred_boxes"][0].numpy(),
    )


if __name__ == "__main__":
    main(*sys.argv[1:5], *(int(a) for a in sys.argv[5:6]))
