"""The published zero-shot protocol as pipeline settings, and the scoring applied to cached predictions.

Two layers, so that re-scoring never re-runs a model:

* :class:`EvalProtocol` sets the **detector** node's parameters (what the models are asked to produce):
  top-100 (query, class) pairs per image, no box threshold, no NMS, class score = mean over the class's
  tokens, boxes left unclipped. Those outputs are cached.
* :class:`Scoring` turns cached predictions into COCO results (which score a mask gets, optional top-k,
  threshold or NMS on top): change it and only the AP is recomputed.

See ``evaluation/README.md`` for where each setting comes from.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from grounded.core.checks import optional_in_unit_interval
from grounded.engine import Adapter, Pipeline, get_adapter

__all__ = [
    "NON_SEMANTIC_PARAMS",
    "EvalProtocol",
    "Scoring",
    "pipeline_fingerprint",
    "protocol_deviations",
    "protocol_overrides",
]

MaskScore = Literal["detector", "detector_x_mask", "mask"]

#: Adapter parameters that change speed or memory but not results: left out of the cache key.
NON_SEMANTIC_PARAMS = frozenset({"device", "batch_size", "max_boxes_per_call", "cache_size"})

#: Bump when the cached payload or the meaning of a key changes.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class EvalProtocol:
    """Detector settings of the published zero-shot protocol (SysCV/sam-hq ``seginw/test_ap_on_seginw.py``).

    Attributes:
        top_k: (query, class) pairs kept per image, ranked by score (``--num_select 100``).
        box_threshold: ``0.0``: no score threshold.
        nms_threshold: ``None``: no NMS.
        multi_label: every (query, class) pair is a candidate, not only each query's best class.
        class_reduction: ``"mean"``: a pair's score is the mean token probability over the class's tokens
            (the normalised positive map).
        clip_boxes: ``False``: boxes are scaled to the image but not clipped to it.
        image_backend: ``"pil"``: the detector's images are resized by PIL, as the published transform does
            (transformers' default torchvision backend differs by up to one grey level when downsampling).
    """

    top_k: int = 100
    box_threshold: float = 0.0
    nms_threshold: float | None = None
    multi_label: bool = True
    class_reduction: str = "mean"
    clip_boxes: bool = False
    image_backend: str | None = "pil"

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Scoring:
    """How cached predictions become COCO results (cheap to change: no model runs).

    Attributes:
        mask_score: the score of each result: ``"detector"`` (the protocol: the mask inherits its box's
            detector score), ``"detector_x_mask"`` (times SAM's predicted IoU) or ``"mask"`` (SAM's predicted
            IoU alone).
        max_dets: keep at most this many results per image, best first (``None``: all cached ones).
        score_threshold: drop results scoring at or below this (``None``: keep all).
        nms_threshold: class-aware NMS on the boxes at this IoU (``None``: none, the protocol).
    """

    mask_score: MaskScore = "detector"
    max_dets: int | None = None
    score_threshold: float | None = None
    nms_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.mask_score not in ("detector", "detector_x_mask", "mask"):
            raise ValueError(f"mask_score must be detector, detector_x_mask or mask, got {self.mask_score!r}")
        if self.max_dets is not None and self.max_dets < 1:
            raise ValueError("max_dets must be at least 1")
        if self.nms_threshold is not None and not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError("nms_threshold must lie in (0, 1]")
        optional_in_unit_interval(score_threshold=self.score_threshold)

    @property
    def is_protocol(self) -> bool:
        """Whether this is the published scoring (detector score, nothing removed)."""
        return self == Scoring()

    def params(self) -> dict[str, Any]:
        return asdict(self)


def _accepts(cls: type, param: str) -> bool:
    """Whether an adapter class's constructor takes ``param`` (following ``**kwargs`` to the base classes)."""
    for klass in cls.__mro__:
        if klass in (Adapter, object):
            return False
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        if param in params:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
    return False


@dataclass
class _NodeMatch:
    node: str
    adapter_type: str
    params: dict[str, Any] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)


def _detector_nodes(spec: Mapping[str, Any], protocol: EvalProtocol) -> list[_NodeMatch]:
    """Nodes that are detectors: their adapter takes ``top_k`` or ``box_threshold``."""
    out = []
    for node, node_spec in (spec.get("nodes") or {}).items():
        if not isinstance(node_spec, Mapping) or "type" not in node_spec:
            continue
        cls = get_adapter(str(node_spec["type"]))
        if not (_accepts(cls, "top_k") or _accepts(cls, "box_threshold")):
            continue
        match = _NodeMatch(str(node), str(node_spec["type"]))
        for key, value in protocol.params().items():
            if _accepts(cls, key):
                match.params[key] = value
            else:
                match.unsupported.append(key)
        out.append(match)
    return out


def protocol_overrides(
    spec: Mapping[str, Any], protocol: EvalProtocol | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Node overrides that put a pipeline description's detector nodes on the protocol, and notes.

    Returns ``(overrides, notes)``: ``notes`` name protocol settings a detector's adapter does not have, or
    say that no node looks like a detector (then nothing is enforced).
    """
    protocol = protocol or EvalProtocol()
    matches = _detector_nodes(spec, protocol)
    notes = [
        f"node {m.node!r} ({m.adapter_type}) has no parameter {p!r}: that part of the protocol is not applied"
        for m in matches
        for p in m.unsupported
    ]
    if not matches:
        notes.append("no detector node (an adapter with top_k or box_threshold): the protocol is not applied")
    return {m.node: m.params for m in matches}, notes


def protocol_deviations(pipeline: Pipeline, protocol: EvalProtocol | None = None) -> list[str]:
    """Where a built pipeline's detector nodes differ from the protocol (empty: it follows the protocol)."""
    protocol = protocol or EvalProtocol()
    expected = protocol.params()
    out = []
    detectors = 0
    for node in pipeline.graph.nodes:
        params = pipeline.adapter(node).get_params()
        if "top_k" not in params and "box_threshold" not in params:
            continue
        detectors += 1
        for key, value in expected.items():
            if key in params and params[key] != value:
                out.append(f"{node}.{key} = {params[key]!r} (protocol: {value!r})")
            elif key not in params:
                out.append(f"{node} has no {key!r} parameter (protocol: {value!r})")
    if not detectors:
        out.append("no detector node with top_k / box_threshold: the protocol could not be checked")
    return out


def pipeline_fingerprint(pipeline: Pipeline) -> str:
    """A hash of everything in a pipeline that can change its outputs (models, parameters, wiring).

    Parameters in :data:`NON_SEMANTIC_PARAMS` (device, batch sizes, cache sizes) are left out, so a run
    resumed with another batch size or on another device reuses the cache. A model given as a local folder is
    identified by its path, not its contents.
    """
    description = pipeline.to_dict()
    for name, node in description["nodes"].items():
        adapter = pipeline.adapter(name)
        node["params"] = {k: v for k, v in node["params"].items() if k not in NON_SEMANTIC_PARAMS}
        node["class"] = f"{type(adapter).__module__}.{type(adapter).__qualname__}"
    description["edges"] = sorted(description["edges"])
    text = json.dumps({"format": CACHE_FORMAT, "pipeline": description}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
