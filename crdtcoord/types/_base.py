"""The contract every crdtcoord data type follows, ops as data, and the wire-type registry.

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

**Ops as data.** Every type also declares its operations as small frozen dataclasses
(``GCounter.Increment(3)``, ``ORSet.Add("x")``, ``ORMap.Update("k", ORSet.Add("x"))``) listed in
``OPS``. ``state.apply(op, ctx)`` applies one and returns exactly its delta. Ops validate their
arguments when built, encode canonically (:func:`crdtcoord.codec.encode_op`) and can therefore be
logged, retried idempotently, sent to another node or proposed to consensus unchanged; the testing
kit generates them from their declared field kinds (:data:`FIELD_KINDS`).

A user type joins the family with :func:`register_type` (tags 128..255 are for users).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from crdtcoord._exceptions import IncompatibleMerge, InvalidArgument
from crdtcoord._wire import (
    INT_MAX,
    INT_MIN,
    Reader,
    check_amount,
    check_element,
    check_replica,
    normalize_value,
)
from crdtcoord.clocks.hlc import HLC, Timestamp

__all__ = [
    "CRDT",
    "FIELD_KINDS",
    "USER_TAGS",
    "CRDTBase",
    "Op",
    "UpdateContext",
    "as_context",
    "Summary",
    "read_crdt",
    "read_op",
    "read_summary",
    "register_type",
    "registered_types",
    "wire_type",
]


@dataclass(frozen=True, slots=True)
class UpdateContext:
    """Who acts in an update, and (where time matters) the replica's hybrid clock.

    Every update callback in crdtcoord has the form ``fn(state, ctx)``: it applies mutators with
    ``ctx.replica`` as the replica id and returns their delta. The engine builds the context (its
    actor id and its HLC); inside an :class:`~crdtcoord.ORMap` the map hands nested values a
    context whose ``replica`` is the nested actor it chose. Without a clock, ``now()`` refuses.
    """

    replica: str
    hlc: HLC | None = None

    def now(self) -> Timestamp:
        """A fresh HLC timestamp for this update (:class:`InvalidArgument` without a clock)."""
        if self.hlc is None:
            raise InvalidArgument("this operation needs a clock: pass UpdateContext(replica, hlc)")
        return self.hlc.now()

    def stamp_after(self, ts: Timestamp | None) -> Timestamp:
        """A timestamp later than ``ts`` (a time this state already holds), or a fresh one."""
        if ts is None or self.hlc is None:
            return self.now()
        return self.hlc.update(ts)

    def nested(self, actor: str) -> UpdateContext:
        """The context a nested value acts in: another actor, the same clock."""
        return UpdateContext(actor, self.hlc)


def as_context(ctx: object) -> UpdateContext:
    """Accept a replica id or an :class:`UpdateContext` (validated either way)."""
    if isinstance(ctx, UpdateContext):
        check_replica(ctx.replica)
        if ctx.hlc is not None and not isinstance(ctx.hlc, HLC):
            raise InvalidArgument(f"UpdateContext.hlc must be an HLC, got {type(ctx.hlc).__name__}")
        return ctx
    return UpdateContext(check_replica(ctx))


#: What an op field holds; drives validation, the wire form and the testing kit's strategies.
#: ``amount`` int >= 0; ``int`` any 64-bit int; ``ttl`` int >= 1 (ms); ``element``/``key`` a set
#: element or map key; ``value`` a register value; ``replica``/``holder`` an id; ``holder?`` an id
#: or None; ``op`` a nested op (of a type a map accepts); ``update`` a Yjs v1 update (bytes, read
#: strictly).
FIELD_KINDS = (
    "amount",
    "int",
    "ttl",
    "element",
    "key",
    "value",
    "replica",
    "holder",
    "holder?",
    "op",
    "update",
)


def _check_field(kind: str, x: object, name: str) -> Any:
    if kind == "amount":
        return check_amount(x, name)
    if kind == "ttl":
        return check_amount(x, name, allow_zero=False)
    if kind == "int":
        if type(x) is not int or not INT_MIN <= x <= INT_MAX:
            raise InvalidArgument(f"{name} must be a 64-bit int, got {x!r}")
        return x
    if kind in ("element", "key"):
        return check_element(x)
    if kind == "value":
        return normalize_value(x)
    if kind in ("replica", "holder"):
        return check_replica(x)
    if kind == "holder?":
        return None if x is None else check_replica(x)
    if kind == "op":
        if not isinstance(x, Op):
            raise InvalidArgument(f"{name} must be an op, got {type(x).__name__}")
        return x
    if kind == "update":
        from crdtcoord.documents._v1 import UpdateError, parse_update

        if not isinstance(x, bytes | bytearray):
            raise InvalidArgument(f"{name} must be bytes (a Yjs v1 update), got {type(x).__name__}")
        try:
            parse_update(x)
        except UpdateError as exc:
            raise InvalidArgument(f"{name} is not a v1 update: {exc}") from None
        return x if isinstance(x, bytes) else bytes(x)
    raise InvalidArgument(f"unknown op field kind {kind!r}")


def _check_plan(cls: type) -> tuple[tuple[str, str, str], ...]:
    """``(field, kind, label)`` of each field of an op class, cached on the class."""
    kinds = getattr(cls, "FIELDS", ())
    plan = tuple(
        (f.name, kinds[i] if i < len(kinds) else "value", f"{cls.__name__}.{f.name}")
        for i, f in enumerate(dataclasses.fields(cls))
    )
    type.__setattr__(cls, "_check_plan", plan)
    return plan


class Op:
    """An operation of one CRDT type, as data. Subclasses are frozen dataclasses.

    ``FIELDS`` gives the kind of each dataclass field, in order (see :data:`FIELD_KINDS`; missing
    entries are ``value``). Arguments are validated and normalized when the op is built, so an op
    that exists is well-formed: applying it can only be refused by the state (e.g. a lease held by
    someone else), never for its arguments. ``TYPE`` and ``CODE`` are set when the owning type is
    registered (``CODE`` is the op's position in the type's ``OPS``, from 1).
    """

    __slots__ = ()
    TYPE: ClassVar[type[CRDTBase]]
    CODE: ClassVar[int]
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        cls = type(self)
        plan = cls.__dict__.get("_check_plan")
        if plan is None:  # (once per op class: which field is checked as what)
            plan = _check_plan(cls)
        for fname, kind, label in plan:
            x = getattr(self, fname)
            if kind == "amount" and type(x) is int and 0 <= x <= INT_MAX:
                continue  # the common case, already valid (an update's hot path)
            object.__setattr__(self, fname, _check_field(kind, x, label))

    def apply(self, state: Any, ctx: UpdateContext) -> CRDTBase:
        """Mutate ``state`` and return the delta (exactly this op's effect)."""
        raise NotImplementedError

    #: Capability: the op can :meth:`extend` a delta of earlier ops of its class (the engine
    #: then folds a run of them on one key into one delta, instead of one delta each).
    EXTENDS: ClassVar[bool] = False

    def extend(self, state: Any, ctx: UpdateContext, delta: Any) -> None:
        """Apply this op to ``state`` and fold its effect into ``delta`` in place, where
        ``delta`` is the join of the deltas of earlier ops of this class by ``ctx.replica`` on
        ``state``: afterwards ``delta`` must equal that join with this op's delta. Only for
        types whose such joins stay small (a counter's one entry)."""
        raise NotImplementedError

    def args(self) -> list[Any]:
        """The op's arguments in field order (nested ops in their wire form)."""
        out: list[Any] = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            x = getattr(self, f.name)
            out.append(x.to_wire() if isinstance(x, Op) else x)
        return out

    def to_wire(self) -> list[Any]:
        """``[type_tag, op_code, [args...]]`` (see :func:`crdtcoord.codec.encode_op`)."""
        cls = type(self)
        if not hasattr(cls, "CODE"):
            raise InvalidArgument(f"{cls.__qualname__} is not an op of a registered type")
        return [cls.TYPE.TYPE_TAG, cls.CODE, self.args()]


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

#: Wire tags 1..127 belong to crdtcoord; user types take one of these.
USER_TAGS = range(128, 256)

C = TypeVar("C", bound="type[CRDTBase]")


def _register(cls: type[CRDTBase], tag: int, version: int) -> None:
    if type(tag) is not int or not 1 <= tag <= 255:
        raise InvalidArgument(f"wire tags are 1..255, got {tag!r}")
    if type(version) is not int or not 1 <= version <= 255:
        raise InvalidArgument(f"wire versions are 1..255, got {version!r}")
    old = _REGISTRY.get(tag)
    if old is not None and old is not cls:
        same = (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
        if not same or old.__module__ != "__main__":
            raise InvalidArgument(f"wire tag {tag} already used by {old.__qualname__}")
        # the same class defined again in __main__ (a re-run notebook cell): it replaces itself
    if not (isinstance(cls, type) and issubclass(cls, CRDTBase)):
        raise InvalidArgument(f"only CRDTBase subclasses can be registered, got {cls!r}")
    ops = cls.__dict__.get("OPS", ())
    for code, op in enumerate(ops, 1):
        if not (isinstance(op, type) and issubclass(op, Op) and "__dataclass_fields__" in vars(op)):
            raise InvalidArgument(f"{cls.__name__}.OPS must list Op dataclasses, got {op!r}")
        n = len(dataclasses.fields(op))  # type: ignore[arg-type]
        bad = [k for k in op.FIELDS if k not in FIELD_KINDS]
        if bad or len(op.FIELDS) > n:
            raise InvalidArgument(
                f"{op.__qualname__}.FIELDS must name the kind of each of its {n} fields, from "
                f"{', '.join(FIELD_KINDS)} (got {op.FIELDS!r})"
            )
        op.TYPE = cls
        op.CODE = code
    cls.TYPE_TAG = tag
    cls.WIRE_VERSION = version
    if "READ_VERSIONS" not in cls.__dict__:
        cls.READ_VERSIONS = (version,)
    _REGISTRY[tag] = cls


def wire_type(tag: int, version: int = 1) -> Callable[[C], C]:
    """Class decorator for the built-in types: wire tag (never reused) and current version."""

    def deco(cls: C) -> C:
        _register(cls, tag, version)
        return cls

    return deco


def register_type(tag: int, version: int = 1) -> Callable[[C], C]:
    """Class decorator that makes a user-defined :class:`CRDTBase` subclass a first-class type.

    ``tag`` must be in 128..255 (1..127 are crdtcoord's) and unique; ``version`` is the current
    version of the type's payload (``READ_VERSIONS`` lists the versions it can still decode).
    The type's ``OPS`` get their op codes. Registered types travel through the codec and the
    engine, and the testing kit derives strategies for them from their ops.
    """
    if type(tag) is not int or tag not in USER_TAGS:
        raise InvalidArgument(f"user types take a wire tag in 128..255, got {tag!r}")
    return wire_type(tag, version)


def registered_types() -> dict[int, type[CRDTBase]]:
    """Wire tag -> type, for every registered type."""
    return dict(_REGISTRY)


class CRDTBase:
    """Shared behaviour of crdtcoord types; subclass it (and :func:`register_type`) for your own.

    A subclass implements ``value``, ``merge``, ``copy``, ``__eq__``, ``stats``, ``to_payload``
    and ``from_payload``, and lists its ops (:class:`Op` dataclasses) in ``OPS``.
    """

    __slots__ = ()
    TYPE_TAG: ClassVar[int] = 0
    WIRE_VERSION: ClassVar[int] = 1
    #: Versions this build can decode (a type lists old ones here once it has migrations).
    READ_VERSIONS: ClassVar[tuple[int, ...]] = (1,)
    #: The operations of this type, as data (op codes are positions in this tuple, from 1).
    OPS: ClassVar[tuple[type[Op], ...]] = ()
    #: Inside an ORMap: does a new full value supersede every value it observed? True for small
    #: "latest wins" types (registers, flags); counters and sets merge contributions.
    SUPERSEDES_IN_MAP: ClassVar[bool] = False
    #: Inside an ORMap: act under a per-chain actor id (counters: a key re-created after a
    #: remove must not continue the old per-replica totals, which stale replicas still hold).
    CHAIN_ACTOR_IN_MAP: ClassVar[bool] = False
    #: May this type be a value inside an ORMap?
    ALLOWED_IN_MAP: ClassVar[bool] = True
    #: Escalation capability: a key of this type is critical by default (its concurrent
    #: conflicting updates go to the escalation hook). Such types define ``conflicts(a, b)``.
    CRITICAL_BY_DEFAULT: ClassVar[bool] = False

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

    @classmethod
    def join_all(cls, states: list[Self]) -> Self:
        """A fresh join of ``states`` (all of this type and parameters). Types may override it
        with a one-pass version; the engine uses it to batch deltas."""
        out = states[0].copy()
        for s in states[1:]:
            out.merge(s)
        return out

    def apply(self, op: Op, ctx: UpdateContext | str) -> Self:
        """Apply one of this type's ops and return its delta; ``ctx`` may be a replica id."""
        if not isinstance(op, Op) or not isinstance(self, getattr(type(op), "TYPE", ())):
            raise InvalidArgument(
                f"{type(op).__qualname__} is not an op of {type(self).__name__}"
                f" (its ops: {', '.join(o.__qualname__ for o in type(self).OPS) or 'none'})"
            )
        return op.apply(self, as_context(ctx))  # type: ignore[return-value]

    def is_bottom(self) -> bool:
        """True for the initial (empty) state, the identity of ``merge``."""
        return self == type(self)._bottom_like(self)

    @classmethod
    def _bottom_like(cls, other: Self) -> Self:
        return cls()

    def compat_key(self) -> tuple[Any, ...]:
        """Parameters two states must share to be joinable (e.g. a counter's lower bound)."""
        return ()

    #: True when the type has parameters (it overrides ``compat_key``); set automatically.
    HAS_PARAMS: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.HAS_PARAMS = cls.compat_key is not CRDTBase.compat_key

    def _check_mergeable(self, other: object) -> None:
        if type(other) is not type(self):
            raise IncompatibleMerge(
                f"cannot merge {type(other).__name__} into {type(self).__name__}"
            )
        if not self.HAS_PARAMS:
            return
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


def _type_of(tag: Any, reader: Reader) -> type[CRDTBase]:
    tag = reader.integer(tag, "type tag", 0, 255)
    cls = _REGISTRY.get(tag)
    if cls is None:
        reader.fail(f"unknown type tag {tag}")
    return cls


def read_crdt(obj: Any, reader: Reader, depth: int = 0) -> CRDTBase:
    """Build a CRDT from an unpacked ``[tag, version, payload]`` envelope, strictly."""
    if depth > reader.limits.max_depth:
        reader.fail("CRDTs nest too deeply")
    tag, version, payload = reader.arr(obj, "envelope", 3)
    cls = _type_of(tag, reader)
    version = reader.integer(version, "version", 0, 255)
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


def read_op(obj: Any, reader: Reader, depth: int = 0) -> Op:
    """Build an op from its unpacked wire form ``[type_tag, op_code, [args...]]``, strictly."""
    if depth > reader.limits.max_depth:
        reader.fail("ops nest too deeply")
    tag, code, args = reader.arr(obj, "op", 3)
    cls = _type_of(tag, reader)
    ops = cls.OPS
    code = reader.integer(code, "op code", 0, 255)
    if not 1 <= code <= len(ops):
        reader.fail(f"{cls.__name__} has no op with code {code}")
    op_cls = ops[code - 1]
    fields = dataclasses.fields(op_cls)  # type: ignore[arg-type]
    args = reader.arr(args, f"{op_cls.__qualname__} arguments", len(fields))
    kinds = op_cls.FIELDS
    out: list[Any] = []
    reader.path.append(op_cls.__qualname__)
    try:
        for i, x in enumerate(args):
            kind = kinds[i] if i < len(kinds) else "value"
            if kind == "op":
                out.append(read_op(x, reader, depth + 1))
            elif kind in ("element", "key"):
                out.append(reader.element(x))
            elif kind == "value":
                out.append(reader.value(x))
            else:
                out.append(x)  # scalars: validated by the op itself
        try:
            return op_cls(*out)
        except InvalidArgument as exc:
            reader.fail(str(exc))
    finally:
        reader.path.pop()


@dataclass(frozen=True, slots=True)
class Summary:
    """A type's causal summary of a state (e.g. a document's state vector), sent in an
    anti-entropy request so the other side can answer with a delta since it.

    A type offers summaries by defining ``causal_summary(self) -> payload``,
    ``delta_since(self, payload) -> delta or None`` and the classmethod
    ``read_summary(payload, reader) -> payload`` (strict validation of a peer's payload).
    """

    kind: type[CRDTBase]
    payload: Any

    def to_wire(self) -> list[Any]:
        return [self.kind.TYPE_TAG, self.payload]

    @staticmethod
    def of(state: CRDTBase) -> Summary | None:
        """The summary of ``state``, or None if its type has none."""
        fn = getattr(state, "causal_summary", None)
        return None if fn is None else Summary(type(state), fn())


def read_summary(obj: Any, reader: Reader) -> Summary:
    """Validate a peer's ``[type_tag, payload]`` summary with the type's own reader."""
    tag, payload = reader.arr(obj, "summary", 2)
    cls = _type_of(tag, reader)
    read = getattr(cls, "read_summary", None)
    if read is None:
        reader.fail(f"{cls.__name__} has no causal summaries")
    return Summary(cls, read(payload, reader))
