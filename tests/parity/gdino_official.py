"""The official Grounding DINO side of the parity test; runs in the parity venv (see make_gdino_venv.sh).

Builds ``groundingdino-py``'s model from its ``GroundingDINO_SwinT_OGC.py`` config with random weights (every
parameter perturbed, so weights initialised to zero or 1e-4 matter too), saves the state dict the way the
official ``groundingdino_swint_ogc.pth`` stores it (``{"model": {"module.<key>": tensor}}``), and runs the
official ``load_image`` + ``predict`` forward on a photo. Writes to OUT_DIR:

- ``groundingdino_swint_ogc.pth``: the weights, official layout
- ``official.npz``: ``pixel_values`` (the official preprocessing), ``input_ids``, ``probs`` (sigmoid of
  ``pred_logits``, before thresholds) and ``boxes`` (``pred_boxes``, normalised cxcywh)

- ``anchor.npz`` (when a SAM ``.pth`` is given): the anchor pipeline as Grounded-SAM's ``grounded_sam_demo.py``
  wires it — ``predict`` with a box threshold keeping the ``ANCHOR_BOXES`` best queries, boxes to pixels,
  ``SamPredictor.set_image`` + ``apply_boxes_torch`` + ``predict_torch(multimask_output=False)``: ``threshold``,
  ``boxes_xyxy`` (pixels), ``masks`` (bool) and ``iou``

Usage: .parity-venv/bin/python tests/parity/gdino_official.py IMAGE CAPTION TEXT_ENCODER_DIR OUT_DIR [SEED [SAM_PTH]]
The SAM file must be a tiny segment-anything model (embed 32, depth 2, 2 heads, global block 1), as the test builds.
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


def main(
    image_path: str, caption: str, text_encoder: str, out_dir: str, seed: int = 0, sam_path: str | None = None
) -> None:
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
            param.add_(torch.randn_like(param) * 0.005)
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
    if sam_path is not None:
        anchor(model, image, image_path, caption, outputs["pred_logits"].sigmoid()[0], sam_path, out)


ANCHOR_BOXES = 5


def anchor(
    model, image, image_path: str, caption: str, probs: torch.Tensor, sam_path: str, out: Path
) -> None:
    """Grounding DINO ``predict`` -> ``SamPredictor.predict_torch`` on the same boxes (the anchor pipeline)."""
    from groundingdino.util.inference import load_image, predict
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam
    from torchvision.ops import box_convert

    # predict() keeps queries whose best token probability exceeds the threshold. Random weights saturate many
    # scores at exactly 1.0, so no threshold picks exactly 5: take the float just below the 5th best score, then
    # the first 5 boxes predict() returns (query order) go to SAM
    fifth = probs.max(dim=1).values.sort(descending=True).values[ANCHOR_BOXES - 1]
    threshold = float(torch.nextafter(fifth, torch.zeros_like(fifth)))
    boxes, _, _ = predict(model, image, caption, box_threshold=threshold, text_threshold=0.25, device="cpu")
    kept = len(boxes)
    boxes = boxes[:ANCHOR_BOXES]
    image_source, _ = load_image(image_path)
    height, width = image_source.shape[:2]
    boxes_xyxy = box_convert(boxes * torch.tensor([width, height, width, height]), "cxcywh", "xyxy")
    sam = _build_sam(
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=[1],
        checkpoint=None,
    )
    sam.load_state_dict(torch.load(sam_path, map_location="cpu", weights_only=True))
    predictor = SamPredictor(sam.eval())
    predictor.set_image(image_source)
    transformed = predictor.transform.apply_boxes_torch(boxes_xyxy, image_source.shape[:2])
    with torch.no_grad():
        masks, iou, _ = predictor.predict_torch(
            point_coords=None, point_labels=None, boxes=transformed, multimask_output=False
        )
    np.savez(
        out / "anchor.npz",
        threshold=np.float32(threshold),
        kept=np.int64(kept),
        boxes_xyxy=boxes_xyxy.numpy(),
        masks=masks[:, 0].numpy(),
        iou=iou[:, 0].numpy(),
    )


if __name__ == "__main__":
    main(*sys.argv[1:5], *(int(a) for a in sys.argv[5:6]), *sys.argv[6:7])
