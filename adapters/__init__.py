"""Built-in adapters (importable as ``grounded.adapters``); importing this package registers them."""

from grounded.adapters.grounding_dino import GroundingDINO, MMGroundingDINO
from grounded.adapters.inpaint import StableDiffusionInpaint  # noqa: F401  (registers sd_inpaint)
from grounded.adapters.mask_ops import MaskOps  # noqa: F401  (registers mask_ops)
from grounded.adapters.owlv2 import OWLv2
from grounded.adapters.ram import RamPlusTagger, RamTagger  # noqa: F401  (registers ram, ram_plus)
from grounded.adapters.sam import SAM, SAM2, SAMHQ
from grounded.adapters.sam3 import SAM3
from grounded.adapters.semantic_sam import SemanticSAM
from grounded.adapters.taggers import BlipTagger  # noqa: F401  (registers blip)

__all__ = ["SAM", "SAM2", "SAM3", "SAMHQ", "GroundingDINO", "MMGroundingDINO", "OWLv2", "SemanticSAM"]
