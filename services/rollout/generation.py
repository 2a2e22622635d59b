"""The asyncio side of the engine: calls that submit sequences and receive their events.

The engine thread hands each step's events to ``EventRouter.post``; they collect in one pending list,
and a ``call_soon_threadsafe`` (one self-pipe write) is made only when that list was empty, so steps
that come faster than the loop drains them share one wake-up. On the loop, each event goes to the
queue of the call that submitted its sequence. A call cancels its sequences that are still running
when it closes (a client that went away frees its batch slots).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from services.rollout.engine import Engine, Event, SequenceRequest


class EventRouter:
    """Routes engine events (tag = (call id, owner tag)) to the calls' queues on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[int, asyncio.Queue[Event]] = {}
        self._lock = threading.Lock()
        self._pending: list[Event] = []

    def post(self, events: list[Event]) -> None:
        """Called on the engine thread."""
        with self._lock:
            wake = not self._pending
            self._pending.extend(events)
        if wake and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._dispatch)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _dispatch(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
        for event in events:
            queue = self._queues.get(event.tag[0])
            if queue is not None:
                queue.put_nowait(event)

    def register(self, call_id: int) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[call_id] = queue
        return queue

    def unregister(self, call_id: int) -> None:
        self._queues.pop(call_id, None)


class Call:
    """Sequences submitted together and their events; ``async with`` cancels what is left on exit."""

    def __init__(self, engine: Engine, router: EventRouter, call_id: int) -> None:
        self._engine = engine
        self._router = router
        self.id = call_id
        self._queue = router.register(call_id)
        self.running: dict[int, Any] = {}
        """Sequence id -> owner tag of sequences not yet finished or preempted."""

    def submit(self, requests: Sequence[SequenceRequest]) -> list[int]:
        """Queue ``requests`` (their ``tag`` is kept as the owner tag)."""
        owner_tags = [r.tag for r in requests]
        for r in requests:
            r.tag = (self.id, r.tag)
        ids = self._engine.submit(requests)
        for seq_id, tag in zip(ids, owner_tags, strict=True):
            self.running[seq_id] = tag
        return ids

    async def next_event(self) -> Event:
        """The next event of this call (its ``tag`` is the owner tag again)."""
        event = await self._queue.get()
        event.tag = event.tag[1]
        if event.kind != "delta":
            self.running.pop(event.seq_id, None)
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Events until no sequence of the call is running."""
        while self.running:
            yield await self.next_event()

    async def preempt_running(self, seq_ids: Sequence[int] | None = None) -> list[Event]:
        """Take running sequences (all by default) out at the next step boundary; their "preempted" events.

        Sequences that finish before the boundary are delivered as usual through ``next_event``.
        """
        ids = list(self.running) if seq_ids is None else list(seq_ids)
        taken = await asyncio.wrap_future(self._engine.preempt(ids))
        for event in taken:
            event.tag = event.tag[1]
            self.running.pop(event.seq_id, None)
        return taken

    async def close(self) -> None:
        """Cancel what is still running and stop receiving events."""
        if self.running:
            await asyncio.wrap_future(self._engine.cancel(list(self.running)))
            self.running.clear()
        self._router.unregister(self.id)

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Generation:
    """Opens calls on an engine."""

    def __init__(self, engine: Engine, router: EventRouter) -> None:
        self.engine = engine
        self.router = router
        self._ids = itertools.count(1)

    def call(self) -> Call:
        """A new call."""
        return Call(self.engine, self.router, next(self._ids))
