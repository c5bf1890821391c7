"""Built-in adapters (importable as ``grounded.adapters``).

Each adapter module registers its adapters when imported; the registry imports them by name
(:data:`grounded.engine.BUILTIN_ADAPTERS`), so ``import grounded.adapters`` loads none of them. The classes
below are imported on first use: ``from grounded.adapters import SAM`` loads only the SAM module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grounded.core.lazy import lazy_names

if TYPE_CHECKING:
    from grounded.adapters.grounding_dino import GroundingDINO, MMGroundingDINO
    from grounded.adapters.inpaint import StableDiffusionInpaint
    from grounded.adapters.mask_ops import MaskOps
    from grounded.adapters.owlv2 import OWLv2
    from grounded.adapters.ram import RamPlusTagger, RamTagger
    from grounded.adapters.sam import SAM, SAM2, SAMHQ
    from grounded.adapters.sam3 import SAM3
    from grounded.adapters.semantic_sam import SemanticSAM
    from grounded.adapters.taggers import BlipTagger

_CLASSES: dict[str, str] = {
    "BlipTagger": "grounded.adapters.taggers",
    "GroundingDINO": "grounded.adapters.grounding_dino",
    "MMGroundingDINO": "grounded.adapters.grounding_dino",
    "MaskOps": "grounded.adapters.mask_ops",
    "OWLv2": "grounded.adapters.owlv2",
    "RamPlusTagger": "grounded.adapters.ram",
    "RamTagger": "grounded.adapters.ram",
    "SAM": "grounded.adapters.sam",
    "SAM2": "grounded.adapters.sam",
    "SAM3": "grounded.adapters.sam3",
    "SAMHQ": "grounded.adapters.sam",
    "SemanticSAM": "grounded.adapters.semantic_sam",
    "StableDiffusionInpaint": "grounded.adapters.inpaint",
}

__all__ = [
    "SAM",
    "SAM2",
    "SAM3",
    "SAMHQ",
    "BlipTagger",
    "GroundingDINO",
    "MMGroundingDINO",
    "MaskOps",
    "OWLv2",
    "RamPlusTagger",
    "RamTagger",
    "SemanticSAM",
    "StableDiffusionInpaint",
]


__getattr__, __dir__ = lazy_names(globals(), _CLASSES)
