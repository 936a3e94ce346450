"""Observed-remove map of nested CRDTs.

Keys are elements; each key holds a nested CRDT of any crdtcoord type. The map is a causal dot
store (Almeida et al. 2018): every update of a key creates a fresh dot carrying a nested value,
and ``remove`` covers the dots it has observed. The key's value is the join of the nested values
under its live dots.

**What an update stores.** For "latest wins" types (:class:`LWWRegister`, :class:`MVRegister`,
:class:`EWFlag`) the new dot carries the full new value and covers every dot of the key observed.
For the others (counters, sets, maps) it carries this replica's *contribution* (everything this
replica applied to the key, joined with the new nested delta) and covers only this replica's
previous dot — so deltas stay as small as this replica's share, and a key holds at most one
nested value per replica that wrote it.

**Nested identities.** ``fn(value, ctx)`` must use ``ctx.replica`` as the replica id of its
nested mutations. The map chooses it so that a key removed and re-created never reuses an
identity that stale replicas still hold: dot-based values (sets, flags, multi-value registers,
maps) share the map's per-replica sequence numbers (one counter for map and nested dots,
recorded in the map's causal context, which survives removals); counters act under a
per-*chain* id (``replica~chain``) that is new whenever this replica re-creates the key.
Bounded counters and leases are refused as values (escrow rights and fencing tokens must not
restart with a key): keep them at top-level keys.

**Remove semantics** (observed-remove with reset):

* a remove takes away every update it observed; a key re-created after a remove it has seen starts
  from the type's initial state — no resurrection of old contents;
* an update **concurrent** with a remove survives (update-wins); the key then holds the
  concurrent updater's contributions only. For counters and sets that can include that replica's
  older contributions too (the "embedded counter anomaly" documented by riak_dt and Akka); use
  fresh keys or a reset protocol where that matters.

**Type conflicts.** If two replicas concurrently create a key with different types (or
incompatible parameters), every replica deterministically shows the value of the type with the
larger wire tag; updates with the other type raise :class:`IncompatibleMerge`.

Guarantees: a stale read shows a map some replica had; merging a delta costs O(size of the
delta); equal states encode to equal bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from crdtcoord._exceptions import IncompatibleMerge, InvalidArgument
from crdtcoord._wire import (
    INT_MAX,
    MAX_NESTING,
    Element,
    Reader,
    check_element,
    element_key,
)
from crdtcoord.types._base import (
    CRDTBase,
    Op,
    UpdateContext,
    as_context,
    read_crdt,
    wire_type,
)
from crdtcoord.types._dotstore import DotStore

__all__ = ["ORMap"]

V = TypeVar("V", bound=CRDTBase)
#: What one dot of the map carries: the key, the nested value, and the chain id (0 if none).
Slot = tuple[Element, CRDTBase, int]


def _rank(v: CRDTBase) -> tuple[Any, ...]:
    return (v.TYPE_TAG, v.compat_key())


def _envelope(v: CRDTBase) -> list[Any]:
    return [v.TYPE_TAG, v.WIRE_VERSION, v.to_payload()]


def chain_actor(replica: str, chain: int) -> str:
    """The replica id a counter nested in a map uses for one chain of updates."""
    actor = f"{replica}~{chain}"
    if len(actor.encode("utf-8")) > 255:
        digest = hashlib.blake2b(replica.encode("utf-8"), digest_size=16).hexdigest()
        actor = f"{digest}~{chain}"
    return actor


def _nesting(v: CRDTBase) -> int:
    """How many ORMaps deep ``v`` goes (0 for a non-map value)."""
    if not isinstance(v, ORMap):
        return 0
    deepest = 0
    for slots in v._keys.values():
        for val, _ in slots.values():
            if isinstance(val, ORMap):
                deepest = max(deepest, _nesting(val))
    return 1 + deepest


@wire_type(tag=9)
class ORMap(DotStore[Slot]):
    """A map ``key -> nested CRDT`` with observed-remove keys; see the module documentation."""

    __slots__ = ("_keys", "_view")

    @dataclass(frozen=True, slots=True)
    class Update(Op):
        """Apply the nested ``op`` to ``key`` (created as the op's type if absent)."""

        key: Element
        op: Op
        FIELDS = ("key", "op")

        def __post_init__(self) -> None:
            Op.__post_init__(self)
            kind = getattr(type(self.op), "TYPE", None)
            if kind is None or not kind.ALLOWED_IN_MAP:
                raise InvalidArgument(
                    f"{type(self.op).__qualname__} is not an op of a type an ORMap can hold"
                )

        def apply(self, state: ORMap, ctx: UpdateContext) -> ORMap:
            return state._update(ctx, self.key, self.op.TYPE, self.op.apply, verify=False)

    @dataclass(frozen=True, slots=True)
    class Remove(Op):
        """Remove ``key`` as observed by the acting replica."""

        key: Element
        FIELDS = ("key",)

        def apply(self, state: ORMap, ctx: UpdateContext) -> ORMap:
            return state.remove(ctx, self.key)

    OPS = (Update, Remove)

    def __init__(self) -> None:
        super().__init__()
        #: key -> {dot: (nested value under that dot, chain)}
        self._keys: dict[Element, dict[tuple[str, int], tuple[CRDTBase, int]]] = {}
        #: key -> cached join of the key's values (rebuilt lazily from the dots)
        self._view: dict[Element, CRDTBase] = {}

    # ------------------------------------------------------------------ kernel hooks

    def _on_add(self, replica: str, seq: int, payload: Slot) -> None:
        key, val, chain = payload
        d = self._keys.get(key)
        if d is None:
            d = self._keys[key] = {}
        d[(replica, seq)] = (val, chain)
        view = self._view.get(key)
        if view is not None:
            self._fold(key, view, val)

    def _on_remove(self, replica: str, seq: int, payload: Slot) -> None:
        key = payload[0]
        d = self._keys[key]
        del d[(replica, seq)]
        if not d:
            del self._keys[key]
        self._view.pop(key, None)

    def _import(self, payload: Slot) -> Slot:
        return (payload[0], payload[1].copy(), payload[2])

    def _join_common(self, replica: str, seq: int, mine: Slot, theirs: Slot) -> bool:
        (mk, mv, mc), (tk, tv, tc) = mine, theirs
        if mv is tv:
            return False
        if mk == tk and type(mk) is type(tk):
            rm, rt = _rank(mv), _rank(tv)
            if rt == rm:
                changed = mv.merge(tv)
                if tc > mc:  # only a forged peer state disagrees on a dot's chain
                    self._keys[mk][(replica, seq)] = (mv, tc)
                    self._dots[replica][seq] = (mk, mv, tc)
                    changed = True
                if changed:
                    view = self._view.get(mk)
                    if view is not None:
                        self._fold(mk, view, tv)
                return changed
            if rt < rm:
                return False
        elif element_key(tk) < element_key(mk):
            return False
        # A forged or corrupted peer state disagrees about this dot: keep the larger payload.
        self._remove_dot(replica, seq)
        self._add_dot(replica, seq, self._import(theirs))
        return True

    def _fold(self, key: Element, view: CRDTBase, val: CRDTBase) -> None:
        rv, rn = _rank(view), _rank(val)
        if rn > rv:
            self._view[key] = val.copy()
        elif rn == rv:
            view.merge(val)

    def _view_of(self, key: Element) -> CRDTBase | None:
        view = self._view.get(key)
        if view is not None:
            return view
        slots = self._keys.get(key)
        if not slots:
            return None
        best = max(_rank(v) for v, _ in slots.values())
        for v, _ in slots.values():
            if _rank(v) == best:
                if view is None:
                    view = v.copy()
                else:
                    view.merge(v)
        assert view is not None
        self._view[key] = view
        return view

    # ------------------------------------------------------------------ queries

    def value(self) -> dict[Element, Any]:
        out: dict[Element, Any] = {}
        for k in sorted(self._keys, key=element_key):
            view = self._view_of(k)
            assert view is not None
            out[k] = view.value()
        return out

    def get(self, key: Element) -> CRDTBase | None:
        """A copy of the nested CRDT at ``key`` (None if absent). Mutate through :meth:`update`."""
        view = self._view_of(key)
        return None if view is None else view.copy()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Element]:
        return iter(sorted(self._keys, key=element_key))

    def keys(self) -> list[Element]:
        return sorted(self._keys, key=element_key)

    # ------------------------------------------------------------------ mutators

    def update(
        self,
        ctx: UpdateContext | str,
        key: Element,
        factory: type[V] | Callable[[], V],
        fn: Callable[[V, UpdateContext], V],
    ) -> ORMap:
        """Apply a nested mutation to ``key``, creating it with ``factory()`` if absent.

        ``fn(value, ctx)`` mutates the nested CRDT with the usual mutators, **using
        ``ctx.replica`` as their replica id** (the nested actor the map chose; ``ctx.hlc`` is the
        caller's clock), and returns the nested delta — the join of the deltas of everything it
        applied — e.g. ``m.update("a", "hits", GCounter, lambda c, ctx: c.increment(ctx.replica,
        3))``. ``ctx`` is the acting replica id or an :class:`UpdateContext` (with a clock, for
        time-dependent values such as LWW registers).

        ``fn`` runs on a scratch copy of the value: if it changed more than the delta it returned
        accounts for (say, two mutations and only the last delta), the update is refused with
        :class:`InvalidArgument`, so a replica never shows what it would not ship. If ``fn``
        raises, the map is unchanged and the exception propagates. :meth:`apply` with
        :class:`ORMap.Update` ops needs no scratch copy.
        """
        if not callable(fn):
            raise InvalidArgument(f"fn must be callable, got {type(fn).__name__}")
        return self._update(as_context(ctx), key, factory, fn, verify=True)

    def _update(
        self,
        ctx: UpdateContext,
        key: Element,
        factory: Any,
        fn: Callable[[Any, UpdateContext], CRDTBase],
        *,
        verify: bool,
    ) -> ORMap:
        replica = ctx.replica
        key = check_element(key)
        if not callable(factory):
            raise InvalidArgument(f"factory must be a CRDT type or callable, got {factory!r}")
        proto = factory()
        if not isinstance(proto, CRDTBase):
            raise InvalidArgument(f"factory must build a CRDT, got {type(proto).__name__}")
        if not proto.ALLOWED_IN_MAP:
            raise InvalidArgument(
                f"{type(proto).__name__} cannot be an ORMap value; keep it at a top-level key"
            )
        found = self._view_of(key)
        view: CRDTBase = proto if found is None else found
        rank = _rank(view)
        if rank != _rank(proto):
            raise IncompatibleMerge(
                f"key {key!r} holds a {type(view).__name__}{view.compat_key() or ''}, "
                f"not a {type(proto).__name__}{proto.compat_key() or ''}"
            )
        slots = self._keys.get(key, {})
        own = [d for d, (v, _) in slots.items() if d[0] == replica and _rank(v) == rank]
        base = self._ctx.max_seq(replica)
        chain = 0
        if type(view).CHAIN_ACTOR_IN_MAP:
            chain = max((slots[d][1] for d in own), default=0) or base + 1
            actor = chain_actor(replica, chain)
        else:
            actor = replica
            if isinstance(view, DotStore):
                view._prime(replica, base)
        try:
            target = view.copy() if verify else view
            inner = fn(target, ctx.nested(actor))
            if type(inner) is not type(view) or _rank(inner) != rank:
                raise InvalidArgument(
                    f"fn must return the delta of its nested mutation (a {type(view).__name__}),"
                    f" got {type(inner).__name__}"
                )
            if verify:
                view.merge(inner)
                if view != target:
                    raise InvalidArgument(
                        f"fn changed the value at {key!r} beyond the delta it returned; return "
                        "the join of the deltas of all its mutations (d = m1(...); "
                        "d.merge(m2(...)); return d), or use ORMap.Update ops"
                    )
            if isinstance(view, ORMap) and 1 + _nesting(view) > MAX_NESTING:
                raise InvalidArgument(f"ORMaps nest at most {MAX_NESTING} deep")
        except BaseException:
            self._view.pop(key, None)  # the cached view may be half-mutated; rebuild from dots
            raise
        used = view.max_seq(replica) if isinstance(view, DotStore) else 0
        seq = max(base, used) + 1
        new_val: CRDTBase
        if type(view).SUPERSEDES_IN_MAP:
            new_val = view.copy()
            covered = list(slots)
        else:
            covered = own
            mine: CRDTBase | None = None
            for d in own:
                v = slots[d][0]
                if mine is None:
                    mine = v.copy()
                else:
                    mine.merge(v)
            if mine is None:
                new_val = inner.copy()
            else:
                mine.merge(inner)
                new_val = mine
        delta = ORMap()
        delta._add_dot(replica, seq, (key, new_val, chain))
        dctx = delta._ctx
        for n in range(base + 1, seq + 1):  # one sequence space: nested dots are seen too
            dctx.add(replica, n)
        for dr, dn in covered:
            dctx.add(dr, dn)
        self._join(delta)
        self._view[key] = view  # exact: the old join plus the nested delta
        return delta

    def remove(self, replica: str | UpdateContext, key: Element) -> ORMap:
        """Remove ``key`` as observed here (a concurrent update elsewhere survives)."""
        replica = as_context(replica).replica
        key = check_element(key)
        delta = ORMap()
        for dr, dn in self._keys.get(key, {}):
            delta._ctx.add(dr, dn)
        self._join(delta)
        return delta

    # ------------------------------------------------------------------ lattice plumbing

    def copy(self) -> Self:
        c = type(self)()
        c._ctx = self._ctx.copy()
        for r, d in self._dots.items():
            for n, (k, v, chain) in d.items():
                c._add_dot(r, n, (k, v.copy(), chain))
        return c

    def stats(self) -> dict[str, int]:
        nested = 0
        for d in self._dots.values():
            for _, v, _ in d.values():
                nested += v.stats().get("metadata", 0)
        return {"elements": len(self._keys), **self._context_stats(), "nested_metadata": nested}

    def to_payload(self) -> Any:
        ctx, index = self._wire_context()
        entries = []
        for k in sorted(self._keys, key=element_key):
            slots = self._keys[k]
            rows = [
                [index[r], n, slots[(r, n)][1], _envelope(slots[(r, n)][0])]
                for r, n in sorted(slots, key=lambda d: (index[d[0]], d[1]))
            ]
            entries.append([k, rows])
        return [ctx, entries]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        ctx, entries = reader.arr(payload, "ORMap", 2)
        m = cls()
        table = m._read_context(ctx, reader)
        keys = []
        for entry in reader.arr(entries, "entries"):
            raw, rows = reader.arr(entry, "entry", 2)
            key = reader.element(raw)
            keys.append(element_key(key))
            rows = reader.arr(rows, "key values")
            if not rows:
                reader.fail("a key must have at least one value")
            order = []
            for row in rows:
                ridx, seq, chain, env = reader.arr(row, "key value", 4)
                r, n = m._read_dot(table, ridx, seq, reader)
                order.append((ridx, n))
                val = read_crdt(env, reader, depth + 1)
                if not val.ALLOWED_IN_MAP:
                    reader.fail(f"{type(val).__name__} cannot be an ORMap value")
                m._add_dot(r, n, (key, val, reader.integer(chain, "chain", 0, INT_MAX)))
            reader.increasing(order, "key values")
        reader.increasing(keys, "keys")
        return m
