"""Time the anchor path: the official packages wired as Grounded-SAM's ``grounded_sam_demo.py`` wires them.

Runs with the Python of the official venv (``tests/parity/make_gdino_venv.sh`` → ``.parity-venv``), never with
grounded's. Per image, as the demo does once its models are loaded (load time is not timed):

1. detector: the demo's ``load_image`` transform (``RandomResize([800], max_size=1333)``, ``ToTensor``,
   ``Normalize``) on the PIL image, then ``groundingdino.util.inference.predict`` (the forward, sigmoid, the
   box-threshold filter and the phrases: what the demo's own ``get_grounding_output`` does) with box / text
   thresholds 0.35 / 0.25 (GroundingDINO's README values; the demo's CLI defaults are 0.3 / 0.25)
2. SAM image encoder: ``SamPredictor.set_image`` on the RGB uint8 array
3. SAM mask decoder: the boxes to pixel ``xyxy`` (cxcywh × [W, H, W, H]), ``transform.apply_boxes_torch``,
   ``predict_torch(boxes=..., multimask_output=False)`` with every box at once (full-resolution masks)

fp32 on the CPU, ``torch.set_num_threads(--threads)``; one warm-up run, then ``--repeats`` timed runs; the
medians go to stdout as ONE JSON line (everything else the official code prints goes to stderr).

Where this differs from the demo: the image comes from ``skimage.data`` in memory (the demo decodes a file
twice, with PIL and OpenCV: not model work); the demo keeps every box above the threshold, this keeps at most
``--max-boxes`` (default 5, the highest scores; 0 keeps all) so that SAM decodes as many boxes as
``grounded bench`` does (random weights put an arbitrary number of queries above 0.35).

With ``--hq FILE`` (``sam_hq_vit_b.pth``, needs ``segment-anything-hq`` in the venv), the same boxes also go
through HQ-SAM's ``SamPredictor`` (``hq_token_only`` left at False, as the demo leaves it): ``hq_*`` fields.

Usage (weights from ``benchmarks/anchor_weights.py``)::

    .parity-venv/bin/python benchmarks/anchor_path.py --gdino-checkpoint groundingdino_swint_ogc.pth \\
        --gdino-config .../groundingdino/config/GroundingDINO_SwinT_OGC.py --text-encoder bert/ \\
        --sam-checkpoint sam_vit_b.pth --image astronaut --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

warnings.filterwarnings("ignore")

BOX_THRESHOLD = 0.35
TEXT_THRESHOLD = 0.25
VIT_B = (768, 12, 12, [2, 5, 8, 11])  # embed dim, depth, heads, global-attention blocks

# in the official model but not in the released files (recomputed buffers, BERT's unused pooler)
_NOT_IN_FILES = re.compile(
    r"(\.relative_position_index|\.attn_mask|^bert\.pooler\..*|^bert\.embeddings\..*_ids)$"
)


def default_gdino_config() -> Path:
    """The official Swin-T OGC config shipped in the ``groundingdino`` package."""
    import groundingdino

    return Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"


def load_gdino(config: Path, checkpoint: Path, text_encoder: Path) -> Any:
    """The demo's ``load_model``, with BERT (tokenizer and weights) from a local folder instead of the hub."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from groundingdino.util.utils import clean_state_dict

    args = SLConfig.fromfile(str(config))
    args.device = "cpu"
    args.text_encoder_type = str(
        text_encoder
    )  # groundingdino-py's switch (the demo's fork: bert_base_uncased_path)
    with contextlib.redirect_stdout(sys.stderr):
        model = build_model(args)
    state_dict = clean_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model.load_state_dict(state_dict, strict=False)  # strict=False as the demo: checked below instead
    _check_loaded(model, state_dict, "Grounding DINO")
    return model.eval()


def _sam_sizes(state_dict: dict[str, torch.Tensor]) -> tuple[int, int, int, list[int]]:
    embed = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[0])
    depth = 1 + max(
        int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
    )
    rel = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    grid = int(state_dict["image_encoder.pos_embed"].shape[1])
    global_blocks = [i for i, r in enumerate(rel) if int(r.shape[0]) == 2 * grid - 1]
    return embed, depth, embed // int(rel[0].shape[1]), global_blocks


def load_sam(checkpoint: Path, hq: bool) -> Any:
    """``SamPredictor(sam_model_registry["vit_b"](checkpoint=...))`` as the demo builds it (segment-anything,
    or segment-anything-hq for HQ-SAM); another ViT size (tests) goes through the same ``_build_sam``."""
    if hq:
        from segment_anything_hq import SamPredictor, sam_model_registry
        from segment_anything_hq.build_sam import _build_sam
    else:
        from segment_anything import SamPredictor, sam_model_registry
        from segment_anything.build_sam import _build_sam

    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    embed, depth, heads, global_blocks = _sam_sizes(state_dict)
    with contextlib.redirect_stdout(sys.stderr):  # sam-hq prints its load report
        if (embed, depth, heads, global_blocks) == VIT_B:
            sam = sam_model_registry["vit_b"](checkpoint=str(checkpoint))
        else:
            sam = _build_sam(embed, depth, heads, global_blocks, checkpoint=str(checkpoint))
    _check_loaded(sam, state_dict, "HQ-SAM" if hq else "SAM")
    return SamPredictor(sam.eval())


def _check_loaded(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """Every tensor of the file is in the model, unchanged, and the model has nothing else but buffers it
    recomputes (the demo loads with strict=False and would run half-random weights silently)."""
    own = model.state_dict()
    unused = sorted(set(state_dict) - set(own))
    missing = sorted(k for k in set(own) - set(state_dict) if not _NOT_IN_FILES.search(k))
    changed = sorted(k for k in state_dict if k in own and not torch.equal(own[k], state_dict[k]))
    if unused or missing or changed:
        raise SystemExit(
            f"{name} checkpoint does not match the official model: unused {unused[:3]}, missing {missing[:3]}, "
            f"not loaded {changed[:3]}"
        )


class Anchor:
    """The per-image work of grounded_sam_demo.py with models loaded once."""

    def __init__(
        self,
        gdino: Any,
        predictor: Any,
        prompt: str,
        max_boxes: int,
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
    ) -> None:
        import groundingdino.datasets.transforms as T

        self.gdino, self.predictor, self.prompt, self.max_boxes = gdino, predictor, prompt, max_boxes
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.phrases: list[str] = []
        self.transform = T.Compose(
            [
                T.RandomResize([800], max_size=1333),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        self.above_threshold = 0
        self.scores = torch.zeros(0)

    def detect(self, image_pil: Any) -> torch.Tensor:
        """Normalised cxcywh boxes above the box threshold (at most ``max_boxes``, best first)."""
        from groundingdino.util.inference import predict

        image, _ = self.transform(image_pil, None)
        boxes, scores, phrases = predict(
            self.gdino, image, self.prompt, self.box_threshold, self.text_threshold, device="cpu"
        )
        self.above_threshold = len(boxes)
        if self.max_boxes and len(boxes) > self.max_boxes:
            best = scores.argsort(descending=True, stable=True)[: self.max_boxes]
            boxes, scores = boxes[best], scores[best]
            phrases = [phrases[int(i)] for i in best]
        self.scores, self.phrases = scores, list(phrases)
        return boxes

    def encode(self, image: np.ndarray, predictor: Any | None = None) -> None:
        (predictor or self.predictor).set_image(image)

    def decode(self, boxes: torch.Tensor, size: tuple[int, int], predictor: Any | None = None) -> Any:
        """Pixel xyxy boxes → SAM masks (one per box, ``multimask_output=False``): masks, IoU, boxes."""
        predictor = predictor or self.predictor
        width, height = size
        xyxy = boxes * torch.tensor([width, height, width, height], dtype=boxes.dtype)
        xyxy[:, :2] -= xyxy[:, 2:] / 2
        xyxy[:, 2:] += xyxy[:, :2]
        transformed = predictor.transform.apply_boxes_torch(xyxy, (height, width))
        with torch.no_grad():
            masks, iou, _ = predictor.predict_torch(
                point_coords=None, point_labels=None, boxes=transformed, multimask_output=False
            )
        return masks, iou, xyxy


def bench_image(name: str) -> np.ndarray:
    """RGB uint8 pixels of a ``skimage.data`` image; ``NAME@SIZE`` resized to SIZE px squared (bilinear), as
    ``grounded.tasks.bench.bench_image`` makes them."""
    from PIL import Image
    from skimage import data

    base, _, size = name.partition("@")
    pixels = getattr(data, base)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    pixels = pixels[..., :3]
    if size:
        pixels = np.asarray(Image.fromarray(pixels).resize((int(size), int(size)), Image.BILINEAR))
    return np.ascontiguousarray(pixels)


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def run(
    anchor: Anchor, image: np.ndarray, repeats: int, hq: Any | None = None
) -> tuple[dict[str, float], Any]:
    """One warm-up, then ``repeats`` timed runs; median seconds per stage and the last run's outputs."""
    from PIL import Image

    size = (image.shape[1], image.shape[0])
    times: dict[str, list[float]] = {}
    outputs: Any = None
    for index in range(1 + repeats):
        start = time.perf_counter()
        pil = Image.fromarray(image)
        detector_s, boxes = _timed(anchor.detect, pil)
        encoder_s, _ = _timed(anchor.encode, image)
        decoder_s, outputs = _timed(anchor.decode, boxes, size)
        run_times = {
            "detector_s": detector_s,
            "sam_encoder_s": encoder_s,
            "sam_decoder_s": decoder_s,
            "end_to_end_s": time.perf_counter() - start,
        }
        if hq is not None:  # the same boxes through HQ-SAM, end to end with the detector time of this run
            hq_encoder_s, _ = _timed(anchor.encode, image, hq)
            hq_decoder_s, hq_outputs = _timed(anchor.decode, boxes, size, hq)
            run_times |= {
                "hq_sam_encoder_s": hq_encoder_s,
                "hq_sam_decoder_s": hq_decoder_s,
                "hq_end_to_end_s": detector_s + hq_encoder_s + hq_decoder_s,
            }
            outputs = (*outputs, hq_outputs)
        print(f"run {index}{' (warm-up)' if index == 0 else ''}: {run_times}", file=sys.stderr)
        if index:
            for key, value in run_times.items():
                times.setdefault(key, []).append(value)
    return {k: statistics.median(v) for k, v in times.items()}, outputs


def write_demo_outputs(
    image: np.ndarray, masks: Any, xyxy: torch.Tensor, labels: list[str], out: Path
) -> None:
    """What ``grounded_sam_demo.py`` writes per image: the matplotlib figure of the image with every mask
    (random colour, alpha 0.6) and box + label (``grounded_sam_output.jpg``, dpi 300), and ``save_mask_data``'s
    instance map figure (``mask.jpg``) and ``mask.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    plt.figure(figsize=(10, 10))
    plt.imshow(image)
    axes = plt.gca()
    for mask in masks:
        color = np.concatenate([np.random.random(3), np.array([0.6])], axis=0)
        m = mask.cpu().numpy()
        axes.imshow(m.reshape(m.shape[-2], m.shape[-1], 1) * color.reshape(1, 1, -1))
    for box, label in zip(xyxy.numpy(), labels, strict=True):
        x0, y0 = box[0], box[1]
        axes.add_patch(
            plt.Rectangle((x0, y0), box[2] - x0, box[3] - y0, edgecolor="green", facecolor=(0, 0, 0, 0), lw=2)
        )
        axes.text(x0, y0, label)
    plt.axis("off")
    plt.savefig(out / "grounded_sam_output.jpg", bbox_inches="tight", dpi=300, pad_inches=0.0)
    plt.close("all")
    mask_img = torch.zeros(masks.shape[-2:])
    for idx, mask in enumerate(masks):
        mask_img[mask.cpu().numpy()[0]] = idx + 1
    plt.figure(figsize=(10, 10))
    plt.imshow(mask_img.numpy())
    plt.axis("off")
    plt.savefig(out / "mask.jpg", bbox_inches="tight", dpi=300, pad_inches=0.0)
    plt.close("all")
    data = [{"value": 0, "label": "background"}]
    for idx, (label, box) in enumerate(zip(labels, xyxy.numpy().tolist(), strict=True)):
        data.append({"value": idx + 1, "label": label, "box": box})
    (out / "mask.json").write_text(json.dumps(data))


def whole_process(anchor: Anchor, images: list[str], out: Path) -> dict[str, float]:
    """Each image once, as the demo runs (no warm-up): the stages and the demo's outputs, in seconds."""
    from PIL import Image

    totals = {"detector_s": 0.0, "sam_encoder_s": 0.0, "sam_decoder_s": 0.0, "outputs_s": 0.0, "boxes": 0.0}
    for name in images:
        pixels = bench_image(name)
        size = (pixels.shape[1], pixels.shape[0])
        detector_s, boxes = _timed(anchor.detect, Image.fromarray(pixels))
        encoder_s, _ = _timed(anchor.encode, pixels)
        decoder_s, (masks, _iou, xyxy) = _timed(anchor.decode, boxes, size)
        labels = [f"{p}({float(s):.2f})" for p, s in zip(anchor.phrases, anchor.scores, strict=True)]
        outputs_s, _ = _timed(write_demo_outputs, pixels, masks, xyxy, labels, out / name.replace("@", "_"))
        for key, value in zip(
            totals, (detector_s, encoder_s, decoder_s, outputs_s, float(len(xyxy))), strict=True
        ):
            totals[key] += value
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gdino-checkpoint", type=Path, required=True, help="groundingdino_swint_ogc.pth")
    parser.add_argument(
        "--gdino-config", type=Path, help="official config (default: the package's SwinT OGC)"
    )
    parser.add_argument(
        "--text-encoder", type=Path, required=True, help="local BERT tokenizer + model folder"
    )
    parser.add_argument("--sam-checkpoint", type=Path, required=True, help="sam_vit_b.pth (official layout)")
    parser.add_argument("--hq", type=Path, help="sam_hq_vit_b.pth: also time HQ-SAM on the same boxes")
    parser.add_argument(
        "--image",
        default="astronaut",
        help="skimage.data image; NAME@SIZE resized square (as grounded bench)",
    )
    parser.add_argument("--prompt", default="person . flag . helmet . face . rocket")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--max-boxes", type=int, default=5, help="boxes SAM decodes, best first (0: all)")
    parser.add_argument("--dump", type=Path, help="write the last run's boxes, masks and IoU to this .npz")
    parser.add_argument("--box-threshold", type=float, default=BOX_THRESHOLD)
    parser.add_argument("--text-threshold", type=float, default=TEXT_THRESHOLD)
    parser.add_argument(
        "--whole",
        help="comma-separated images: run each once as the demo does, writing its outputs to --out",
    )
    parser.add_argument("--out", type=Path, help="output folder of --whole")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = bench_image(args.image)
    start = time.perf_counter()
    gdino = load_gdino(args.gdino_config or default_gdino_config(), args.gdino_checkpoint, args.text_encoder)
    predictor = load_sam(args.sam_checkpoint, hq=False)
    hq, hq_note = None, None
    if args.hq is not None:
        try:
            hq = load_sam(args.hq, hq=True)
        except ImportError as exc:
            hq_note = f"HQ-SAM skipped: segment-anything-hq is not installed in this venv ({exc})"
            print(hq_note, file=sys.stderr)
    load_s = time.perf_counter() - start
    anchor = Anchor(gdino, predictor, args.prompt, args.max_boxes, args.box_threshold, args.text_threshold)
    if args.whole:
        if args.out is None:
            parser.error("--whole needs --out")
        with torch.no_grad():
            totals = whole_process(anchor, [v for v in args.whole.split(",") if v], args.out)
        print(json.dumps({"load_s": round(load_s, 2), **{k: round(v, 3) for k, v in totals.items()}}))
        return 0
    with torch.no_grad():
        medians, outputs = run(anchor, image, args.repeats, hq)
    masks, iou, xyxy = outputs[:3]
    result: dict[str, Any] = {k: round(v, 4) for k, v in medians.items()}
    result |= {
        "boxes": len(xyxy),
        "boxes_above_threshold": anchor.above_threshold,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "image": args.image,
        "load_s": round(load_s, 2),
    }
    if hq_note:
        result["hq_note"] = hq_note
    if args.dump is not None:
        extra = {}
        if hq is not None:
            hq_masks, hq_iou, _ = outputs[3]
            extra = {"hq_masks": hq_masks[:, 0].numpy(), "hq_iou": hq_iou[:, 0].numpy()}
        np.savez(
            args.dump,
            boxes_xyxy=xyxy.numpy(),
            scores=anchor.scores.numpy(),
            masks=masks[:, 0].numpy(),
            iou=iou[:, 0].numpy(),
            **extra,
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
