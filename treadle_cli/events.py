"""In-process delivery of events as they are committed."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .model import Event

Listener = Callable[[Event], None]
log = logging.getLogger("treadle")


class Subscription:
    """An iterable queue of events; ``close()`` stops delivery."""

    def __init__(self, bus: EventBus) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._bus = bus
        self.close = bus.add(self._queue.put)

    def get(self, timeout: float | None = None) -> Event | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> list[Event]:
        out: list[Event] = []
        while (ev := self.get(timeout=0)) is not None:
            out.append(ev)
        return out

    def __iter__(self) -> Iterator[Event]:
        return iter(self.drain())


class EventBus:
    """Fan events out to listeners after their transaction commits, in commit order.

    Callers wrap a store operation and the ``publish`` of its events in
    :meth:`ordered`, so events committed by several threads reach listeners in the
    order the log holds them. Listeners run outside the ordering lock, one thread at
    a time; a listener that raises is logged and skipped, never propagated.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        # Held from a store commit until its events are queued: queue order = log order.
        self._order = threading.RLock()
        self._pending: deque[Event] = deque()
        self._delivering = False
        self._local = threading.local()

    def add(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    @contextmanager
    def ordered(self) -> Iterator[None]:
        """Hold around a store operation and the ``publish`` of what it returned."""
        with self._order:
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                yield
            finally:
                self._local.depth -= 1
        if not self._local.depth:
            self._deliver()

    def publish(self, events: Iterable[Event] | None) -> None:
        if not events or not self._listeners:
            return
        with self._order:
            self._pending.extend(events)
        if not getattr(self._local, "depth", 0):
            self._deliver()

    def _deliver(self) -> None:
        # Whoever finds nobody delivering delivers everything queued, including what
        # other threads queue meanwhile; the others return at once.
        while True:
            with self._order:
                if self._delivering or not self._pending:
                    return
                self._delivering = True
                batch = list(self._pending)
                self._pending.clear()
            try:
                with self._lock:
                    listeners = list(self._listeners)
                for ev in batch:
                    for listener in listeners:
                        try:
                            listener(ev)
                        except Exception:
                            # A listener observes; its bug must not abort the advance
                            # that committed the event (leaving a stage running).
                            log.exception("event listener %r failed on %s", listener, ev.kind.value)
            finally:
                with self._order:
                    self._delivering = False
