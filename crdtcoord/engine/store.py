"""The store part: the replica's states, the version vectors of critical keys, the digest index.

Local updates and received entries both end here. Every change emits a :class:`Persist` effect
(ordered before the sends that depend on it); a join returns the entries that *inflated* the
state, which the engine forwards and reports. Concurrent conflicting updates of critical keys
become :class:`Escalation` events, decided from version vectors, never from timestamps alone.

Two types at one key (concurrent creations) resolve to the larger *type rank* — wire tag, then
the type's parameters — on every replica, which keeps the store a join.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from crdtcoord._exceptions import CodecError, IncompatibleMerge, InvalidArgument
from crdtcoord.clocks.vv import Causality, VersionVector
from crdtcoord.codec import digest as state_digest
from crdtcoord.codec import encode
from crdtcoord.engine.core import Core
from crdtcoord.engine.effects import EntryRefused, Escalation, Persist, TypeConflict
from crdtcoord.engine.messages import MAX_KEY_BYTES, Entry
from crdtcoord.engine.tree import DigestIndex
from crdtcoord.types import CRDTBase, Op, UpdateContext

__all__ = ["Critical", "Store", "check_key", "persist_effect", "rank"]

#: Builds a Persist without the named tuple's Python-level __new__ (the update hot path).
persist_effect = functools.partial(tuple.__new__, Persist)

#: ``critical(key, state) -> bool``: does this key's conflicts go to the escalation hook?
Critical = Callable[[str, CRDTBase], bool]
Update = Callable[[Any, UpdateContext], CRDTBase] | Op


def rank(v: CRDTBase) -> tuple[Any, ...]:
    """The order that settles two types at one key (larger wins everywhere)."""
    return (v.TYPE_TAG, v.compat_key())


def join_ranked(cur: CRDTBase, new: CRDTBase) -> CRDTBase:
    """Join ``new`` into ``cur`` (in place when the types agree) and return the result."""
    rc, rn = rank(cur), rank(new)
    if rc == rn:
        cur.merge(new)
        return cur
    return new.copy() if rn > rc else cur


def check_key(key: object, *, internal: bool = False) -> str:
    """A key is a non-empty str of at most 1024 UTF-8 bytes; ``$`` keys are the engine's."""
    if type(key) is not str or not key:
        raise InvalidArgument("keys are non-empty str")
    assert isinstance(key, str)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"key is not valid unicode: {key!r}") from None
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(f"keys are at most {MAX_KEY_BYTES} bytes")
    if key.startswith("$") and not internal:
        raise InvalidArgument("keys starting with '$' are reserved for the engine")
    return key


#: Keys named ``~<expiry ms>~<name>`` expire (see :func:`expiring_key`).
EXPIRY_MARK = "~"


def expiring_key(name: str, expires_ms: int) -> str:
    """A key that every replica deletes once its clock passes ``expires_ms`` (wall ms), and
    whose updates are refused from then on — garbage collection by a rule every replica applies
    alike, so deleting it never breaks convergence (``docs/coordination.md``)."""
    if type(expires_ms) is not int or not 0 <= expires_ms < 10**15:
        raise InvalidArgument("expires_ms is a wall-clock time in integer milliseconds")
    return f"{EXPIRY_MARK}{expires_ms}{EXPIRY_MARK}{name}"


def key_expiry(key: str) -> int | None:
    """The expiry (wall ms) a key's name carries, or None."""
    if not key.startswith(EXPIRY_MARK):
        return None
    digits, sep, _ = key[1:].partition(EXPIRY_MARK)
    if not sep or not digits.isascii() or not digits.isdigit() or len(digits) > 15:
        return None
    return int(digits)


class Store:
    """States, version vectors and the digest tree of one replica."""

    def __init__(self, core: Core, critical: Critical | None) -> None:
        self._core = core
        self._critical = critical
        self._states: dict[str, CRDTBase] = {}
        #: the states by key, for fast membership tests by the engine (read-only for others)
        self.states = self._states
        self._vv: dict[str, VersionVector] = {}
        self.index = DigestIndex(self._digest)
        self._dirty = self.index.dirty
        self.update_ctx = UpdateContext(core.actor, core.hlc)
        self._effects = core.effects  # (the same list for the engine's life: poll() drains it)
        self._expiring: list[tuple[int, str]] = []  # heap of (expiry ms, key)

    def load(self, states: Mapping[str, CRDTBase], versions: Mapping[str, VersionVector]) -> None:
        """Take ownership of restored states (from storage) before the engine starts."""
        for k, v in states.items():
            check_key(k, internal=True)
            self._adopt(k, v, restored=True)
            self._states[k] = v
            self.index.touch(k)
            self._track_expiry(k)
        for k, vv in versions.items():
            self._vv[k] = vv

    def _adopt(self, key: str, state: CRDTBase, *, restored: bool = False) -> None:
        """A state becomes this replica's live state of ``key``: types that bind a per-replica
        identity (a document's client id) take it from the actor and the key here; ``restored``
        says the state is this replica's own, from its storage."""
        adopt = getattr(state, "adopt", None)
        if adopt is not None:
            adopt(self._core.actor, key, restored=restored)

    def _track_expiry(self, key: str) -> None:
        if key[0] == EXPIRY_MARK:
            exp = key_expiry(key)
            if exp is not None:
                heapq.heappush(self._expiring, (exp, key))

    def expired(self, key: str) -> bool:
        exp = key_expiry(key) if key[0] == EXPIRY_MARK else None
        return exp is not None and exp <= self._core.physical_ms()

    def next_expiry(self) -> int | None:
        """The earliest expiry (wall ms) of a key held, if any."""
        return self._expiring[0][0] if self._expiring else None

    def expire(self) -> list[str]:
        """Delete every key whose expiry passed (persisted as a delete); returns them."""
        now = self._core.physical_ms()
        out = []
        heap = self._expiring
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            state = self._states.pop(key, None)
            if state is None:
                continue
            self._vv.pop(key, None)
            self.index.remove(key)
            self._effects.append(Persist(key, state, delete=True))
            out.append(key)
        if out:
            self._core.count("keys_expired", len(out))
        return out

    def _digest(self, key: str) -> bytes | None:
        """A key's digest for the index (None: the key is gone, e.g. it expired while an
        update callback ran)."""
        s = self._states.get(key)
        return None if s is None else state_digest(s)

    # ------------------------------------------------------------------ queries

    def state(self, key: str) -> CRDTBase | None:
        """The live state (not a copy): for the engine's parts only."""
        return self._states.get(key)

    def version(self, key: str) -> VersionVector | None:
        return self._vv.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def versions(self) -> dict[str, VersionVector]:
        return self._vv

    def is_critical(self, key: str, state: CRDTBase) -> bool:
        if self._critical is not None:
            return self._critical(key, state)
        return type(state).CRITICAL_BY_DEFAULT

    def entry(self, key: str) -> Entry | None:
        s = self._states.get(key)
        return None if s is None else Entry(key, s, self._vv.get(key))

    def entries_within_budget(self, keys: list[str], budget: int) -> tuple[list[Entry], bool, int]:
        """Entries for ``keys`` up to ``budget`` bytes of encoded state (at least one); the
        flag says whether some were left out; the int is the encoded bytes of their states."""
        used = states = 0
        out: list[Entry] = []
        for k in keys:
            s = self._states.get(k)
            if s is None:
                continue
            n = len(encode(s))
            size = n + len(k) + 16
            if out and used + size > budget:
                return out, True, states
            used += size
            states += n
            out.append(Entry(k, s, self._vv.get(k)))
        return out, False, states

    # ------------------------------------------------------------------ local updates

    def update(
        self,
        key: str,
        factory: Callable[[], CRDTBase],
        fn: Update,
        op_id: str | None = None,
    ) -> CRDTBase:
        """Apply a local update; returns its delta.

        ``fn`` is an op of the key's type, or ``fn(state, ctx)`` returning the delta of what it
        applied. A refused update raises and changes nothing (except that a callback which
        mutated before failing has its mutation persisted, so memory and storage agree).
        """
        found = self._states.get(key)
        created = found is None
        state: CRDTBase
        if found is not None and type(found) is factory and not found.HAS_PARAMS:
            state = found  # the fast path: an existing key updated with its own plain type
        else:
            if not callable(factory):
                raise InvalidArgument(f"factory must be a CRDT type or callable: {factory!r}")
            proto = factory()
            if not isinstance(proto, CRDTBase):
                raise InvalidArgument(f"factory must build a CRDT, got {type(proto).__name__}")
            if found is None:
                state = proto
                self._adopt(key, state)
            elif rank(found) != rank(proto):
                raise IncompatibleMerge(
                    f"key {key!r} holds a {type(found).__name__}, not a {type(proto).__name__}"
                )
            else:
                state = found
        ctx = self.update_ctx
        if isinstance(fn, Op):
            if not isinstance(state, getattr(type(fn), "TYPE", ())):
                state.apply(fn, ctx)  # raises the descriptive InvalidArgument
            delta = fn.apply(state, ctx)
        else:
            try:
                delta = fn(state, ctx)
            except BaseException:
                if not created:
                    self.repersist(key, state)
                raise
            if type(delta) is not type(state):
                self.refuse_delta(key, state, persist=not created)
        if created:
            if key[0] == EXPIRY_MARK:
                if self.expired(key):
                    raise InvalidArgument(f"key {key!r} has expired")
                self._track_expiry(key)
            self._states[key] = state
        self._dirty[key] = None  # (the digest index re-digests it before the next comparison)
        vv = None
        if state.CRITICAL_BY_DEFAULT if self._critical is None else self._critical(key, state):
            vv = self._vv.setdefault(key, VersionVector())
            vv.increment(self._core.actor)
            vv = vv.copy()
        self._effects.append(persist_effect((key, delta, vv, False, op_id, False)))
        return delta

    def repersist(self, key: str, state: CRDTBase) -> None:
        """A callback mutated and then failed: keep memory and storage equal (the mutation will
        reach peers by anti-entropy; its delta was never returned)."""
        self.index.touch(key)
        self._core.emit(Persist(key, state.copy()))

    def refuse_delta(self, key: str, state: CRDTBase, *, persist: bool) -> None:
        """A callback returned something other than its delta: refuse it (after
        :meth:`repersist` of what it may have mutated, for an existing key)."""
        if persist:
            self.repersist(key, state)
        raise InvalidArgument(
            f"update functions must return the delta of their mutation (a {type(state).__name__})"
        )

    def plain(self, kind: type[CRDTBase]) -> bool:
        """May a local update of an existing key of ``kind`` skip the general path? Yes for a
        type without parameters whose keys are not critical (no version vector to bump) and
        that binds no per-replica identity (``adopt``: documents take the general path; with
        the hot path, a Yjs interop test failed to converge in about 1 run of 5, cause not
        found yet)."""
        return (
            not kind.HAS_PARAMS
            and not kind.CRITICAL_BY_DEFAULT
            and self._critical is None
            and getattr(kind, "adopt", None) is None
        )

    # ------------------------------------------------------------------ joins

    def join(self, entries: tuple[Entry, ...] | list[Entry], origin: str) -> list[Entry]:
        """Join received states or deltas; returns the entries that inflated the store."""
        core = self._core
        inflated: list[Entry] = []
        for e in entries:
            key, incoming, vv = e.key, e.state, e.vv
            local = self._states.get(key)
            grew = replaced = False
            if local is None:
                if key[0] == EXPIRY_MARK:
                    if self.expired(key):
                        core.count("entries_expired")  # (deleted here; the sender will too)
                        continue
                    self._track_expiry(key)
                fresh = self._taken_in(key, incoming, origin)
                if fresh is None:
                    continue
                self._states[key] = fresh
                grew = True
            elif rank(local) != rank(incoming):
                # Concurrent creation with two types: the larger rank wins everywhere; the other
                # state is dropped, and the application is told.
                if rank(incoming) > rank(local):
                    fresh = self._taken_in(key, incoming, origin)
                    if fresh is None:
                        continue
                    self._states[key] = fresh
                    grew = replaced = True
                    dropped, kept = local, incoming
                else:
                    dropped, kept = incoming, local
                core.emit(TypeConflict(key, type(kept).__name__, dropped.copy(), origin))
                core.count("type_conflicts")
            else:
                before = local.copy() if vv is not None and key in self._vv else None
                try:
                    grew = local.merge(incoming)
                except CodecError as exc:  # (a document update that does not integrate)
                    self._refused(key, origin, exc)
                    continue
                if before is not None and vv is not None:
                    self._check_escalation(key, before, incoming, vv, origin)
            vv_grew = vv is not None and self._vv.setdefault(key, VersionVector()).merge(vv)
            if grew or vv_grew:
                self.index.touch(key)
                mine = self._vv.get(key)
                # (only the version vector grew: persist it with the key's own state, which
                # a type conflict may have kept over the incoming one; critical keys are small)
                delta = incoming if grew else self._states[key].copy()
                core.emit(
                    Persist(
                        key,
                        delta,
                        vv=mine.copy() if mine is not None else None,
                        replace=replaced,
                    )
                )
            if grew:
                inflated.append(e)
        core.count("entries_received", len(entries))
        core.count("entries_inflating", len(inflated))
        return inflated

    def _taken_in(self, key: str, incoming: CRDTBase, origin: str) -> CRDTBase | None:
        """A copy of a peer's state to become ``key``'s live state, adopted; None (refused,
        counted and told) if the state refuses to become live."""
        fresh = incoming.copy()
        try:
            self._adopt(key, fresh)
        except CodecError as exc:
            self._refused(key, origin, exc)
            return None
        return fresh

    def _refused(self, key: str, origin: str, exc: CodecError) -> None:
        """An entry whose content the state refused (it changed nothing): counted and told."""
        self._core.count("entries_refused")
        self._core.emit(EntryRefused(key, origin, str(exc)))

    def _check_escalation(
        self, key: str, local: CRDTBase, remote: CRDTBase, remote_vv: VersionVector, peer: str
    ) -> None:
        mine = self._vv.get(key)
        if mine is None or mine.compare(remote_vv) is not Causality.CONCURRENT:
            return
        conflicts = getattr(type(local), "conflicts", None)
        if conflicts is not None and conflicts(local, remote):
            self._core.emit(Escalation(key, local, remote.copy(), peer))
            self._core.count("escalations")
