"""Semantic-SAM (Li et al., 2023, "Segment and Recognize Anything at Any Granularity"), a pure-PyTorch port of
its inference path: Swin backbone, multi-scale deformable-attention pixel decoder, an interactive decoder with 6
granularity queries per click, mask / IoU heads and the object / part classification heads. Loads the official
``swint_only_sam_many2many.pth`` / ``swinl_only_sam_many2many.pth`` by key mapping; no detectron2, no compiled ops.
"""

from grounded.models.semantic_sam.checkpoints import (
    config_from_official,
    convert_official_state_dict,
    is_official_semantic_sam,
    load_semantic_sam,
    save_semantic_sam,
    to_official_state_dict,
)
from grounded.models.semantic_sam.config import PRESETS, SemanticSamConfig, TextEncoderConfig, preset
from grounded.models.semantic_sam.model import ImageFeatures, SemanticSamModel
from grounded.models.semantic_sam.predictor import (
    TOKEN_FOR_LEVEL,
    build_levels,
    predict_levels,
    resize_short_side,
)

__all__ = [
    "PRESETS",
    "TOKEN_FOR_LEVEL",
    "ImageFeatures",
    "SemanticSamConfig",
    "SemanticSamModel",
    "TextEncoderConfig",
    "build_levels",
    "config_from_official",
    "convert_official_state_dict",
    "is_official_semantic_sam",
    "load_semantic_sam",
    "predict_levels",
    "preset",
    "resize_short_side",
    "save_semantic_sam",
    "to_official_state_dict",
]
