"""Prometheus metrics of one app: requests, latency, the models' queues, the session cache."""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["Metrics"]


class Metrics:
    """A registry of its own (several apps may live in one process, as in the tests)."""

    def __init__(self, service: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "grounded_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "grounded_request_seconds",
            "request latency",
            ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        queue = Gauge(
            "grounded_queue_length", "requests waiting for a model", ["model"], registry=self.registry
        )
        running = Gauge(
            "grounded_model_busy", "1 while the model runs a request", ["model"], registry=self.registry
        )
        for name, gate in service.gates.items():
            queue.labels(name).set_function(functools.partial(getattr, gate, "waiting"))
            running.labels(name).set_function(functools.partial(getattr, gate, "running"))
        store = service.sessions
        for metric, what, read in (
            ("grounded_session_cache_hits", "session lookups that found the image", lambda: store.hits),
            ("grounded_session_cache_misses", "session lookups that did not", lambda: store.misses),
            ("grounded_session_cache_evictions", "sessions dropped for memory", lambda: store.evictions),
            ("grounded_sessions", "images encoded and kept", lambda: len(store)),
            ("grounded_session_cache_bytes", "bytes of kept embeddings", lambda: store.bytes),
        ):
            Gauge(metric, what, registry=self.registry).set_function(read)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
