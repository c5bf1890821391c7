"""Built-in adapters (importable as ``grounded.adapters``); importing this package registers them."""

from grounded.adapters.grounding_dino import GroundingDINO
from grounded.adapters.sam import SAM, SAMHQ

__all__ = ["SAM", "SAMHQ", "GroundingDINO"]
