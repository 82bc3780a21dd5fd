"""In-process delivery of events as they are committed."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

from .model import Event

Listener = Callable[[Event], None]


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
    """Fan events out to listeners after their transaction commits."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def add(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def publish(self, events: Iterable[Event] | None) -> None:
        if not events or not self._listeners:
            return
        with self._lock:
            listeners = list(self._listeners)
        for ev in events:
            for listener in listeners:
                listener(ev)
