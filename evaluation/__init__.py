"""Zero-shot evaluation (SegInW, COCO-format datasets); importable as ``grounded.evaluation``."""
