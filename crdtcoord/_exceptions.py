"""The exception tree of crdtcoord.

Every error the library raises on purpose is a :class:`CrdtcoordError`::

    CrdtcoordError
    ├── CodecError            malformed, hostile, oversized or unknown-version bytes (ValueError)
    ├── ClockSkewError        a remote HLC timestamp is further ahead than the configured max offset
    └── CrdtError             a mutation or merge the data type refuses; the state is unchanged
        ├── InvalidArgument   bad replica id, negative amount, value outside the domain (ValueError)
        ├── IncompatibleMerge states that cannot be joined (other type or parameters) (TypeError)
        ├── InsufficientRights a BoundedCounter decrement/transfer beyond the local escrow rights
        └── LeaseHeld         acquiring a Lease that another holder holds and has not let expire

Errors raised by a mutator or a merge always leave the object exactly as it was before the call.
"""

from __future__ import annotations

__all__ = [
    "ClockSkewError",
    "CodecError",
    "CrdtError",
    "CrdtcoordError",
    "IncompatibleMerge",
    "InsufficientRights",
    "InvalidArgument",
    "LeaseHeld",
]


class CrdtcoordError(Exception):
    """Base class of every error crdtcoord raises on purpose."""


class CodecError(CrdtcoordError, ValueError):
    """Bytes that do not decode to a valid CRDT state: nothing was built, nothing was merged."""


class ClockSkewError(CrdtcoordError):
    """A remote hybrid-clock timestamp lies further in the future than the allowed max offset."""

    def __init__(self, remote_wall: int, local_wall: int, max_offset: int) -> None:
        self.remote_wall = remote_wall
        self.local_wall = local_wall
        self.max_offset = max_offset
        super().__init__(
            f"remote timestamp {remote_wall} ms is {remote_wall - local_wall} ms ahead of the "
            f"local physical clock ({local_wall} ms); max offset is {max_offset} ms"
        )


class CrdtError(CrdtcoordError):
    """A data-type operation was refused; the object is unchanged."""


class InvalidArgument(CrdtError, ValueError):
    """An argument is outside what the type accepts (replica id, amount, element, value)."""


class IncompatibleMerge(CrdtError, TypeError):
    """Two states cannot be joined: different types, or parameters that must agree (e.g. bounds)."""


class InsufficientRights(CrdtError):
    """A BoundedCounter replica tried to spend more escrow rights than it holds.

    ``available`` is what the replica could have spent; ``requested`` what it asked for. The fix
    is a ``transfer`` of rights from a richer replica (or an escalation), never a plain retry.
    """

    def __init__(self, replica: str, requested: int, available: int) -> None:
        self.replica = replica
        self.requested = requested
        self.available = available
        super().__init__(f"replica {replica!r} holds {available} rights, {requested} requested")


class LeaseHeld(CrdtError):
    """The lease is held by another holder whose term has not expired at the given time."""

    def __init__(self, holder: str, expiry: object, token: int) -> None:
        self.holder = holder
        self.expiry = expiry
        self.token = token
        super().__init__(f"lease held by {holder!r} until {expiry} (fencing token {token})")
