"""The change feed: every change of a node's store, in the node's commit order, with cursors.

A change (a local update, or a received delta or state that changed a key) gets a **cursor**,
``"<incarnation>-<sequence>"``, when the write that made it durable has committed — so a cursor is
only ever handed out for a change that survives a crash, and a change that arrives later (a
late delta) always gets a larger cursor than every one handed out before. The sequence is
allocated in blocks whose upper end is persisted with the writes (``feed_cursor`` in the
storage's counters): after a restart it continues above every cursor it could have handed out.

The node keeps the last ``keep`` changes in memory. ``subscribe(prefix, since=cursor)`` replays
the kept changes after the cursor, then follows live ones. A cursor the node cannot continue
from — older than what it keeps, from an earlier process start or an earlier incarnation — gets
:class:`Compacted`, with a snapshot (the current value of every key under the prefix) and the
cursor to resume from after it. Values are the key's **current** value when the change is
delivered (a CRDT's history is not kept); a key changed several times appears once per change.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from crdtcoord._exceptions import CrdtcoordError, InvalidArgument
from crdtcoord.engine import Changed, Event

__all__ = ["Change", "ChangeFeed", "Compacted", "Subscription"]

#: Cursors allocated per persisted block.
_BLOCK = 100_000
META_KEY = "feed_cursor"


@dataclass(frozen=True, slots=True)
class Change:
    """One change: the key, its value when delivered, where it came from (None: this node),
    and the cursor to resume after it."""

    key: str
    value: Any
    origin: str | None
    cursor: str


class Compacted(CrdtcoordError):
    """The feed cannot continue from the given cursor. ``snapshot`` holds the current value of
    every key under the prefix; resume with ``since=cursor`` to get every later change."""

    def __init__(self, reason: str, cursor: str, snapshot: dict[str, Any]) -> None:
        self.cursor = cursor
        self.snapshot = snapshot
        super().__init__(f"{reason}: restart from the snapshot (cursor {cursor})")


class _Subscriber:
    __slots__ = ("lagged", "prefix", "queue")

    def __init__(self, prefix: str, size: int) -> None:
        self.prefix = prefix
        self.queue: asyncio.Queue[tuple[int, str, str | None]] = asyncio.Queue(size)
        self.lagged = False


class ChangeFeed:
    """Cursors, the kept changes and the subscribers of one node."""

    def __init__(
        self,
        incarnation: int,
        restored: int,
        value_of: Callable[[str], Any],
        keys: Callable[[str], list[str]],
        *,
        keep: int = 100_000,
        queue: int = 10_000,
    ) -> None:
        self._inc = incarnation
        self._first = restored  # sequences up to here belong to earlier process starts
        self._next = restored
        self._hi = restored
        self._log: deque[tuple[int, str, str | None]] = deque(maxlen=keep)
        self._subs: list[_Subscriber] = []
        self._value = value_of
        self._keys = keys
        self._queue = queue

    @property
    def cursor(self) -> str:
        """The cursor of the latest change (resume after it)."""
        return f"{self._inc}-{self._next}"

    def meta(self, events: list[Event]) -> dict[str, int] | None:
        """Host hook, before a write: extend the persisted cursor block if this write's changes
        would go beyond it."""
        n = sum(1 for e in events if isinstance(e, Changed))
        if self._next + n <= self._hi:
            return None
        self._hi = self._next + n + _BLOCK
        return {META_KEY: self._hi}

    def changed(self, e: Changed) -> None:
        """Host sink, after the write: number the change and hand it to the subscribers."""
        self._next += 1
        entry = (self._next, e.key, e.origin)
        self._log.append(entry)
        for sub in self._subs:
            if e.key.startswith(sub.prefix) and not sub.lagged:
                try:
                    sub.queue.put_nowait(entry)
                except asyncio.QueueFull:
                    sub.lagged = True  # it will get Compacted and a snapshot

    def lag(self) -> int:
        """Changes waiting in the slowest subscriber's queue."""
        return max((s.queue.qsize() for s in self._subs), default=0)

    def subscribers(self) -> int:
        return len(self._subs)

    def _seq(self, cursor: str) -> int | None:
        """The sequence of a cursor of this incarnation, None if of another one."""
        try:
            inc, seq = (int(p) for p in cursor.split("-"))
        except ValueError:
            raise InvalidArgument(f"not a feed cursor: {cursor!r}") from None
        if inc != self._inc:
            return None
        if seq > self._next:
            raise InvalidArgument(f"cursor {cursor} is ahead of this node ({self.cursor})")
        return seq

    def _compacted(self, reason: str, prefix: str) -> Compacted:
        snap = {k: self._value(k) for k in self._keys(prefix)}
        return Compacted(reason, self.cursor, snap)

    def subscribe(self, prefix: str = "", since: str | None = None) -> Subscription:
        """Changes of keys starting with ``prefix``: those after ``since`` first (if the node
        still keeps them; else :class:`Compacted` on the first ``anext``), then live ones,
        forever. The subscription is registered **now**, not when iteration starts: a change
        made right after this call is never missed."""
        return Subscription(self, prefix, since)

    def _register(self, prefix: str, since: str | None) -> tuple[_Subscriber, list[Any], Any]:
        """Register a subscriber; its replay (the kept changes after ``since``) and the
        :class:`Compacted` to raise instead, if the node cannot continue from ``since``."""
        seq = self._seq(since) if since is not None else None  # (a bad cursor raises now)
        sub = _Subscriber(prefix, self._queue)
        self._subs.append(sub)  # registered in the same step as the replay snapshot
        replay: list[Any] = []
        error = None
        if since is not None:
            oldest = self._log[0][0] if self._log else self._next + 1
            if seq is None:
                error = self._compacted("the cursor is from another incarnation", prefix)
            elif seq < self._first:
                error = self._compacted(
                    "the node restarted after this cursor (changes from before a restart are not"
                    " kept)",
                    prefix,
                )
            elif seq < min(oldest - 1, self._next):
                error = self._compacted("the node no longer keeps changes that old", prefix)
            else:
                replay = [e for e in self._log if e[0] > seq and e[1].startswith(prefix)]
        return sub, replay, error

    def _unregister(self, sub: _Subscriber) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def _change(self, entry: tuple[int, str, str | None]) -> Change:
        s, key, origin = entry
        return Change(key, self._value(key), origin, f"{self._inc}-{s}")


class Subscription(AsyncIterator[Change]):
    """An async iterator of :class:`Change`; registered from creation until :meth:`close`
    (or ``async with``/``with`` exit, the iterator's end, or garbage collection)."""

    def __init__(self, feed: ChangeFeed, prefix: str, since: str | None) -> None:
        self._feed = feed
        self._sub, replay, self._error = feed._register(prefix, since)
        self._replay = deque(replay)
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        if self._closed:
            raise StopAsyncIteration
        if self._error is not None:
            err, self._error = self._error, None
            self.close()
            raise err
        if self._replay:
            return self._feed._change(self._replay.popleft())
        if self._sub.lagged:
            self.close()
            raise self._feed._compacted("the subscriber fell behind", self._sub.prefix)
        return self._feed._change(await self._sub.queue.get())

    def close(self) -> None:
        """Stop receiving changes (idempotent)."""
        if not self._closed:
            self._closed = True
            self._feed._unregister(self._sub)

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()
