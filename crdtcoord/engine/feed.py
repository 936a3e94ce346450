"""The feed part: subscriptions to keys or prefixes, reported as :class:`Changed` events.

Every change of the store (a local update, or a received entry that inflated it) passes through
:meth:`Feed.changed` in the order the engine applied it; the driver turns these events into a
change feed (the asyncio runtime numbers them with a persisted commit sequence).
"""

from __future__ import annotations

from crdtcoord._exceptions import InvalidArgument
from crdtcoord.engine.core import Core
from crdtcoord.engine.effects import Changed

__all__ = ["Feed"]


class Feed:
    """Subscriptions of one engine."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._subs: dict[int, tuple[str | None, str | None]] = {}
        self._seq = 0
        self._all = False
        #: does any change produce an event? (read on every update: a plain attribute)
        self.active = False
        #: report a key once per (origin, poll) instead of once per change (see changed());
        #: set it with :meth:`set_coalesce`
        self.coalesce = False
        self._seen: set[tuple[str, str]] = set()
        #: coalescing: keys whose local change was reported in poll ``seen_gen`` (the engine's
        #: update hot path skips the call for them)
        self.local_seen: set[str] = set()
        self.seen_gen = -1

    @property
    def all_changes(self) -> bool:
        """Report every change, subscribed or not (a driver that keeps a change log sets it)."""
        return self._all

    @all_changes.setter
    def all_changes(self, on: bool) -> None:
        self._all = on
        self.active = bool(self._subs) or on

    def set_coalesce(self, on: bool) -> None:
        """Coalesce changes per poll, or not; either way the keys already reported in this
        poll are forgotten (a change after switching it off is reported, every one)."""
        self.coalesce = on
        self._seen.clear()
        self.local_seen.clear()

    def subscribe(self, *, key: str | None = None, prefix: str | None = None) -> int:
        if key is not None and prefix is not None:
            raise InvalidArgument("subscribe to a key or a prefix, not both")
        self._seq += 1
        self._subs[self._seq] = (key, prefix)
        self.active = True
        return self._seq

    def unsubscribe(self, sub: int) -> None:
        self._subs.pop(sub, None)
        self.active = bool(self._subs) or self._all

    def changed(self, key: str, origin: str | None) -> None:
        if not self.active:
            return
        coalesce = self.coalesce
        if coalesce:
            # one event per key and origin between two polls: a hot key updated 10,000 times
            # in one batching window is one change of that window, not 10,000 (the event says
            # "changed"; its value is read when it is delivered)
            polls = self._core.polls
            if self.seen_gen != polls:
                self._seen.clear()
                self.local_seen.clear()
                self.seen_gen = polls
            if key in self.local_seen if origin is None else (key, origin) in self._seen:
                return
        subs = self._subs
        hits = (
            tuple(
                s
                for s, (k, p) in subs.items()
                if (k is None and p is None) or k == key or (p is not None and key.startswith(p))
            )
            if subs
            else ()
        )
        if hits or self._all:
            if coalesce:
                if origin is None:
                    self.local_seen.add(key)
                else:
                    self._seen.add((key, origin))
            self._core.emit(Changed(key, origin, hits))
