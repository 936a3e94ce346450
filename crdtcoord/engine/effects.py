"""What the engine asks its driver to do, and what it tells it: effects and events.

:meth:`Engine.poll` returns them in order. The order matters: a :class:`Persist` always comes
before any :class:`Send` that depends on it (an ack, or a delta carrying that update), so a driver
that executes effects in order never acknowledges data it has not made durable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from crdtcoord._exceptions import CrdtcoordError
from crdtcoord.clocks.vv import VersionVector
from crdtcoord.engine.messages import Kind
from crdtcoord.types import CRDTBase

__all__ = [
    "Changed",
    "ConsistencyTimeout",
    "Effect",
    "Escalation",
    "Event",
    "OpFailed",
    "PeerRepair",
    "Persist",
    "TypeConflict",
    "EntryRefused",
    "ReadDone",
    "Send",
    "WriteDone",
]


class Send(NamedTuple):
    """Send ``data`` (one encoded message) to ``peer``. (Send and Persist are named tuples:
    the hot path builds one per update or message, and a frozen dataclass costs ~3x more.)"""

    peer: str
    data: bytes
    kind: Kind


class Persist(NamedTuple):
    """Make this change durable before the sends that follow: join ``delta`` into ``key``.

    ``replace`` means the key changed type (a concurrent creation with a larger type rank won):
    store ``delta`` as the key's whole state instead of joining it. ``vv`` is the key's version
    vector after the change, for critical keys (persist it with the state). ``op_id``: the
    update carried this operation id; store it in the same write (idempotent retries must be
    remembered exactly when their effect is)."""

    key: str
    delta: CRDTBase
    vv: VersionVector | None = None
    replace: bool = False
    op_id: str | None = None
    #: the key expired (see :func:`crdtcoord.engine.expiring_key`): delete it and its version
    #: vector (``delta`` is its last state, for the record)
    delete: bool = False


@dataclass(frozen=True, slots=True)
class Changed:
    """``key`` changed; ``origin`` is None for a local update, else the peer it came from."""

    key: str
    origin: str | None
    subscriptions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WriteDone:
    """A write reached its consistency level (``acked_by`` includes this node). ``handle`` is
    what :meth:`Engine.update` returned (not the idempotency ``op_id``)."""

    handle: int
    key: str
    acked_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadDone:
    """A read reached its consistency level; ``state`` is the join of what was read."""

    handle: int
    key: str
    state: CRDTBase | None
    replied: tuple[str, ...]


class ConsistencyTimeout(CrdtcoordError):
    """A write or read did not reach its consistency level in time.

    The outcome is **indefinite** for writes: the update is applied locally and will still
    propagate; only the acknowledgement count was not reached. ``reached`` counts this node.
    """

    def __init__(
        self, op: str, key: str, required: int, reached: int, peers: tuple[str, ...]
    ) -> None:
        self.op = op
        self.key = key
        self.required = required
        self.reached = reached
        self.peers = peers
        super().__init__(
            f"{op} of {key!r} reached {reached} of {required} replicas before the timeout"
            f" (answered: {', '.join(peers) or 'none'})"
        )


@dataclass(frozen=True, slots=True)
class OpFailed:
    """A write or read with a consistency level failed; ``error`` says what was reached."""

    handle: int
    key: str
    error: ConsistencyTimeout


@dataclass(frozen=True, slots=True)
class Escalation:
    """A critical key received an update concurrent with (causally unrelated to) the local
    state, and the type says the two conflict: a candidate for the consensus hook."""

    key: str
    local: CRDTBase
    remote: CRDTBase
    peer: str


@dataclass(frozen=True, slots=True)
class TypeConflict:
    """``key`` was created concurrently with two types (or type parameters). Every replica keeps
    the larger type rank (wire tag, then parameters) and discards the other's state: ``kept`` is
    the type that stays, ``dropped`` the state that was discarded here (its data is lost unless
    the application re-applies it)."""

    key: str
    kept: str
    dropped: CRDTBase
    peer: str


@dataclass(frozen=True, slots=True)
class EntryRefused:
    """A peer's state or delta for ``key`` was refused by the local state (a document update
    that does not integrate): nothing changed; ``reason`` says why."""

    key: str
    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRepair:
    """A peer is handed to anti-entropy: ``behind`` (it fell behind the delta buffer, or
    restarted without its state) or ``probe`` (it went silent with a large backlog: a root
    probe first, the descent only if it is not in sync)."""

    peer: str
    reason: str = field(default="behind")


Event = (
    Changed
    | WriteDone
    | ReadDone
    | OpFailed
    | Escalation
    | TypeConflict
    | PeerRepair
    | EntryRefused
)
Effect = Send | Persist | Event
