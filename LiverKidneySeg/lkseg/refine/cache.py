"""A bounded, thread-safe LRU of slice embeddings and the background worker that fills it.

Keys are ``(view, canonical slice, window)``; values are ``(1, 256, 64, 64)`` float32 arrays
(4 MiB each), so the default 64 entries hold about 256 MiB. The worker precomputes the slices
around the one the user works on, nearest first; a new request replaces the queue (the user
moved), and a foreground request for a slice the worker is encoding waits for it instead of
computing it twice.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

__all__ = ["EmbeddingCache", "Prefetcher"]

log = logging.getLogger(__name__)


class EmbeddingCache:
    """LRU mapping key -> embedding with at most ``capacity`` entries."""

    def __init__(self, capacity: int = 64):
        self.capacity = max(1, int(capacity))
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def put(self, key: Hashable, value: np.ndarray) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(v.nbytes for v in self._data.values())


class Prefetcher:
    """One daemon thread computing embeddings ahead of the user.

    Args:
        compute: ``compute(key) -> embedding`` (called on the worker thread).
        cache: where results go.
    """

    def __init__(self, compute: Callable[[Hashable], np.ndarray], cache: EmbeddingCache):
        self._compute = compute
        self._cache = cache
        self._cond = threading.Condition()
        self._queue: list[Hashable] = []
        self._busy: Hashable | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    def request(self, keys: list[Hashable]) -> None:
        """Replace the pending work with ``keys`` (most wanted first); starts the worker if needed."""
        with self._cond:
            if self._stopped:
                return
            self._queue = [k for k in keys if k not in self._cache]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lkseg-embedding-prefetch", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel_pending(self) -> None:
        with self._cond:
            self._queue = []

    def wait_if_busy_with(self, key: Hashable, timeout: float = 30.0) -> None:
        """Block while the worker is computing ``key`` (then the result is in the cache)."""
        with self._cond:
            if self._busy == key:
                self._cond.wait_for(lambda: self._busy != key, timeout=timeout)

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Wait until the queue is empty and nothing is being computed (tests, benchmarks)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._busy is None, timeout=timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._queue = []
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    return
                key = self._queue.pop(0)
                if key in self._cache:
                    continue
                self._busy = key
            try:
                self._cache.put(key, self._compute(key))
            except Exception:
                log.debug("prefetch of %s failed", key, exc_info=True)
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()
