"""Last-writer-wins register ordered by hybrid logical clock timestamps.

The register holds one value, the one written with the largest ``(timestamp, replica id)``; the
replica id breaks ties between equal HLC timestamps, and the value's canonical bytes break the
(only forgeable) tie of one replica writing twice at the same timestamp, so merge is a join.

Guarantees: with timestamps from an :class:`~crdtcoord.HLC` that has seen the current value
(pass the clock itself to :meth:`LWWRegister.assign`), a write that causally follows another always
wins, whatever the wall-clock skew. Concurrent writes are ordered arbitrarily but identically
everywhere: one of them is silently discarded (use :class:`MVRegister` to keep both). A stale read
shows an older write. Metadata: one timestamp and one replica id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._exceptions import InvalidArgument
from crdtcoord._wire import Reader, Value, check_replica, pack_value, unpack_value
from crdtcoord.clocks.hlc import HLC, Timestamp
from crdtcoord.types._base import CRDTBase, Op, UpdateContext, wire_type

__all__ = ["LWWRegister"]


@wire_type(tag=6)
class LWWRegister(CRDTBase):
    """A last-writer-wins register; ``value()`` is ``None`` until the first write."""

    __slots__ = ("_blob", "_replica", "_ts")
    SUPERSEDES_IN_MAP = True

    @dataclass(frozen=True, slots=True)
    class Assign(Op):
        """Write ``value``, stamped by the context's HLC after the current write."""

        value: Value
        FIELDS = ("value",)

        def apply(self, state: LWWRegister, ctx: UpdateContext) -> LWWRegister:
            if ctx.hlc is None:
                ctx.now()  # raises: an LWW write needs a clock
            assert ctx.hlc is not None
            return state.assign(ctx.replica, self.value, ctx.hlc)

    OPS = (Assign,)

    def __init__(self) -> None:
        self._ts: Timestamp | None = None
        self._replica = ""
        self._blob = b""

    def value(self) -> Value:
        return None if self._ts is None else unpack_value(self._blob)

    @property
    def timestamp(self) -> Timestamp | None:
        """Timestamp of the winning write (None before the first write)."""
        return self._ts

    @property
    def writer(self) -> str | None:
        """Replica that made the winning write."""
        return self._replica if self._ts is not None else None

    def _key(self) -> tuple[Timestamp, str, bytes]:
        assert self._ts is not None
        return (self._ts, self._replica, self._blob)

    def assign(self, replica: str, value: Value, at: Timestamp | HLC) -> LWWRegister:
        """Write ``value``. ``at`` is an HLC timestamp, or the replica's :class:`HLC` — then the
        write is stamped after the current one (``hlc.update``) so it always wins locally.

        An explicit timestamp not newer than the current write raises :class:`InvalidArgument`:
        the write would be lost, which is never what the caller meant.
        """
        check_replica(replica)
        blob = pack_value(value)
        if isinstance(at, HLC):
            ts = at.update(self._ts) if self._ts is not None else at.now()
        elif isinstance(at, Timestamp):
            ts = at
        else:
            raise InvalidArgument(f"at must be a Timestamp or an HLC, got {type(at).__name__}")
        if self._ts is not None and (ts, replica) <= (self._ts, self._replica):
            raise InvalidArgument(
                f"timestamp {ts} of {replica!r} is not newer than the current write "
                f"({self._ts} by {self._replica!r}); pass the HLC to stamp the write after it"
            )
        delta = LWWRegister()
        delta._ts, delta._replica, delta._blob = ts, replica, blob
        self.merge(delta)
        return delta

    def merge(self, other: LWWRegister) -> bool:
        self._check_mergeable(other)
        if other._ts is None:
            return False
        if self._ts is None or other._key() > self._key():
            self._ts, self._replica, self._blob = other._ts, other._replica, other._blob
            return True
        return False

    def copy(self) -> Self:
        c = type(self)()
        c._ts, c._replica, c._blob = self._ts, self._replica, self._blob
        return c

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        assert isinstance(other, LWWRegister)
        if self._ts is None or other._ts is None:
            return self._ts is other._ts
        return self._key() == other._key()

    def stats(self) -> dict[str, int]:
        return {"elements": 0 if self._ts is None else 1, "metadata": 0 if self._ts is None else 2}

    def to_payload(self) -> Any:
        if self._ts is None:
            return None
        return [self._ts.wall, self._ts.logical, self._replica, unpack_value(self._blob)]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        c = cls()
        if payload is None:
            return c
        wall, logical, replica, raw = reader.arr(payload, "LWWRegister", 4)
        c._ts = Timestamp(reader.integer(wall, "wall"), reader.integer(logical, "logical"))
        c._replica = reader.replica(replica)
        c._blob = reader.value_blob(raw)
        return c
