"""Encoded images kept for interaction, bounded by the bytes their embeddings take (least recently used
first out); each session also keeps the low-res mask logits of its last answers for refinement."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from grounded.core.images import LoadedImage
from grounded.core.lru import LruCache

__all__ = ["LOGITS_KEPT", "Session", "SessionStore", "embedding_bytes"]

#: mask logits kept per session (the inputs a refinement click may name)
LOGITS_KEPT = 64


def embedding_bytes(embedding: Any) -> int:
    """Bytes of every tensor an embedding holds."""
    tensors = [v for v in vars(embedding).values() if isinstance(v, torch.Tensor)]
    for v in vars(embedding).values():
        if isinstance(v, (tuple, list)):
            tensors.extend(t for t in v if isinstance(t, torch.Tensor))
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Session:
    """One encoded image: its id (content hash), pixels and SAM embedding."""

    id: str
    image: LoadedImage
    embedding: Any
    nbytes: int
    logits: LruCache[str, torch.Tensor] = field(default_factory=lambda: LruCache(LOGITS_KEPT))
    answers: int = 0

    def keep_logits(self, low_res: torch.Tensor) -> str:
        """Remember one answer's ``(h, w)`` logits; returns the id a later request names them by."""
        self.answers += 1
        key = f"{self.id[:8]}-{self.answers}"
        self.logits.put(key, low_res.detach().to("cpu", torch.float32).clone())
        return key


class SessionStore:
    """Sessions by id, at most ``max_bytes`` of embeddings (the newest is kept even when alone larger)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, image_id: str) -> Session | None:
        """The session, now the most recently used (counted as a hit), or ``None`` (a miss)."""
        with self._lock:
            session = self._items.get(image_id)
            if session is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(image_id)
            return session

    def put(self, session: Session) -> None:
        with self._lock:
            self._items[session.id] = session
            self._items.move_to_end(session.id)
            while len(self._items) > 1 and self.bytes > self.max_bytes:
                self._items.popitem(last=False)
                self.evictions += 1

    @property
    def bytes(self) -> int:
        return sum(s.nbytes for s in self._items.values())

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._items

    def __len__(self) -> int:
        return len(self._items)
