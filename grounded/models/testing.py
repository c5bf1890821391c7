"""Random-weight models built from configs, saved in the exact on-disk format users load.

* ``tiny`` models (a few hundred KB, milliseconds per image) for tests, the way transformers' own testers
  size them;
* ``real-size`` configs (Grounding DINO Swin-T, SAM ViT-B) with random weights for benchmarks: the same
  FLOPs as the released checkpoints, without downloading them.

Nothing here downloads anything: tokenizers are built from a synthetic WordPiece vocabulary.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "build_sam3_video",
    "grounding_dino_config",
    "make_blip",
    "make_grounding_dino",
    "make_sam",
    "make_sam3_video",
    "make_sd_inpainting",
    "sam3_video_config",
    "sam_config",
    "wordpiece_vocab",
]

_WORDS = [
    "dog",
    "cat",
    "car",
    "red",
    "blue",
    "green",
    "person",
    "man",
    "woman",
    "left",
    "right",
    "shoe",
    "shirt",
    "hat",
    "bicycle",
    "tree",
    "sky",
    "road",
    "house",
    "window",
    "door",
    "table",
    "chair",
    "sofa",
    "cup",
    "coffee",
    "rocket",
    "horse",
    "astronaut",
    "flag",
    "head",
    "face",
    "hand",
    "leg",
    "wheel",
    "the",
    "of",
    "and",
    "in",
    "on",
]


# Swin stages 2-4 feed Grounding DINO (passed as a mapping: the config declares it as a property).
_SWIN_OUTPUTS: dict[str, Any] = {"out_indices": [2, 3, 4]}


# ids fixed by bert-base-uncased, which Grounding DINO's text masks hard-code ([CLS], [SEP], ".", "?")
_FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
_MIN_VOCAB = 1030


def wordpiece_vocab(size: int | None = None) -> dict[str, int]:
    """A BERT-style uncased WordPiece vocabulary in which every ASCII word can be tokenised.

    Special tokens, ``.`` and ``?`` sit at their ``bert-base-uncased`` ids (Grounding DINO splits the caption
    into per-class sub-sentences by those ids); then punctuation, letters and digits with their ``##``
    continuations and a few whole words; the rest is filler up to ``size`` (at least 1030; 30522 for
    ``bert-base-uncased``'s embedding size).
    """
    size = _MIN_VOCAB if size is None else size
    if size < _MIN_VOCAB:
        raise ValueError(f"vocabulary size must be at least {_MIN_VOCAB}")
    tokens: list[str | None] = [None] * size
    for token, index in _FIXED_IDS.items():
        tokens[index] = token
    rest = [c for c in string.punctuation if c not in _FIXED_IDS]
    rest += list(string.ascii_lowercase + string.digits)
    rest += ["##" + c for c in string.ascii_lowercase + string.digits]
    rest += _WORDS
    free = (i for i, t in enumerate(tokens) if t is None)
    for token in rest:
        tokens[next(free)] = token
    return {(t if t is not None else f"[unused{i}]"): i for i, t in enumerate(tokens)}


def _tokenizer(vocab_size: int | None) -> Any:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=wordpiece_vocab(vocab_size), do_lower_case=True)


# ---------------------------------------------------------------------------- Grounding DINO
def grounding_dino_config(size: str = "tiny") -> Any:
    """``"tiny"`` (test) or ``"swin-t"`` (the released ``grounding-dino-tiny`` architecture)."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    if size == "swin-t":
        backbone = SwinConfig(
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            image_size=224,
            **_SWIN_OUTPUTS,
        )
        return GroundingDinoConfig(backbone_config=backbone, text_config=BertConfig())
    if size != "tiny":
        raise ValueError(f"unknown Grounding DINO size {size!r}; use 'tiny' or 'swin-t'")
    backbone = SwinConfig(
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=7,
        image_size=32,
        **_SWIN_OUTPUTS,
    )
    text = BertConfig(
        vocab_size=len(wordpiece_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=30,
        encoder_n_points=2,
        decoder_n_points=2,
    )


def make_grounding_dino(path: str | Path, size: str = "tiny", seed: int = 0, mm: bool = False) -> Path:
    """Save a random-weight Grounding DINO with its processor to ``path`` (``save_pretrained`` format).

    ``mm=True`` saves the same architecture as MM-Grounding-DINO (``model_type`` ``mm-grounding-dino``, the
    class LLMDet checkpoints load as too).
    """
    from transformers import (
        AutoModelForZeroShotObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        MMGroundingDinoConfig,
    )

    torch.manual_seed(seed)
    config = grounding_dino_config(size)
    if mm:
        fields = {
            k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")
        }
        config = MMGroundingDinoConfig(**fields)
    model = AutoModelForZeroShotObjectDetection.from_config(config).eval()
    if size == "tiny":
        image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 200})
        tokenizer = _tokenizer(None)
    else:
        image_processor = GroundingDinoImageProcessor()
        tokenizer = _tokenizer(config.text_config.vocab_size)
    path = Path(path)
    model.save_pretrained(path)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- SAM / HQ-SAM
def sam_config(size: str = "tiny", hq: bool = False) -> Any:
    """``"tiny"`` (test) or ``"vit-b"`` (the released ViT-B architecture), SAM or HQ-SAM."""
    from transformers import (
        SamConfig,
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQPromptEncoderConfig,
        SamHQVisionConfig,
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision_cls, prompt_cls, decoder_cls, config_cls = (
        (SamHQVisionConfig, SamHQPromptEncoderConfig, SamHQMaskDecoderConfig, SamHQConfig)
        if hq
        else (SamVisionConfig, SamPromptEncoderConfig, SamMaskDecoderConfig, SamConfig)
    )
    if size == "vit-b":
        vision = vision_cls()
        decoder_kwargs: dict[str, Any] = {"vit_dim": vision.hidden_size} if hq else {}
        return config_cls(
            vision_config=vision,
            prompt_encoder_config=prompt_cls(),
            mask_decoder_config=decoder_cls(**decoder_kwargs),
        )
    if size != "tiny":
        raise ValueError(f"unknown SAM size {size!r}; use 'tiny' or 'vit-b'")
    vision = vision_cls(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=128,
        patch_size=16,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=16,
        mlp_dim=64,
    )
    prompt = prompt_cls(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4)
    decoder_kwargs = {"vit_dim": 32} if hq else {}
    decoder = decoder_cls(
        hidden_size=32,
        mlp_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        iou_head_hidden_dim=32,
        **decoder_kwargs,
    )
    return config_cls(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def make_sam(path: str | Path, size: str = "tiny", hq: bool = False, seed: int = 0) -> Path:
    """Save a random-weight SAM (or HQ-SAM) with its processor to ``path`` (``save_pretrained`` format)."""
    from transformers import SamHQModel, SamHQProcessor, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    config = sam_config(size, hq=hq)
    model = (SamHQModel if hq else SamModel)(config).eval()
    if size == "tiny":
        image_processor = SamImageProcessor(
            size={"longest_edge": 128},
            pad_size={"height": 128, "width": 128},
            mask_size={"longest_edge": 32},
            mask_pad_size={"height": 32, "width": 32},
        )
    else:
        image_processor = SamImageProcessor()
    path = Path(path)
    model.save_pretrained(path)
    (SamHQProcessor if hq else SamProcessor)(image_processor=image_processor).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- SAM 2
def sam2_config(size: str = "tiny") -> Any:
    """``"tiny"`` (test, sized like transformers' ``Sam2ModelTester``) or ``"hiera-t"`` (SAM 2.1 Hiera-tiny)."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    if size == "hiera-t":
        return Sam2Config()
    if size != "tiny":
        raise ValueError(f"unknown SAM 2 size {size!r}; use 'tiny' or 'hiera-t'")
    backbone = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=128,
        patch_stride=4,
        patch_kernel_size=7,
        patch_padding=3,
        blocks_per_stage=[1, 2, 7, 2],
        embed_dim_per_stage=[12, 24, 48, 96],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        fpn_hidden_size=32,
    )
    prompt = Sam2PromptEncoderConfig(image_size=128, patch_size=16, mask_input_channels=8, hidden_size=32)
    decoder = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def make_sam2(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight SAM 2 with its processor to ``path`` (``save_pretrained`` format)."""
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(seed)
    model = Sam2Model(sam2_config(size)).eval()
    if size == "tiny":
        image_processor = Sam2ImageProcessor(
            size={"height": 128, "width": 128}, mask_size={"height": 32, "width": 32}
        )
    else:
        image_processor = Sam2ImageProcessor()
    path = Path(path)
    model.save_pretrained(path)
    Sam2Processor(image_processor=image_processor).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- SAM 2 video
def sam2_video_config(size: str = "tiny") -> Any:
    """``"tiny"`` (test) or ``"hiera-t"`` (SAM 2.1 Hiera-tiny) ``Sam2VideoConfig``.

    The tiny one shares the image model's tiny vision encoder; its memory width is 64 (transformers fixes
    the memory attention's key width at 64) and the decoder width 128 (object pointers are split into
    ``hidden / 64`` memory tokens, which needs a wider decoder than memory).
    """
    from transformers import Sam2VideoConfig

    if size == "hiera-t":
        return Sam2VideoConfig()
    if size != "tiny":
        raise ValueError(f"unknown SAM 2 video size {size!r}; use 'tiny' or 'hiera-t'")
    base = sam2_config("tiny")
    base.vision_config.fpn_hidden_size = 128
    base.prompt_encoder_config.hidden_size = 128
    base.mask_decoder_config.hidden_size = 128
    return Sam2VideoConfig(
        vision_config=base.vision_config.to_dict(),
        prompt_encoder_config=base.prompt_encoder_config.to_dict(),
        mask_decoder_config=base.mask_decoder_config.to_dict(),
        image_size=128,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=128,
        memory_attention_rope_feat_sizes=[8, 8],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=128,
        memory_fuser_num_layers=1,
    )


def make_sam2_video(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight SAM 2 video predictor with its processor to ``path`` (``save_pretrained`` format)."""
    from transformers import Sam2ImageProcessor, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    torch.manual_seed(seed)
    model = Sam2VideoModel(sam2_video_config(size)).eval()
    side = 128 if size == "tiny" else 1024
    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(
            size={"height": side, "width": side}, mask_size={"height": side // 4, "width": side // 4}
        ),
        video_processor=Sam2VideoVideoProcessor(size={"height": side, "width": side}),
        target_size=side,
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- CLIP tokenizer, OWLv2
def clip_tokenizer(max_length: int = 16) -> Any:
    """A CLIP byte-level BPE tokenizer built offline: every byte is a token (with and without ``</w>``).

    No merges, so words tokenise into characters: any text works, sequences are longer than with the real
    49408-token vocabulary.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    # the special tokens come last, as in CLIP's vocabulary (OWL masks out queries whose first id is 0)
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


def owlv2_config(size: str = "tiny") -> Any:
    """``"tiny"`` (test) or ``"base-16"`` (OWLv2 ViT-B/16)."""
    from transformers import Owlv2Config

    if size == "base-16":
        return Owlv2Config()
    if size != "tiny":
        raise ValueError(f"unknown OWLv2 size {size!r}; use 'tiny' or 'base-16'")
    vocab_size = len(clip_tokenizer())
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 16,
    }
    return Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)


def make_owlv2(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight OWLv2 detector with its processor to ``path`` (``save_pretrained`` format)."""
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(owlv2_config(size)).eval()
    image_processor = (
        Owlv2ImageProcessor(size={"height": 64, "width": 64}) if size == "tiny" else Owlv2ImageProcessor()
    )
    path = Path(path)
    model.save_pretrained(path)
    Owlv2Processor(image_processor=image_processor, tokenizer=clip_tokenizer()).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- Stable Diffusion inpainting
def make_sd_inpainting(path: str | Path, seed: int = 0, in_channels: int = 9) -> Path:
    """Save a tiny random-weight Stable Diffusion inpainting pipeline to ``path`` (diffusers ``save_pretrained``).

    UNet, VAE and CLIP text encoder are sized as diffusers' own inpainting tests build them (two blocks of 32 and
    64 channels); the CLIP tokenizer is :func:`clip_tokenizer` (built offline). The VAE
    halves the resolution and the UNet's ``sample_size`` is 32, so the model's working size is 64×64.
    ``in_channels=9`` is an inpainting UNet (latents + mask + masked image, like SD 1.5/2 inpainting); 4 is
    a plain text-to-image UNet, which diffusers inpaints by blending latents.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if in_channels not in (4, 9):
        raise ValueError(
            f"in_channels must be 9 (inpainting UNet) or 4 (text-to-image UNet), got {in_channels}"
        )
    tokenizer = clip_tokenizer(max_length=77)  # Stable Diffusion pads prompts to 77 tokens
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        layers_per_block=1,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    pipe: Any = StableDiffusionInpaintPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = Path(path)
    pipe.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- SAM 3
def sam3_config(size: str = "tiny") -> Any:
    """``"tiny"`` (test, sized like transformers' ``Sam3ModelTester``) or ``"base"`` (the released SAM 3)."""
    from transformers.models.sam3.configuration_sam3 import Sam3Config

    if size == "base":
        return Sam3Config()
    if size != "tiny":
        raise ValueError(f"unknown SAM 3 size {size!r}; use 'tiny' or 'base'")
    return _tiny_sam3_config(width=32, scale_factors=[2.0, 1.0], upsampling_stages=2)


def _tiny_sam3_config(
    width: int, scale_factors: list[float], upsampling_stages: int, queries: int = 5, side: int = 224
) -> Any:
    """A tiny SAM 3 (``side`` px, 14 px patches: a 16 x 16 grid at 224) whose detector is ``width`` wide."""
    from transformers.models.sam3.configuration_sam3 import (
        Sam3Config,
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    backbone = Sam3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=side,
        patch_size=14,
        window_size=8,
        global_attn_indexes=[0, 1],
    )
    vocab_size = len(clip_tokenizer(32))
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }
    return Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=backbone, fpn_hidden_size=width, scale_factors=scale_factors
        ),
        text_config=text,
        geometry_encoder_config=Sam3GeometryEncoderConfig(
            hidden_size=width,
            num_layers=1,
            num_attention_heads=4,
            intermediate_size=2 * width,
        ),
        detr_encoder_config=Sam3DETREncoderConfig(
            hidden_size=width, num_layers=1, num_attention_heads=4, intermediate_size=2 * width
        ),
        detr_decoder_config=Sam3DETRDecoderConfig(
            hidden_size=width,
            num_layers=1,
            num_queries=queries,
            num_attention_heads=4,
            intermediate_size=2 * width,
        ),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=width, num_upsampling_stages=upsampling_stages),
    )


def make_sam3(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight SAM 3 (text → masks) with its processor to ``path`` (``save_pretrained`` format)."""
    from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor

    torch.manual_seed(seed)
    model = Sam3Model(sam3_config(size)).eval()
    image_processor = (
        Sam3ImageProcessor(size={"height": 224, "width": 224}) if size == "tiny" else Sam3ImageProcessor()
    )
    path = Path(path)
    model.save_pretrained(path)
    Sam3Processor(image_processor=image_processor, tokenizer=clip_tokenizer(32)).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- SAM 3 video
def sam3_video_config(size: str = "tiny") -> Any:
    """``"tiny"`` (test) or ``"base"`` (the released SAM 3: detector + tracker) ``Sam3VideoConfig``.

    The tracker reads the detector's vision features, so the two must agree where transformers does not
    check it: the tracker's feature sizes (``4g, 2g, g`` for a ``g x g`` patch grid, set from ``image_size``),
    its width (the detector's ``fpn_hidden_size``: the tracker neck is built from the detector's vision
    config) and the FPN's scales (``4, 2, 1, 0.5``: the tracker takes the three finest, the detector's masks
    come from the finest, at the tracker's ``4g`` mask size, ``low_res_mask_size``). The width is 128: the
    memory attention's key width is fixed at 64 and object pointers are split into ``width / 64`` tokens;
    at width 64 transformers skips that split and the unsplit pointers (one dimension more than the
    memories) fail ``torch.cat`` from the second frame on ("Tensors must have same number of dimensions").
    """
    from transformers import Sam3TrackerVideoConfig, Sam3VideoConfig

    if size == "base":
        return Sam3VideoConfig()
    if size != "tiny":
        raise ValueError(f"unknown SAM 3 video size {size!r}; use 'tiny' or 'base'")
    width, side, patch = 128, 112, 14
    grid = side // patch
    # 2 queries per class: a random detector finds at most 2 objects per class on a frame (the tracker's
    # cost grows with the objects followed)
    detector = _tiny_sam3_config(width, [4.0, 2.0, 1.0, 0.5], upsampling_stages=3, queries=2, side=side)
    tracker = Sam3TrackerVideoConfig(  # type: ignore[call-arg]  # image_size: read in __post_init__
        vision_config=detector.vision_config.to_dict(),
        prompt_encoder_config={"hidden_size": width, "image_size": side, "patch_size": patch},
        mask_decoder_config={
            "hidden_size": width,
            "mlp_dim": 2 * width,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": 32,
        },
        image_size=side,  # sets the feature sizes (4g, 2g, g) and the memory attention's RoPE grid
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=width,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * width,
        memory_encoder_hidden_size=width,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=width,
        memory_fuser_embed_dim=width,
        memory_fuser_intermediate_dim=2 * width,
        memory_fuser_num_layers=1,
    )
    return Sam3VideoConfig(
        detector_config=detector.to_dict(), tracker_config=tracker.to_dict(), low_res_mask_size=4 * grid
    )


def build_sam3_video(size: str = "tiny", seed: int = 0) -> Any:
    """A random-weight ``Sam3VideoModel`` (what :func:`make_sam3_video` saves)."""
    from transformers import Sam3VideoModel

    torch.manual_seed(seed)
    model = Sam3VideoModel(sam3_video_config(size)).eval()
    if size == "tiny":
        # a random tracker as often scores every object absent, and an absent object's masks are all
        # "no object": the tiny one always sees its objects, so tests can follow tracks across frames
        with torch.no_grad():
            model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    return model


def make_sam3_video(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight SAM 3 video model (text -> tracked masks) with its processor to ``path``."""
    from transformers import Sam3ImageProcessor, Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    model = build_sam3_video(size, seed)
    side = 112 if size == "tiny" else 1008
    processor = Sam3VideoProcessor(
        image_processor=Sam3ImageProcessor(size={"height": side, "width": side}),
        video_processor=Sam2VideoVideoProcessor(size={"height": side, "width": side}),
        tokenizer=clip_tokenizer(32),
        target_size=side,
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- BLIP captioning (tagger)
def make_blip(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random-weight ``BlipForConditionalGeneration`` with its processor to ``path``.

    Sized like transformers' own BLIP tests; the tokenizer is the offline BERT WordPiece one (``[CLS]`` stands
    in for BLIP's ``[DEC]`` start token), so the random captions are words of :func:`wordpiece_vocab`.
    """
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    torch.manual_seed(seed)
    vocab = wordpiece_vocab()
    text = BlipTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
        sep_token_id=vocab["[SEP]"],
        pad_token_id=vocab["[PAD]"],
    )
    vision = BlipVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    ).eval()
    with torch.no_grad():  # captions of real words only: the filler tokens can never be generated
        bias = model.text_decoder.cls.predictions.bias
        for token, index in vocab.items():
            if token.startswith(("[unused", "##")) or (len(token) == 1 and not token.isalpha()):
                bias[index] = -1e4
    path = Path(path)
    model.save_pretrained(path)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=_tokenizer(None)
    )
    processor.save_pretrained(path)
    return path
