"""The contract every crdtcoord data type follows, and the wire-type registry (internal).

The contract (see :class:`CRDT`) is deliberately narrow, in the style of riak_dt and Akka
Distributed Data:

* ``value()`` — the user's view, a plain Python value;
* delta-mutators take the acting replica id explicitly (and an HLC timestamp where time matters),
  update the object in place and **return the delta** they applied;
* ``merge(other)`` — the join, in place; idempotent, commutative, associative; returns whether the
  state grew (an engine forwards only deltas that inflated its state);
* ``copy()``, structural ``==`` (not value equality: two counters can both read 42 and differ),
  ``stats()``;
* ``to_payload()`` / ``from_payload()`` — the versioned wire form, driven by :mod:`crdtcoord.codec`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from crdtcoord._exceptions import IncompatibleMerge
from crdtcoord._wire import Reader

__all__ = ["CRDT", "CRDTBase", "read_crdt", "registered_types", "wire_type"]


@runtime_checkable
class CRDT(Protocol):
    """What the engine, the codec and the testing kit need from a replicated data type."""

    TYPE_TAG: ClassVar[int]
    WIRE_VERSION: ClassVar[int]

    def value(self) -> Any: ...

    def merge(self, other: Self) -> bool: ...

    def copy(self) -> Self: ...

    def stats(self) -> dict[str, int]: ...

    def to_payload(self) -> Any: ...

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self: ...


_REGISTRY: dict[int, type[CRDTBase]] = {}

C = TypeVar("C", bound="type[CRDTBase]")


def wire_type(tag: int, version: int = 1) -> Any:
    """Class decorator: give a type its wire tag (unique, never reused) and current version."""

    def deco(cls: C) -> C:
        if tag in _REGISTRY and _REGISTRY[tag] is not cls:
            raise RuntimeError(f"wire tag {tag} already used by {_REGISTRY[tag].__name__}")
        cls.TYPE_TAG = tag
        cls.WIRE_VERSION = version
        _REGISTRY[tag] = cls
        return cls

    return deco


def registered_types() -> dict[int, type[CRDTBase]]:
    """Wire tag -> type, for every registered type."""
    return dict(_REGISTRY)


class CRDTBase:
    """Shared behaviour of the built-in types; subclasses implement the abstract methods."""

    __slots__ = ()
    TYPE_TAG: ClassVar[int] = 0
    WIRE_VERSION: ClassVar[int] = 1
    #: Versions this build can decode (a type lists old ones here once it has migrations).
    READ_VERSIONS: ClassVar[tuple[int, ...]] = (1,)
    #: Inside an ORMap: does a new full value supersede every value it observed? True for small
    #: "latest wins" types (registers, flags); counters and sets merge contributions.
    SUPERSEDES_IN_MAP: ClassVar[bool] = False
    #: Inside an ORMap: act under a per-chain actor id (counters: a key re-created after a
    #: remove must not continue the old per-replica totals, which stale replicas still hold).
    CHAIN_ACTOR_IN_MAP: ClassVar[bool] = False
    #: May this type be a value inside an ORMap?
    ALLOWED_IN_MAP: ClassVar[bool] = True

    def value(self) -> Any:
        raise NotImplementedError

    def merge(self, other: Self) -> bool:
        raise NotImplementedError

    def copy(self) -> Self:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Sizes: ``elements`` (user-visible), ``metadata`` (dots, entries, context) and more."""
        raise NotImplementedError

    def to_payload(self) -> Any:
        raise NotImplementedError

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        raise NotImplementedError

    def is_bottom(self) -> bool:
        """True for the initial (empty) state, the identity of ``merge``."""
        return self == type(self)._bottom_like(self)

    @classmethod
    def _bottom_like(cls, other: Self) -> Self:
        return cls()

    def compat_key(self) -> tuple[Any, ...]:
        """Parameters two states must share to be joinable (e.g. a counter's lower bound)."""
        return ()

    def _check_mergeable(self, other: object) -> None:
        if type(other) is not type(self):
            raise IncompatibleMerge(
                f"cannot merge {type(other).__name__} into {type(self).__name__}"
            )
        assert isinstance(other, CRDTBase)
        if other.compat_key() != self.compat_key():
            raise IncompatibleMerge(
                f"cannot merge {type(self).__name__} with parameters {other.compat_key()} "
                f"into one with {self.compat_key()}"
            )

    def __le__(self, other: Self) -> bool:
        """Semilattice order: ``a <= b`` iff merging ``a`` into ``b`` changes nothing."""
        probe = other.copy()
        return not probe.merge(self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value()!r})"


def read_crdt(obj: Any, reader: Reader, depth: int = 0) -> CRDTBase:
    """Build a CRDT from an unpacked ``[tag, version, payload]`` envelope, strictly."""
    if depth > reader.limits.max_depth:
        reader.fail("CRDTs nest too deeply")
    tag, version, payload = reader.arr(obj, "envelope", 3)
    tag = reader.integer(tag, "type tag", 0, 255)
    version = reader.integer(version, "version", 0, 255)
    cls = _REGISTRY.get(tag)
    if cls is None:
        reader.fail(f"unknown type tag {tag}")
    if version not in cls.READ_VERSIONS:
        reader.fail(
            f"unsupported version {version} of {cls.__name__} "
            f"(this build reads {', '.join(map(str, cls.READ_VERSIONS))})"
        )
    reader.path.append(cls.__name__)
    try:
        return cls.from_payload(payload, version, reader, depth)
    finally:
        reader.path.pop()
