"""Version vectors: per-replica event counters with the causal partial order."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any

from crdtcoord._exceptions import InvalidArgument
from crdtcoord._wire import INT_MAX, Reader, check_replica

__all__ = ["Causality", "VersionVector"]


class Causality(enum.Enum):
    """How two version vectors (or the events they summarise) relate."""

    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


class VersionVector:
    """A mutable map ``replica -> counter`` (absent means 0) ordered pointwise.

    ``a <= b`` when every counter of ``a`` is at most the one in ``b``; two vectors neither of
    which dominates the other describe concurrent histories. ``merge`` is the pointwise max.
    """

    __slots__ = ("_v",)

    def __init__(self, entries: Mapping[str, int] | None = None) -> None:
        self._v: dict[str, int] = {}
        if entries:
            for r, n in entries.items():
                check_replica(r)
                if type(n) is not int or n < 0 or n > INT_MAX:
                    raise InvalidArgument(f"counter for {r!r} must be an int in [0, 2**63-1]")
                if n:
                    self._v[r] = n

    def get(self, replica: str) -> int:
        return self._v.get(replica, 0)

    def __getitem__(self, replica: str) -> int:
        return self._v.get(replica, 0)

    def increment(self, replica: str) -> int:
        """Count one more event at ``replica`` and return its new counter."""
        n = self._v.get(replica, 0) + 1
        self._v[replica] = n
        return n

    def advance(self, replica: str, n: int) -> None:
        """Raise ``replica``'s counter to at least ``n``."""
        if n > self._v.get(replica, 0):
            self._v[replica] = n

    def merge(self, other: VersionVector) -> bool:
        """Pointwise max in place; True when this vector grew."""
        changed = False
        v = self._v
        for r, n in other._v.items():
            if n > v.get(r, 0):
                v[r] = n
                changed = True
        return changed

    def compare(self, other: VersionVector) -> Causality:
        le = self <= other
        ge = other <= self
        if le and ge:
            return Causality.EQUAL
        if le:
            return Causality.BEFORE
        if ge:
            return Causality.AFTER
        return Causality.CONCURRENT

    def concurrent(self, other: VersionVector) -> bool:
        return self.compare(other) is Causality.CONCURRENT

    def __le__(self, other: VersionVector) -> bool:
        ov = other._v
        return all(n <= ov.get(r, 0) for r, n in self._v.items())

    def __lt__(self, other: VersionVector) -> bool:
        return self <= other and self._v != other._v

    def __ge__(self, other: VersionVector) -> bool:
        return other <= self

    def __gt__(self, other: VersionVector) -> bool:
        return other < self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionVector) and self._v == other._v

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[str]:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)

    def items(self) -> Iterator[tuple[str, int]]:
        return iter(self._v.items())

    def total(self) -> int:
        """Sum of all counters: the number of events this vector has seen."""
        return sum(self._v.values())

    def copy(self) -> VersionVector:
        vv = VersionVector()
        vv._v = dict(self._v)
        return vv

    def to_dict(self) -> dict[str, int]:
        return dict(self._v)

    def to_wire(self) -> list[list[Any]]:
        return [[r, self._v[r]] for r in sorted(self._v)]

    @classmethod
    def from_wire(cls, x: Any, reader: Reader) -> VersionVector:
        rows = reader.arr(x, "version vector")
        vv = cls()
        for row in rows:
            r, n = reader.arr(row, "version vector entry", 2)
            vv._v[reader.replica(r)] = reader.integer(n, "counter", 1)
        reader.increasing((row[0] for row in rows), "version vector")
        return vv

    def __repr__(self) -> str:
        return f"VersionVector({self._v!r})"
