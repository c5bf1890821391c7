"""SAM and HQ-SAM segmenters on ``transformers`` (``SamModel`` / ``SamHQModel``): boxes → masks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from grounded.adapters.common import ModelAdapter
from grounded.core.checks import batches, finite, one_of
from grounded.core.detections import Detections, fits_dense
from grounded.core.images import LoadedImage
from grounded.core.levels import Levels, LevelSelection, order_levels, select_levels
from grounded.core.lru import LruCache
from grounded.core.rle import encode_masks, encode_window
from grounded.core.upsample import Window, upsample_windows
from grounded.engine import register_adapter
from grounded.models.sources import (
    ModelSourceError,
    load_config_checked,
    load_from_source,
    load_weights,
    resolve_source,
)
from grounded.models.tinyvit import is_tinyvit_config, load_tinyvit_sam
from grounded.runtime.compat import fix_sam_hq_decoder
from grounded.runtime.device import autocast
from grounded.runtime.fast_decoder import (
    CHUNK,
    decode_many,
    decode_many_hq,
    decode_many_sam2,
    supports_decode_many,
    supports_decode_many_hq,
    supports_decode_many_sam2,
)
from grounded.runtime.fast_kernels import accelerate_sam, compile_modules

__all__ = ["SAM", "SAM2", "SAMHQ", "ImageEmbedding"]

_log = logging.getLogger(__name__)

# float32 bytes allowed for masks being upsampled at once (full-resolution float masks are large)
_UPSAMPLE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImageEmbedding:
    """One image encoded by the SAM vision encoder (what the mask decoder needs)."""

    embedding: torch.Tensor  # (1, C, h, w)
    intermediate: tuple[torch.Tensor, ...]  # HQ-SAM's early ViT features; empty for SAM
    original_size: tuple[int, int]
    reshaped_size: tuple[int, int]


@register_adapter("sam")
class SAM(ModelAdapter):
    """Box prompts → masks with SAM, or HQ-SAM when the model is one (``model_type == "sam_hq"``).

    Each image is encoded once; all of its boxes go through the mask decoder in one batched call (split into
    ``max_boxes_per_call`` groups only for very many boxes). Masks are upsampled to the original image size
    by the processor's ``post_process_masks`` a few at a time and kept as bool on the device, or, where one
    image's masks would not fit :data:`~grounded.core.detections.DENSE_MASK_BYTES` (many boxes on a very
    large image), encoded to RLE as they are upsampled, so memory stays bounded.

    Args:
        model: hub id or local transformers-format folder (SAM or HQ-SAM).
        multimask_output: ask the decoder for 3 masks per box and keep the one with the best predicted IoU.
        hq_token_only: HQ-SAM only: use the HQ mask alone instead of SAM + HQ (the official default is False).
        mask_threshold: logit threshold for binarising masks.
        granularity: which of the decoder's masks a box keeps: ``"best"`` (highest predicted IoU),
            ``"part"`` (the finest) or ``"whole"`` (the coarsest); see :meth:`predict_levels` for all of them.
        batch_size: images per vision-encoder pass.
        max_boxes_per_call: boxes per decoder call.
        cache_size: image embeddings kept, keyed on image content (0 disables the cache).
        device, precision: as for the detector.
        fast_kernels: SAM / HQ-SAM ViT attention adds its relative-position bias a block of queries at a
            time instead of materialising it for all (:mod:`grounded.runtime.fast_kernels`), bit-identical;
            SAM's, HQ-SAM's and SAM 2's mask decoders compute the image side shared by all prompts once
            (:mod:`grounded.runtime.fast_decoder`), the same masks up to float rounding.
        compile: ``torch.compile`` the image encoder (the first call is slow).
    """

    outputs: ClassVar[dict[str, Any]] = {"detections": list[Detections]}
    expects_hq: ClassVar[bool] = False
    #: masks upsampled in windows (:func:`~grounded.core.upsample.upsample_windows`), not by the processor
    windowed_upsampling: ClassVar[bool] = True
    model_types: ClassVar[tuple[str, ...]] = ("sam", "sam_hq")
    what: ClassVar[str] = "segmenter"

    def __init__(
        self,
        model: str = "facebook/sam-vit-base",
        multimask_output: bool = False,
        hq_token_only: bool = False,
        mask_threshold: float = 0.0,
        granularity: str = "best",
        batch_size: int = 2,
        max_boxes_per_call: int = 64,
        cache_size: int = 8,
        device: str = "auto",
        precision: str = "fp32",
        fast_kernels: bool = True,
        compile: bool = False,
    ) -> None:
        if batch_size < 1 or max_boxes_per_call < 1 or cache_size < 0:
            raise ValueError("batch_size and max_boxes_per_call must be at least 1, cache_size at least 0")
        one_of("granularity", granularity, ("best", "part", "whole"))
        finite(mask_threshold=mask_threshold)
        super().__init__()
        self._cache: LruCache[str, ImageEmbedding] = LruCache(cache_size)

    def load(self) -> tuple[Any, Any]:
        """The processor and the model: SAM, HQ-SAM (decoder fixed), SAM 2, or our TinyViT port in SamModel."""
        from transformers import AutoModel, AutoProcessor

        source = self._params["model"]
        config = load_config_checked(source, "segmenter", self.model_types, self.registry_name)
        if self.expects_hq and config.model_type != "sam_hq":
            raise ModelSourceError(
                f"segmenter {source!r} is plain SAM; the sam_hq adapter needs an HQ-SAM model"
            )
        if self.hq_token_only and config.model_type != "sam_hq":
            _log.warning("hq_token_only has no effect: %s is plain SAM, not HQ-SAM", source)
        load_processor = functools.partial(AutoProcessor.from_pretrained, **self.processor_options())
        processor = load_from_source(load_processor, source, "segmenter")
        if is_tinyvit_config(config):  # MobileSAM / Light HQ-SAM: our TinyViT port inside SamModel
            model = load_tinyvit_sam(resolve_source(source, "segmenter")[0])
        else:
            model = load_weights(AutoModel.from_pretrained, source, "segmenter")
        if config.model_type == "sam_hq":
            fix_sam_hq_decoder(model)  # transformers' SAM-HQ decoder differs from the official one
        return processor, model

    def prepare(self) -> None:
        if self.fast_kernels:
            accelerate_sam(self._model)
        if self.compile:
            compile_modules(self._model.vision_encoder)

    def processor_options(self) -> dict[str, Any]:
        """SAM's images are resized with the PIL backend: it matches the official ``ResizeLongestSide`` exactly,
        the torchvision backend differs by up to 0.02 in normalised pixel values."""
        return {"backend": "pil"}

    @property
    def is_hq(self) -> bool:
        """Whether the loaded model has HQ-SAM's high-quality output token."""
        self.warm_up()
        return bool(self._model.config.model_type == "sam_hq")

    # ------------------------------------------------------------------ encoder
    @torch.inference_mode()
    def encode(self, images: Sequence[LoadedImage]) -> list[ImageEmbedding]:
        """Vision-encoder embeddings of the images, ``batch_size`` at a time.

        Embeddings are cached by image content (:attr:`LoadedImage.key`), least recently used first out, at
        most ``cache_size`` of them: a new prompt on the same image does not re-encode it.
        """
        self.warm_up()
        found: dict[str, ImageEmbedding] = {}
        for im in images:
            cached = self._cache.get(im.key)
            if cached is not None:
                found[im.key] = cached
        missing = list({im.key: im for im in images if im.key not in found}.values())
        for batch in batches(missing, self.batch_size):
            for image, embedding in zip(batch, self._encode_batch(batch), strict=True):
                found[image.key] = embedding
        for key in dict.fromkeys(im.key for im in images):
            self._cache.put(key, found[key])
        return [found[im.key] for im in images]

    @torch.inference_mode()
    def _encode_batch(self, batch: Sequence[LoadedImage]) -> list[ImageEmbedding]:
        inputs = self._processor.image_processor(
            [im.pixels for im in batch], return_tensors="pt", input_data_format="channels_last"
        )
        pixel_values = inputs["pixel_values"].to(self.device)
        with autocast(self.device, self.precision):
            encoded = self._model.get_image_embeddings(pixel_values)
        embeddings, intermediate = encoded if self.is_hq else (encoded, ())
        return [  # SAM pads to a square: the boxes are scaled to the resized, unpadded image
            ImageEmbedding(
                embedding=embeddings[b : b + 1],
                intermediate=tuple(t[b : b + 1] for t in intermediate),
                original_size=tuple(int(v) for v in inputs["original_sizes"][b]),  # type: ignore[arg-type]
                reshaped_size=tuple(int(v) for v in inputs["reshaped_input_sizes"][b]),  # type: ignore[arg-type]
            )
            for b in range(len(batch))
        ]

    # ------------------------------------------------------------------ decoder
    def _prompts(
        self, embedding: ImageEmbedding, boxes: torch.Tensor | None, points: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Box ``(N, 4)`` or point ``(N, 2)`` prompts in pixels → the decoder's scaled inputs (batch of 1)."""
        height, width = embedding.original_size
        sx, sy = embedding.reshaped_size[1] / width, embedding.reshaped_size[0] / height
        if boxes is not None:
            scale = torch.tensor([sx, sy, sx, sy], device=self.device)
            return {"input_boxes": (boxes.to(self.device, torch.float32) * scale)[None]}
        assert points is not None
        scaled = points.to(self.device, torch.float32) * torch.tensor([sx, sy], device=self.device)
        return {
            "input_points": scaled[None, :, None, :],
            "input_labels": torch.ones((1, len(points), 1), dtype=torch.long, device=self.device),
        }

    @torch.inference_mode()
    def _decode_raw(
        self,
        embedding: ImageEmbedding,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits ``(N, M, h, w)`` and predicted IoU ``(N, M)`` for N box or point prompts."""
        n = len(boxes) if boxes is not None else len(points)  # type: ignore[arg-type]
        if self.fast_kernels and self._shares_decoder():
            return self._decode_shared(embedding, boxes, points, multimask)
        low_parts, iou_parts = [], []
        for start in range(0, n, self.max_boxes_per_call):
            stop = start + self.max_boxes_per_call
            prompts = self._prompts(
                embedding,
                None if boxes is None else boxes[start:stop],
                None if points is None else points[start:stop],
            )
            with autocast(self.device, self.precision):
                out = self._model(multimask_output=multimask, **prompts, **self._decoder_inputs(embedding))
            low_parts.append(out.pred_masks[0].float())
            iou_parts.append(out.iou_scores[0].float())
        return torch.cat(low_parts), torch.cat(iou_parts)

    def _shares_decoder(self) -> bool:
        """Whether this model's decoder has a batched form in :mod:`grounded.runtime.fast_decoder`."""
        return supports_decode_many_hq(self._model) if self.is_hq else supports_decode_many(self._model)

    def _decode_many(
        self,
        embedding: ImageEmbedding,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask: bool,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batched decoder of :meth:`_shares_decoder` on one image's prompt embeddings."""
        if self.is_hq:
            return decode_many_hq(
                self._model,
                embedding.embedding,
                embedding.intermediate,
                sparse,
                dense,
                multimask,
                self.hq_token_only,
                chunk=chunk,
            )
        return decode_many(self._model, embedding.embedding, sparse, dense, multimask, chunk=chunk)

    def _decode_shared(
        self,
        embedding: ImageEmbedding,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_decode_raw` through :func:`~grounded.runtime.fast_decoder.decode_many` (SAM's decoder with
        the prompt-independent image side computed once; the same masks up to float rounding), or its HQ-SAM
        and SAM 2 siblings."""
        prompts = self._prompts(embedding, boxes, points)
        with autocast(self.device, self.precision):
            sparse, dense = self._model.prompt_encoder(
                input_points=prompts.get("input_points"),
                input_labels=prompts.get("input_labels"),
                input_boxes=prompts.get("input_boxes"),
                input_masks=None,
            )
            chunk = min(CHUNK, self.max_boxes_per_call)
            low_res, iou = self._decode_many(embedding, sparse, dense[:1], multimask, chunk)
        return low_res[0].float(), iou[0].float()

    def decode(self, embedding: ImageEmbedding, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``(N, H, W)`` bool at the original size and their predicted IoU ``(N,)`` for xyxy pixel boxes.

        With ``granularity="best"`` each box keeps the mask with the highest predicted IoU; ``"part"`` /
        ``"whole"`` keep the finest / coarsest level of :meth:`predict_levels`.
        """
        height, width = embedding.original_size
        if len(boxes) == 0:
            return (
                torch.zeros((0, height, width), dtype=torch.bool, device=self.device),
                torch.zeros((0,), device=self.device),
            )
        parts = list(self._decode_parts(embedding, boxes))
        return torch.cat([m for m, _ in parts]), torch.cat([sc for _, sc in parts])

    def _decode_parts(
        self, embedding: ImageEmbedding, boxes: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`decode`'s masks and scores a few boxes at a time, in order (bounded full-size memory)."""
        if self.granularity != "best":  # the finest / coarsest level, exactly as predict_levels orders them
            low_res, iou = self._decode_raw(embedding, boxes=boxes, multimask=True)
            for prompt_low, prompt_iou in zip(low_res, iou, strict=True):
                candidates = self._upsample(prompt_low[:, None], embedding)
                ordered = order_levels(candidates, prompt_iou.to(candidates.device))
                levels = select_levels(ordered, "part" if self.granularity == "part" else "whole")
                if len(levels) == 0:  # every candidate empty
                    yield candidates[:1] & False, prompt_iou[:1].to(candidates.device)
                else:
                    yield levels.masks, levels.scores
            return
        low_res, iou = self._decode_raw(embedding, boxes=boxes, multimask=self.multimask_output)
        rows = torch.arange(len(boxes), device=low_res.device)
        pick = iou.argmax(dim=-1)
        picked, scores = low_res[rows, pick][:, None], iou[rows, pick]
        for start, masks in self._upsample_parts(picked, embedding):
            yield masks, scores[start : start + len(masks)]

    def predict_levels(
        self,
        image: LoadedImage,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        levels: LevelSelection = "all",
    ) -> list[Levels]:
        """Every granularity level for each point ``(N, 2)`` or box ``(N, 4)`` prompt, finest first.

        The decoder's 3 candidates per prompt are ordered by area, near-duplicates (IoU ≥ 0.9) merged and
        nesting checked (see :mod:`grounded.core.levels`).
        """
        if (points is None) == (boxes is None):
            raise ValueError("give points or boxes (one of them)")
        (embedding,) = self.encode([image])
        low_res, iou = self._decode_raw(embedding, boxes=boxes, points=points, multimask=True)
        out = []
        for prompt_low, prompt_iou in zip(low_res, iou, strict=True):
            masks = self._upsample(prompt_low[:, None], embedding)
            out.append(select_levels(order_levels(masks, prompt_iou.to(masks.device)), levels))
        return out

    def predict(
        self,
        image: LoadedImage,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        levels: LevelSelection = "all",
    ) -> list[Levels]:
        """The granularity interface shared with Semantic-SAM: :meth:`predict_levels`."""
        return self.predict_levels(image, points=points, boxes=boxes, levels=levels)

    @torch.inference_mode()
    def decode_prompt(
        self,
        embedding: ImageEmbedding,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        box: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One interactive prompt on an encoded image (the decoder only; the image encoder does not run).

        ``points`` ``(K, 2)`` pixels with ``labels`` ``(K,)`` (1 positive, 0 negative), a ``box`` ``(4,)`` xyxy
        pixels, and/or ``mask_input``: the low-res logits ``(h, w)`` of an earlier answer, as SAM's demo feeds
        back for refinement. Returns bool masks ``(M, H, W)``, predicted IoU ``(M,)`` and low-res logits
        ``(M, h, w)``; ``M`` is 3 with ``multimask``, else 1.
        """
        if points is None and box is None and mask_input is None:
            raise ValueError("give points, a box and/or a mask input")
        self.warm_up()
        prompts: dict[str, torch.Tensor] = {}
        if box is not None:
            prompts.update(self._prompts(embedding, box.reshape(1, 4), None))
        if points is not None and len(points):
            scaled = self._prompts(embedding, None, points.reshape(-1, 2))["input_points"]
            point_labels = torch.ones(len(points)) if labels is None else labels.reshape(-1)
            prompts["input_points"] = scaled.reshape(1, 1, -1, 2)
            prompts["input_labels"] = point_labels.to(self.device, torch.long).reshape(1, 1, -1)
        if mask_input is not None:
            prompts["input_masks"] = mask_input.to(self.device, torch.float32).reshape(
                1, 1, *mask_input.shape[-2:]
            )
        with autocast(self.device, self.precision):
            out = self._model(multimask_output=multimask, **prompts, **self._decoder_inputs(embedding))
        low_res, iou = out.pred_masks[0, 0].float(), out.iou_scores[0, 0].float()
        return self._upsample(low_res[:, None], embedding), iou, low_res

    def _decoder_inputs(self, embedding: ImageEmbedding) -> dict[str, Any]:
        """The image side of a mask-decoder call."""
        if self.is_hq:
            return {
                "image_embeddings": embedding.embedding,
                "hq_token_only": self.hq_token_only,
                "intermediate_embeddings": list(embedding.intermediate),
            }
        return {"image_embeddings": embedding.embedding}

    def _post_process(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """The processor's upsampling of ``(n, 1, h, w)`` logits to ``(n, 1, H, W)`` bool masks."""
        post = self._processor.image_processor.post_process_masks
        return post(
            [low_res],
            [embedding.original_size],
            [embedding.reshaped_size],
            mask_threshold=self.mask_threshold,
        )[0]

    def _upsample(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """Low-res logits ``(n, 1, h, w)`` → bool masks ``(n, H, W)``, a few at a time to bound float memory."""
        parts = [masks for _, masks in self._upsample_parts(low_res, embedding)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)  # one part: no copy of the whole stack

    def _windows(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> Iterator[Window] | None:
        """The processor's upsampling of ``(n, 1, h, w)`` logits, each mask computed only in the window where
        it can be on (:func:`~grounded.core.upsample.upsample_windows`); None where not available."""
        if not self.windowed_upsampling:
            return None
        pad = self._processor.image_processor.pad_size
        return upsample_windows(
            low_res[:, 0],
            (int(pad["height"]), int(pad["width"])),
            embedding.reshaped_size,
            embedding.original_size,
            self.mask_threshold,
        )

    def _upsample_parts(
        self, low_res: torch.Tensor, embedding: ImageEmbedding
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, masks)``: :meth:`_upsample` in groups whose float upsampling (or, computed in windows,
        bool masks) fits ``_UPSAMPLE_BYTES``."""
        height, width = embedding.original_size
        windows = self._windows(low_res, embedding)
        if windows is not None:
            step = max(1, _UPSAMPLE_BYTES // max(height * width, 1))
            masks = None
            for window in windows:
                start = window.index - window.index % step
                if window.index == start:
                    if masks is not None:
                        yield start - step, masks.to(self.device)
                    masks = torch.zeros((min(step, len(low_res) - start), height, width), dtype=torch.bool)
                assert masks is not None
                (r0, r1), (c0, c1) = window.rows, window.cols
                masks[window.index - start, r0:r1, c0:c1] = torch.from_numpy(window.mask)
            if masks is not None:
                yield len(low_res) - len(masks), masks.to(self.device)
            return
        step = max(1, _UPSAMPLE_BYTES // (4 * max(height * width, 1024 * 1024)))
        for i in range(0, len(low_res), step):
            yield i, self._post_process(low_res[i : i + step], embedding)[:, 0].to(self.device)

    def segment(self, images: Sequence[LoadedImage], detections: Sequence[Detections]) -> list[Detections]:
        """Attach a mask and its predicted IoU to every detection's box."""
        if len(images) != len(detections):
            raise ValueError(f"got {len(detections)} detection sets for {len(images)} images")
        for image, det in zip(images, detections, strict=True):
            if det.image_size != image.size:
                raise ValueError(
                    f"detections for size {det.image_size} do not match image {image.name} {image.size}"
                )
        self.warm_up()
        out: list[Detections] = []
        for det in detections:  # images without boxes are not encoded
            height, width = det.image_size
            empty = torch.zeros((0, height, width), dtype=torch.bool, device=det.device)
            out.append(det if len(det) else det.with_masks(empty, torch.zeros((0,), device=det.device)))
        todo = [i for i, det in enumerate(detections) if len(det)]
        for idxs in batches(todo, self.batch_size):  # encode a batch, decode it, drop its embeddings
            for i, embedding in zip(idxs, self.encode([images[i] for i in idxs]), strict=True):
                out[i] = self._attach(detections[i], embedding)
        return out

    def _attach(self, det: Detections, embedding: ImageEmbedding) -> Detections:
        """``det`` with its masks: dense where they fit the budget, else RLE encoded part by part."""
        if fits_dense(len(det), det.image_size):
            masks, scores = self.decode(embedding, det.boxes)
            return det.with_masks(masks.to(det.device), scores.to(det.device))
        rles: list[dict[str, Any]] = []
        if self.granularity == "best" and self.windowed_upsampling:  # from each mask's window alone
            low_res, iou = self._decode_raw(embedding, boxes=det.boxes, multimask=self.multimask_output)
            rows = torch.arange(len(det), device=low_res.device)
            pick = iou.argmax(dim=-1)
            for w in self._windows(low_res[rows, pick][:, None], embedding) or ():
                rles.append(encode_window(w.mask, w.rows[0], w.cols[0], det.image_size))
            return det.with_mask_rles(rles, iou[rows, pick].to(det.device))
        score_parts = []
        for masks, scores in self._decode_parts(embedding, det.boxes):
            rles.extend(encode_masks(masks))
            score_parts.append(scores)
            del masks
        return det.with_mask_rles(rles, torch.cat(score_parts).to(det.device))

    def run(self, images: list[LoadedImage], detections: list[Detections]) -> dict[str, Any]:
        """Port entry: segment every detection's box."""
        return {"detections": self.segment(images, detections)}


@register_adapter("sam_hq")
class SAMHQ(SAM):
    """HQ-SAM (the same adapter as :class:`SAM`; refuses a plain SAM model)."""

    expects_hq: ClassVar[bool] = True

    def __init__(self, model: str = "syscv-community/sam-hq-vit-base", **kwargs: Any) -> None:
        super().__init__(model=model, **kwargs)


@register_adapter("sam2")
class SAM2(SAM):
    """SAM 2 / 2.1 image predictor (``Sam2Model``): boxes → masks, behind the same ports as :class:`SAM`.

    SAM 2 resizes the image to a square (no padding) and decodes from its multi-scale features; boxes are
    scaled per axis to that square and masks upsampled back by ``Sam2ImageProcessor.post_process_masks``.
    """

    model_types: ClassVar[tuple[str, ...]] = ("sam2",)
    windowed_upsampling: ClassVar[bool] = False  # its processor upsamples in one step: post_process_masks

    def __init__(self, model: str = "facebook/sam2.1-hiera-tiny", **kwargs: Any) -> None:
        if kwargs.get("hq_token_only"):
            raise ValueError("hq_token_only is for HQ-SAM; SAM 2 has no HQ token")
        super().__init__(model=model, **kwargs)

    @property
    def is_hq(self) -> bool:
        return False

    def processor_options(self) -> dict[str, Any]:
        return {}

    @torch.inference_mode()
    def _encode_batch(self, batch: Sequence[LoadedImage]) -> list[ImageEmbedding]:
        processor = self._processor.image_processor
        inputs = processor(
            [im.pixels for im in batch], return_tensors="pt", input_data_format="channels_last"
        )
        pixel_values = inputs["pixel_values"].to(self.device)
        with autocast(self.device, self.precision):
            levels = self._model.get_image_embeddings(pixel_values)  # fine to coarse feature maps
        square = (int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        return [
            ImageEmbedding(
                embedding=levels[-1][b : b + 1],
                intermediate=tuple(level[b : b + 1] for level in levels),
                original_size=tuple(int(v) for v in inputs["original_sizes"][b]),  # type: ignore[arg-type]
                reshaped_size=square,
            )
            for b in range(len(batch))
        ]

    def _decoder_inputs(self, embedding: ImageEmbedding) -> dict[str, Any]:
        return {"image_embeddings": list(embedding.intermediate)}

    def _shares_decoder(self) -> bool:
        return supports_decode_many_sam2(self._model)

    def _decode_many(
        self,
        embedding: ImageEmbedding,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask: bool,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        high_res = embedding.intermediate[:-1]  # the finer feature maps; the last level is the embedding
        return decode_many_sam2(
            self._model, embedding.embedding, high_res, sparse, dense, multimask, chunk=chunk
        )

    def _post_process(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        post = self._processor.image_processor.post_process_masks
        return post([low_res], [embedding.original_size], mask_threshold=self.mask_threshold)[0]
