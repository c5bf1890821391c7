"""A CVAT interactor (``cvat_sdk.auto_annotation.InteractionFunction``): clicks and / or a box → a SAM mask.

``cvat-cli function create-native "grounded SAM" --function-module grounded.integrations.cvat_interactor``
then ``cvat-cli function run-agent FUNCTION_ID --function-module grounded.integrations.cvat_interactor``
serves it to CVAT's UI. ``preprocess_image`` encodes the image once (the agent caches its result), and each
``detect`` runs only SAM's mask decoder. Parameters: ``pipeline``, ``segmenter``, ``device`` (str).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grounded.core.images import LoadedImage, load_image
from grounded.integrations.annotator import Annotator

__all__ = ["GroundedInteractor", "Prepared", "create"]


@dataclass(frozen=True)
class Prepared:
    """An image and its SAM embedding: what ``preprocess_image`` returns and ``detect`` reuses."""

    image: LoadedImage
    embedding: Any


class GroundedInteractor:
    """``spec``: at least one positive point, negative points and a box optional."""

    def __init__(self, annotator: Annotator) -> None:
        self.annotator = annotator

    @property
    def spec(self) -> Any:
        import cvat_sdk.auto_annotation as cvataa

        return cvataa.InteractionFunctionSpec(min_pos_points=1, min_neg_points=0, min_bounding_boxes=0)

    def preprocess_image(self, context: Any, image: Any) -> Prepared:
        """Decode and encode the image (the prompt-independent part)."""
        loaded = load_image(image)
        return Prepared(loaded, self.annotator.encode(loaded))

    def detect(self, context: Any, pp_image: Any, prompts: Any) -> list[Any]:
        """One ``mask`` shape (``cvat_sdk.masks.encode_mask``) with its predicted IoU as the confidence."""
        import cvat_sdk.auto_annotation as cvataa
        import cvat_sdk.models as models
        from cvat_sdk.masks import encode_mask

        prepared = pp_image if isinstance(pp_image, Prepared) else self.preprocess_image(context, pp_image)
        pos, neg = list(prompts.pos_points), list(prompts.neg_points)
        points = [list(map(float, p)) for p in pos + neg]
        labels = [1] * len(pos) + [0] * len(neg)
        bbox = prompts.bounding_box
        box = None if bbox is None else [float(v) for corner in bbox for v in corner]
        answer = self.annotator.decode(prepared.embedding, points, labels, box)
        mask = answer.mask.numpy()
        if not mask.any():
            return []
        confidence = models.AttributeValRequest(
            spec_id=int(cvataa.InteractionResultAttributes.CONFIDENCE),
            value=f"{min(max(answer.score, 0.0), 1.0):.6f}",
        )
        return [cvataa.InteractionResultShape(type="mask", points=encode_mask(mask), attributes=[confidence])]


def create(
    pipeline: str = "grounded_sam", segmenter: str | None = None, device: str = "auto"
) -> GroundedInteractor:
    """The interactor for ``cvat-cli ... --function-module grounded.integrations.cvat_interactor``."""
    return GroundedInteractor(Annotator(pipeline, segmenter=segmenter, device=device))
