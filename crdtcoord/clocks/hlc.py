"""Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", OPODIS 2014).

A timestamp is ``(wall, logical)``: ``wall`` is the largest physical time (integer milliseconds)
seen so far, ``logical`` counts events within that millisecond. HLC timestamps

* respect causality: if event e happened before f then ``ts(e) < ts(f)``, whatever the clock skew,
  which is what makes last-writer-wins safe for causally related writes;
* stay close to physical time: ``wall - pt < max_offset`` as long as peers respect the offset;
* never go backwards, even when the OS clock steps back.

The physical clock is injected (``clock`` returns integer milliseconds); the pure core never reads
the wall clock itself, so the simulator can skew, freeze and step clocks per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crdtcoord._exceptions import ClockSkewError, InvalidArgument
from crdtcoord._wire import INT_MAX

__all__ = ["HLC", "Timestamp"]


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """An HLC timestamp: totally ordered by ``(wall, logical)``; ties need a replica id."""

    wall: int
    logical: int = 0

    def __post_init__(self) -> None:
        if type(self.wall) is not int or type(self.logical) is not int:
            raise InvalidArgument("Timestamp fields must be ints")
        if not (0 <= self.wall <= INT_MAX and 0 <= self.logical <= INT_MAX):
            raise InvalidArgument(f"Timestamp out of range: {self.wall}.{self.logical}")

    def __str__(self) -> str:
        return f"{self.wall}.{self.logical}"

    def plus(self, ms: int) -> Timestamp:
        """The timestamp ``ms`` milliseconds later (logical part reset): used for expiries."""
        wall = self.wall + ms
        if type(ms) is not int or not 0 <= wall <= INT_MAX:
            return Timestamp(wall, 0)  # (raises the descriptive error)
        return _trusted(wall, 0)

    def to_wire(self) -> list[int]:
        return [self.wall, self.logical]


_new = object.__new__
_set = object.__setattr__


def _trusted(wall: int, logical: int) -> Timestamp:
    """A Timestamp from ints already known valid (the clock's own arithmetic): no checks."""
    t = _new(Timestamp)
    _set(t, "wall", wall)
    _set(t, "logical", logical)
    return t


ZERO = Timestamp(0, 0)


class HLC:
    """A hybrid logical clock for one replica.

    ``now()`` stamps a local or send event; ``update(remote)`` merges a timestamp received from a
    peer and returns the receive event's timestamp. A remote timestamp more than ``max_offset``
    milliseconds ahead of the local physical clock is rejected with :class:`ClockSkewError` when
    ``strict`` (the default), or accepted and counted in :attr:`skew_events` otherwise.
    """

    __slots__ = ("_clock", "_last", "max_offset", "max_seen_ahead", "skew_events", "strict")

    def __init__(
        self, clock: Callable[[], int], *, max_offset: int = 500, strict: bool = True
    ) -> None:
        if max_offset < 0:
            raise InvalidArgument("max_offset must be >= 0")
        self._clock = clock
        self._last = ZERO
        self.max_offset = max_offset
        self.strict = strict
        self.skew_events = 0
        self.max_seen_ahead = 0

    @property
    def last(self) -> Timestamp:
        """The latest timestamp this clock issued or merged."""
        return self._last

    def physical(self) -> int:
        """The injected physical clock, in integer milliseconds."""
        pt = self._clock()
        if type(pt) is not int:
            pt = int(pt)
        return pt

    def now(self) -> Timestamp:
        """Timestamp a local or send event."""
        pt = self.physical()
        last = self._last
        if pt > last.wall:
            ts = _trusted(pt, 0) if 0 < pt <= INT_MAX else Timestamp(pt, 0)
        else:
            ts = Timestamp(last.wall, last.logical + 1)
        self._last = ts
        return ts

    def update(self, remote: Timestamp) -> Timestamp:
        """Merge a remote timestamp (receive event) and return the new local timestamp."""
        pt = self.physical()
        ahead = remote.wall - pt
        if ahead > self.max_offset:
            if self.strict:
                raise ClockSkewError(remote.wall, pt, self.max_offset)
            self.skew_events += 1
        self.max_seen_ahead = max(self.max_seen_ahead, ahead)
        last = self._last
        wall = max(last.wall, remote.wall, pt)
        if wall == last.wall == remote.wall:
            logical = max(last.logical, remote.logical) + 1
        elif wall == last.wall:
            logical = last.logical + 1
        elif wall == remote.wall:
            logical = remote.logical + 1
        else:
            logical = 0
        ok = logical <= INT_MAX and wall > 0
        ts = _trusted(wall, logical) if ok else Timestamp(wall, logical)
        self._last = ts
        return ts

    def __repr__(self) -> str:
        return f"HLC(last={self._last}, max_offset={self.max_offset}, strict={self.strict})"
