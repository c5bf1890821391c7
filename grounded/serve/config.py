"""The settings of a server: which models, the limits, who may call it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DETECTOR_PARAMS", "MIB", "SEGMENTER_PARAMS", "ServeConfig"]

MIB = 1024 * 1024
#: request fields that set detector / segmenter parameters for one request (the CLI's options)
DETECTOR_PARAMS = ("box_threshold", "text_threshold", "top_k", "nms_threshold")
SEGMENTER_PARAMS = ("multimask_output", "granularity", "hq_token_only")


@dataclass(frozen=True)
class ServeConfig:
    """What :func:`grounded.serve.create_app` builds.

    Attributes:
        pipeline: bundled pipeline name or YAML path (a ``detector`` node and a SAM-family ``segmenter``
            node make the sessions work); ``overrides`` / ``shared`` as for ``build_pipeline``.
        inpainter: a diffusers inpainting model: enables ``POST /v1/edit``; ``inpainter_params`` are the
            inpainter adapter's other parameters (steps, seed, ...).
        token: when set, every ``/v1`` route and ``/metrics`` need ``Authorization: Bearer TOKEN``.
        max_upload_bytes: largest request body (413 beyond it); max_pixels: largest decoded image (checked from
            its header; ``None``: ``GROUNDED_MAX_PIXELS``); max_prompt_chars, max_points: per request.
        queue_size: requests that may wait for a model while it runs another (503 with Retry-After beyond);
            wait_timeout_s: the longest a request waits for its model (then 503).
        cache_bytes: memory for the image sessions' embeddings (least recently used dropped first).
        cors_origins: origins allowed to call the API from other pages (none by default).
        note: a line the page shows (e.g. that the models are tiny random-weight ones).
    """

    pipeline: str = "grounded_sam"
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shared: Mapping[str, Any] = field(default_factory=dict)
    inpainter: str | None = None
    inpainter_params: Mapping[str, Any] = field(default_factory=dict)
    token: str | None = None
    max_upload_bytes: int = 32 * MIB
    max_pixels: int | None = 40_000_000
    max_prompt_chars: int = 2000
    max_points: int = 64
    queue_size: int = 8
    wait_timeout_s: float = 120.0
    cache_bytes: int = 1024 * MIB
    cors_origins: tuple[str, ...] = ()
    note: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_prompt_chars", "max_points", "cache_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.queue_size < 0 or self.wait_timeout_s <= 0:
            raise ValueError("queue_size must be at least 0 and wait_timeout_s positive")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError("max_pixels must be at least 1")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token must not be empty")
