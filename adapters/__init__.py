"""Built-in adapters (importable as ``grounded.adapters``); importing this package registers them."""

from grounded.adapters.grounding_dino import GroundingDINO, MMGroundingDINO
from grounded.adapters.sam import SAM, SAM2, SAMHQ

__all__ = ["SAM", "SAM2", "SAMHQ", "GroundingDINO", "MMGroundingDINO"]
