"""``Document``: a pycrdt (Yjs) document as a crdtcoord type, replicated by the same engine.

A document's state is a pycrdt ``Doc``; its deltas are Yjs v1 updates. The engine treats it like
any other type, with three document-specific capabilities:

* **deltas are updates.** A local edit becomes the update of its transaction (captured by the
  document's observer); a join applies the other side's updates. Anti-entropy asks with the
  document's state vector (:meth:`causal_summary`) and is answered with
  ``get_update(state_vector)`` (:meth:`delta_since`), so one changed character in a 5 MB document
  never ships the document.
* **the digest** is the state vector, the (canonical) delete set, the pending updates and the
  root kinds (:meth:`content_digest`): a state vector does not change on deletes, and two
  replicas with equal state vectors can differ in what they deleted.
* **pending updates.** pycrdt holds updates whose dependencies are missing as *pending* and leaves
  them out of ``get_update``. The document keeps every update it could not fully integrate (by
  its own reading of the update's clock ranges) and sends it along with its deltas, so what a
  node cannot integrate yet still reaches the others; the pending set is part of the digest.

**Validation.** Every update is read strictly (:func:`~crdtcoord.documents.parse_update`: v1
only, nothing after its end) and then applied to a *shadow* document that mirrors the live one
before the live one sees it: pycrdt can half-apply an update that decodes but does not integrate
(``reference/pycrdt.md`` §1.9). A refused update raises :class:`InvalidUpdate` and changes
nothing; the shadow is rebuilt from the live document.

**Client ids.** The engine gives the node's live document a client id derived from the node's
actor (node id and incarnation) and the key: a restart that loaded the stored state keeps it, a
node with new or lost storage has a new incarnation and so a new id, and no id is ever reused
without its state. An update from elsewhere that advances this document's own client clock means
another writer uses the id: the document switches to a fresh id (as Yjs does) and counts it in
``collisions``. Root types obtained before a switch belong to the old ``Doc``: take them from
:attr:`doc` again.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText
from pycrdt import get_update as pycrdt_get_update

from crdtcoord._exceptions import InvalidArgument
from crdtcoord._wire import Reader
from crdtcoord.documents._v1 import (
    ParsedUpdate,
    UpdateError,
    encode_delete_set,
    encode_state_vector,
    parse_state_vector,
    parse_update,
)
from crdtcoord.types._base import CRDTBase, Op, UpdateContext, wire_type

__all__ = [
    "ROOT_KINDS",
    "Document",
    "InvalidUpdate",
    "check_doc_value",
]

_log = logging.getLogger(__name__)

#: Wire tag of :class:`Document` (never reused).
DOCUMENT_TAG = 11
#: Root type kinds, by name, and the pycrdt class of each.
ROOT_KINDS: dict[str, type[Any]] = {"text": Text, "map": Map, "array": Array, "xml": XmlFragment}
_KIND_RANK = {"array": 1, "map": 2, "text": 3, "xml": 4}
_SAFE = (1 << 53) - 1
#: The origin of transactions that apply updates from elsewhere (observers can tell them apart).
REMOTE = "crdtcoord:remote"
_EMPTY_UPDATE = b"\x00\x00"


class InvalidUpdate(UpdateError):
    """An update that is not a well-formed v1 update, or that does not integrate: refused, the
    document is exactly as before."""


def check_doc_value(v: object, _depth: int = 0) -> Any:
    """A value pycrdt stores and gives back unchanged in meaning, or :class:`InvalidArgument`.

    Accepted: None, bool, str, finite float, int with ``|v| <= 2**53 - 1`` (it reads back as a
    float), bytes, and lists/tuples/dicts (str keys) of those, 32 deep. Larger ints are refused:
    pycrdt turns them into BigInts that may come back as lossy floats, or panics."""
    if _depth > 32:
        raise InvalidArgument("document values nest at most 32 deep")
    if v is None or isinstance(v, bool | str | bytes):
        return v
    if isinstance(v, int):
        if abs(v) > _SAFE:
            raise InvalidArgument(
                f"integer {v} is beyond 2**53 - 1: Yjs numbers are doubles; store it as a string"
            )
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidArgument(f"non-finite float is not a document value: {v}")
        return v
    if isinstance(v, list | tuple):
        for x in v:
            check_doc_value(x, _depth + 1)
        return v
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise InvalidArgument(f"document map keys are str, got {type(k).__name__}")
            check_doc_value(x, _depth + 1)
        return v
    raise InvalidArgument(f"{type(v).__name__} is not a document value")


def _check_root(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 256:
        raise InvalidArgument(f"a root name is a non-empty str of at most 256 chars: {name!r}")
    return name


def _residual(
    u: bytes, p: ParsedUpdate, sv: dict[int, int], sv_bytes: bytes
) -> tuple[bytes, ParsedUpdate] | None:
    """What of update ``u`` a document with state vector ``sv`` does not hold yet (pending in
    pycrdt): its structs beyond ``sv`` and its deletes of clocks beyond ``sv``; None if nothing."""
    structs = any(sv.get(c, 0) < end for c, (_first, end) in p.structs.items())
    dels: dict[int, list[tuple[int, int]]] = {}
    for client, ranges in p.deletes.items():
        have = sv.get(client, 0)
        keep = [(c, n) for c, n in ranges if c + n > have]
        if keep:
            dels[client] = keep
    if not structs and not dels:
        return None
    if structs:
        diff = bytes(pycrdt_get_update(u, sv_bytes))
        head = diff[: parse_update(diff).ds_offset]
    else:
        head = b"\x00"
    residual = head + encode_delete_set(dels)
    return residual, _parse(residual)


def _merged_ranges(ds: dict[int, list[tuple[int, int]]]) -> dict[int, list[list[int]]]:
    """Each client's ``(clock, length)`` ranges sorted, overlapping and adjacent ones merged."""
    out: dict[int, list[list[int]]] = {}
    for client, ranges in ds.items():
        merged: list[list[int]] = []
        for clock, n in sorted(ranges):
            if merged and clock <= merged[-1][0] + merged[-1][1]:
                last = merged[-1]
                last[1] = max(last[1], clock + n - last[0])
            else:
                merged.append([clock, n])
        if merged:
            out[client] = merged
    return out


def _canonical_ds(update: bytes) -> bytes:
    """The delete set of ``update`` in one canonical form (sorted clients, merged ranges)."""
    ds = _merged_ranges(parse_update(update).deletes)
    out = bytearray()
    for client in sorted(ds):
        merged = ds[client]
        if merged:
            out += f"{client}:".encode() + b",".join(f"{c}+{n}".encode() for c, n in merged)
            out += b";"
    return bytes(out)


def _client_id_for(actor: str, key: str, salt: int = 0) -> int:
    h = hashlib.blake2b(f"{actor}\x00{key}\x00{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") & _SAFE


@wire_type(tag=DOCUMENT_TAG)
class Document(CRDTBase):
    """A replicated Yjs document (see the module documentation for its guarantees).

    A document is either *live* (it holds a pycrdt ``Doc``: the node's replica) or a *delta* (a
    list of validated v1 updates, as they travel); a delta becomes live when it is first read.
    """

    __slots__ = (
        "_client",
        "_digest",
        "_doc",
        "_local",
        "_origin",
        "_orphans",
        "_pending",
        "_remote",
        "_roots",
        "_seed",
        "_seen",
        "_shadow",
        "_sub",
        "_updates",
        "collisions",
        "local_seq",
        "on_local_edit",
        "on_update",
        "taken_seq",
    )

    ALLOWED_IN_MAP: ClassVar[bool] = False

    def __init__(self) -> None:
        self._doc: Doc[Any] | None = None
        self._shadow: Doc[Any] | None = None
        self._updates: list[tuple[bytes, ParsedUpdate]] = []
        self._pending: dict[bytes, tuple[bytes, ParsedUpdate]] = {}
        self._roots: dict[str, str] = {}
        self._client: int | None = None
        self._local: list[bytes] = []
        self._sub: Any = None
        self._remote = False
        self._digest: bytes | None = None
        #: Called (no arguments) after a local edit made directly on :attr:`doc`, so a driver
        #: can commit it (the runtime schedules a commit on its loop).
        self.on_local_edit: Callable[[], None] | None = None
        #: Called with ``(update, local_seq)`` for every transaction of the live ``Doc``
        #: (``local_seq`` 0 for an update from elsewhere): the feed of a y-protocols room.
        self.on_update: Callable[[bytes, int], None] | None = None
        #: local transactions so far, and how many of them :meth:`take_local` handed out (a
        #: local edit reaches Yjs clients only once taken, i.e. committed and written)
        self.local_seq = 0
        self.taken_seq = 0
        #: How many times this replica switched client ids because another writer used its id.
        self.collisions = 0
        self._seed: tuple[str, str] | None = None
        self._orphans: list[tuple[Doc[Any], Any]] = []  # Docs replaced by a client-id switch
        self._seen: set[bytes] | None = None  # (a delta's updates, as a set, once merged into)
        #: (deltas from :meth:`delta_since`) the sender's state vector and digest then
        self._origin: tuple[bytes, bytes] | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_update(cls, update: bytes, roots: dict[str, str] | None = None) -> Document:
        """A delta holding one v1 update (read strictly: :class:`InvalidUpdate` if malformed)."""
        d = cls()
        update = bytes(update)  # (a no-op for bytes: the same object, read once)
        d._updates.append((update, _parse(update)))
        for name, kind in (roots or {}).items():
            d._learn_root(_check_root(name), kind)
        return d

    def adopt(self, actor: str, key: str, *, restored: bool = False) -> None:
        """Become ``key``'s live replica on the node acting as ``actor`` (called by the engine's
        store when it takes a state in): fixes the client id, then builds the ``Doc``.

        ``restored``: the state is this replica's own, loaded from its storage, so structs
        under its client id are its own earlier edits. Otherwise any struct under the id means
        another writer has it, and the document switches ids at once."""
        self._seed = (actor, key)
        cid = _client_id_for(actor, key, self.collisions)
        if self._doc is not None and self._doc.client_id == cid:
            return
        self._client = cid
        if self._doc is not None:
            self._rebuild(cid)
        else:
            self._materialize()
        if not restored:
            doc = self._doc
            assert doc is not None
            if parse_state_vector(doc.get_state()).get(doc.client_id, 0):
                self._switch_client()

    def _switch_client(self) -> None:
        """Another writer uses this replica's client id: take the next one (deterministic)."""
        self.collisions += 1
        cid = None
        if self._seed is not None:
            cid = _client_id_for(self._seed[0], self._seed[1], self.collisions)
        self._client = cid
        self._rebuild(cid)

    # ------------------------------------------------------------------ the live Doc

    @property
    def doc(self) -> Doc[Any]:
        """The live pycrdt ``Doc``. Edits made on it directly are captured by its observer and
        reach peers once committed (``edit()``, or the runtime's automatic commit)."""
        return self._materialize()

    @property
    def client_id(self) -> int:
        """This replica's Yjs client id (the id its local edits are written under)."""
        return self._materialize().client_id

    def _materialize(self) -> Doc[Any]:
        doc = self._doc
        if doc is not None:
            return doc
        doc = Doc(client_id=self._client) if self._client is not None else Doc()
        self._doc = doc
        self._shadow = Doc()
        self._sub = doc.observe(self._observe)
        for name, kind in self._roots.items():
            doc.get(name, type=ROOT_KINDS[kind])
        updates, self._updates = self._updates, []
        self._seen = None
        if updates:
            # (a delta whose own updates do not integrate raises here and stays empty, not half)
            self._apply_all(updates, own_history=True)
        return doc

    def _observe(self, ev: Any) -> None:
        u = bytes(ev.update)  # (copied at once: pycrdt events must not outlive the callback)
        tap = self.on_update
        if not self._remote:
            self.local_seq += 1
        if tap is not None:
            tap(u, 0 if self._remote else self.local_seq)
        if self._remote:
            return
        self._local.append(u)
        shadow = self._shadow
        if shadow is not None:
            shadow.apply_update(u)  # (the shadow mirrors the live doc at all times)
        hook = self.on_local_edit
        if hook is not None:
            hook()

    def _rebuild(self, client_id: int | None) -> None:
        """Replace the live ``Doc`` by one with another client id, same content."""
        old = self._doc
        assert old is not None
        full = old.get_update()
        if self._sub is not None:
            old.unobserve(self._sub)
            # an edit still made on the old Doc (a root type taken before the switch) is lost:
            # say so instead of dropping it silently
            self._orphans.append((old, old.observe(_orphaned_edit)))
        doc: Doc[Any] = Doc(client_id=client_id) if client_id is not None else Doc()
        for u in [full, *self._pending]:
            doc.apply_update(u)  # (not observed yet: the same content, nothing to report)
        for name, kind in self._roots.items():
            doc.get(name, type=ROOT_KINDS[kind])
        self._doc = doc
        self._sub = doc.observe(self._observe)
        self._digest = None

    def _rebuild_shadow(self) -> None:
        live = self._doc
        assert live is not None
        shadow: Doc[Any] = Doc()
        shadow.apply_update(live.get_update())
        for u, _ in self._pending.values():
            shadow.apply_update(u)
        self._shadow = shadow

    # ------------------------------------------------------------------ applying updates

    def _apply_all(
        self, updates: list[tuple[bytes, ParsedUpdate]], *, own_history: bool = False
    ) -> bool:
        """Validate ``updates`` on the shadow, then apply them to the live doc; True if the
        state grew. :class:`InvalidUpdate` (and no change) if one does not integrate.
        ``own_history``: the updates build this replica (structs under its id are its own)."""
        live = self._doc
        shadow = self._shadow
        assert live is not None and shadow is not None
        fresh = [(u, p) for u, p in updates if u not in self._pending or p.is_empty()]
        fresh = [(u, p) for u, p in fresh if u != _EMPTY_UPDATE]
        if not fresh:
            return False
        for u, _ in fresh:
            try:
                shadow.apply_update(u)
            except BaseException as exc:  # (pyo3 panics are BaseExceptions)
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                self._rebuild_shadow()
                raise InvalidUpdate(f"update refused, it does not integrate: {exc}") from None
        before_sv = live.get_state()
        has_deletes = any(p.deletes for _, p in fresh)
        before_ds = _canonical_ds(live.get_update(before_sv)) if has_deletes else b""
        own = live.client_id
        sv0 = _sv_map(before_sv)
        self._remote = True
        try:
            with live.transaction(origin=REMOTE):
                for u, _ in fresh:
                    live.apply_update(u)
        finally:
            self._remote = False
        after_sv = live.get_state()
        sv = _sv_map(after_sv)
        grew = sv != sv0  # (compared decoded: yrs orders a state vector's clients freely)
        pending_changed = False
        for _u, p in fresh:
            for root, kind in p.roots.items():
                if kind is not None and self._learn_root(root, kind):
                    grew = True
        pending = self._pending
        for u, p in [*pending.values(), *fresh]:
            res = _residual(u, p, sv, after_sv)
            if res is not None and res[0] == u:
                if u not in pending:  # (a fresh update held back whole)
                    pending[u] = res
                    pending_changed = True
                continue
            if pending.pop(u, None) is not None:
                pending_changed = True
            if res is not None and res[0] not in pending:
                pending[res[0]] = res
                pending_changed = True
        if has_deletes and not grew:
            grew = _canonical_ds(live.get_update(after_sv)) != before_ds
        if not own_history and sv.get(own, 0) != sv0.get(own, 0):
            self._switch_client()  # another writer uses this replica's client id (as Yjs does)
        grew = grew or pending_changed
        if grew:
            self._digest = None
        return grew

    def _learn_root(self, name: str, kind: str) -> bool:
        if kind not in ROOT_KINDS:
            raise InvalidArgument(f"unknown root kind {kind!r} (one of {', '.join(ROOT_KINDS)})")
        prev = self._roots.get(name)
        if prev is not None and _KIND_RANK[prev] >= _KIND_RANK[kind]:
            return False
        self._roots[name] = kind
        if self._doc is not None and prev is None:
            self._doc.get(name, type=ROOT_KINDS[kind])
        self._digest = None
        return True

    def covers(self, update: bytes) -> bool:
        """Does this replica hold everything ``update`` carries already (its structs and its
        deletions)? Then applying it would change nothing: a Yjs provider echoing back what it
        was sent, for instance. :class:`InvalidUpdate` if it is malformed."""
        p = _parse(update)
        doc = self._materialize()
        sv_bytes = doc.get_state()
        sv = _sv_map(sv_bytes)
        if any(sv.get(c, 0) < end for c, (_first, end) in p.structs.items()):
            return False
        if not any(p.deletes.values()):
            return True
        ours = _merged_ranges(parse_update(doc.get_update(sv_bytes)).deletes)
        for client, ranges in p.deletes.items():
            mine = ours.get(client, [])
            for clock, n in ranges:
                i = bisect.bisect_right(mine, [clock, math.inf]) - 1
                if i < 0 or mine[i][0] + mine[i][1] < clock + n:
                    return False
        return True

    def apply_update(self, update: bytes) -> bool:
        """Apply a v1 update from elsewhere (validated first); True if the state grew."""
        self._materialize()
        update = bytes(update)
        return self._apply_all([(update, _parse(update))])

    # ------------------------------------------------------------------ local edits

    def root(self, name: str, kind: str) -> Any:
        """The root type ``name`` of ``kind`` (``text``, ``map``, ``array`` or ``xml``)."""
        _check_root(name)
        if kind not in ROOT_KINDS:
            raise InvalidArgument(f"unknown root kind {kind!r} (one of {', '.join(ROOT_KINDS)})")
        prev = self._roots.get(name)
        if prev is not None and prev != kind:
            raise InvalidArgument(f"root {name!r} of this document is a {prev}, not a {kind}")
        doc = self._materialize()
        if prev is None:
            self._roots[name] = kind
            self._digest = None
        return doc.get(name, type=ROOT_KINDS[kind])

    def edit(self, fn: Callable[[Doc[Any]], Any]) -> Document:
        """Run ``fn(doc)`` in one transaction and return the delta of every local edit not yet
        taken (this one included). pycrdt panics (huge ints) become :class:`InvalidArgument`."""
        doc = self._materialize()
        try:
            with doc.transaction():
                fn(doc)
        except BaseException as exc:
            if isinstance(exc, Exception | KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            raise InvalidArgument(f"pycrdt refused the edit: {exc}") from None
        return self.take_local()

    def take_local(self) -> Document:
        """The delta of the local edits made since the last call (an empty delta if none)."""
        local, self._local = self._local, []
        self.taken_seq = self.local_seq
        delta = Document()
        delta._roots = dict(self._roots)
        if not local:
            return delta
        self._digest = None
        update = local[0] if len(local) == 1 else _merge(local)
        delta._updates.append((update, _parse(update)))
        return delta

    def has_local(self) -> bool:
        """Are there local edits not yet taken by :meth:`take_local`?"""
        return bool(self._local)

    # ------------------------------------------------------------------ CRDT contract

    def value(self) -> dict[str, Any]:
        """``{root name: content}`` for the roots whose kind is known: text as ``str``, maps as
        ``dict``, arrays as ``list``, XML as its string form. Numbers read back as floats."""
        doc = self._materialize()
        out: dict[str, Any] = {}
        for name in sorted(self._roots):
            root = doc.get(name, type=ROOT_KINDS[self._roots[name]])
            out[name] = _py(root)
        return out

    def merge(self, other: Self) -> bool:
        self._check_mergeable(other)
        if self._doc is None:
            grew = False
            mine = self._seen
            if mine is None:  # (kept from then on: folding n deltas is O(n), not O(n²))
                mine = self._seen = {u for u, _ in self._updates}
            for u, p in other._incoming(None):
                if u not in mine:
                    self._updates.append((u, p))
                    mine.add(u)
                    grew = True
            for name, kind in other._roots.items():
                grew = self._learn_root(name, kind) or grew
            return grew
        grew = self._apply_all(other._incoming(self._doc.get_state()))
        for name, kind in other._roots.items():  # (after: a refused delta teaches nothing)
            grew = self._learn_root(name, kind) or grew
        return grew

    def _incoming(self, state: bytes | None) -> list[tuple[bytes, ParsedUpdate]]:
        """What this document gives another holding ``state`` (None: everything)."""
        if self._doc is None:
            return list(self._updates)
        u = self._doc.get_update(state)
        out = [] if u == _EMPTY_UPDATE else [(u, _parse(u))]
        return out + list(self._pending.values())

    def copy(self) -> Self:
        d = type(self)()
        d._roots = dict(self._roots)
        d._updates = self._incoming(None)
        return d

    @classmethod
    def join_all(cls, states: list[Self]) -> Self:
        out = cls()
        for s in states:
            out.merge(s)
        return out

    def content_digest(self) -> bytes:
        """16 bytes equal exactly for equal replicas: state vector, delete set, pending updates,
        root kinds (see the module documentation)."""
        if self._digest is not None and self._doc is not None:
            return self._digest
        doc = self._materialize()
        sv_map = _sv_map(doc.get_state())
        h = hashlib.blake2b(digest_size=16)
        h.update(encode_state_vector(sv_map))
        h.update(b"|")
        h.update(_canonical_ds(doc.get_update(doc.get_state())))
        h.update(b"|")
        h.update(self._pending_signature())
        h.update(b"|")
        for name in sorted(self._roots):
            h.update(f"{name}\x00{self._roots[name]}\x00".encode())
        self._digest = h.digest()
        return self._digest

    def _pending_signature(self) -> bytes:
        """What the pending updates hold, independent of how they are cut into updates: the
        clock ranges of their structs and deletes, merged (two replicas holding the same
        missing data as {u2, u3} and as one merged update must agree, or anti-entropy would
        exchange them forever)."""
        structs: dict[int, list[tuple[int, int]]] = {}
        dels: dict[int, list[tuple[int, int]]] = {}
        for _u, p in self._pending.values():
            for c, rs in p.ranges.items():
                structs.setdefault(c, []).extend((a, b - a) for a, b in rs)
            for c, ds in p.deletes.items():
                dels.setdefault(c, []).extend(ds)
        out = bytearray()
        for ranges in (_merged_ranges(structs), _merged_ranges(dels)):
            for client in sorted(ranges):
                out += f"{client}:".encode()
                out += b",".join(f"{a}+{n}".encode() for a, n in ranges[client]) + b";"
            out += b"/"
        return bytes(out)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.content_digest() == other.content_digest()

    def is_bottom(self) -> bool:
        if self._doc is None:
            return not self._updates and not self._roots
        return self._doc.get_state() == b"\x00" and not self._pending and not self._roots

    def stats(self) -> dict[str, int]:
        if self._doc is None:
            return {
                "elements": len(self._roots),
                "metadata": len(self._updates),
                "bytes": sum(len(u) for u, _ in self._updates),
            }
        return {
            "elements": len(self._roots),
            "metadata": len(parse_state_vector(self._doc.get_state())),
            "pending": len(self._pending),
        }

    def to_payload(self) -> Any:
        updates = [u for u, _ in self._incoming(None)]
        if self._doc is None and len(updates) > 1:
            updates = [_merge(updates)]  # (a delta's updates travel and are stored as one)
        out: list[Any] = [updates, [[n, self._roots[n]] for n in sorted(self._roots)]]
        if self._doc is None and self._origin is not None:
            out.append(list(self._origin))
        return out

    @classmethod
    def fold_payloads(cls, payloads: list[Any]) -> Any:
        """The payload of the join of ``payloads`` (a state and the deltas stored after it),
        folded byte-wise: their updates merged into one, their root kinds joined. For storage
        compaction of payloads it wrote itself (they were read strictly when they arrived)."""
        updates: list[bytes] = []
        roots: dict[str, str] = {}
        for p in payloads:
            updates.extend(p[0])
            for name, kind in p[1]:
                prev = roots.get(name)
                if prev is None or _KIND_RANK[kind] > _KIND_RANK[prev]:
                    roots[name] = kind
        merged = [_merge(updates)] if len(updates) > 1 else updates
        return [merged, [[n, roots[n]] for n in sorted(roots)]]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        origin: tuple[bytes, bytes] | None = None
        if isinstance(payload, list) and len(payload) == 3:
            updates, roots, raw = payload
            sv, digest = reader.arr(raw, "Document sender", 2)
            if not isinstance(sv, bytes) or not isinstance(digest, bytes) or len(digest) != 16:
                reader.fail("a Document delta's sender is [state vector, 16-byte digest]")
            try:
                parse_state_vector(sv)
            except UpdateError as exc:
                reader.fail(f"invalid sender state vector: {exc}")
            origin = (sv, digest)
        else:
            updates, roots = reader.arr(payload, "Document", 2)
        if not isinstance(updates, list):
            reader.fail("Document updates must be a list")
        d = cls()
        d._origin = origin
        for u in updates:
            if not isinstance(u, bytes):
                reader.fail("a Document update must be bytes")
            try:
                d._updates.append((u, parse_update(u)))
            except UpdateError as exc:
                reader.fail(f"invalid update: {exc}")
        if not isinstance(roots, list):
            reader.fail("Document roots must be a list")
        for row in roots:
            name, kind = reader.arr(row, "Document root", 2)
            if not isinstance(name, str) or not name or len(name) > 256 or kind not in ROOT_KINDS:
                reader.fail(f"invalid Document root {row!r}")
            d._roots[name] = kind
        return d

    # ------------------------------------------------------------------ anti-entropy

    def causal_summary(self) -> bytes:
        """The state vector: a peer answers with the update this replica lacks."""
        return self._materialize().get_state()

    def delta_since(self, state: bytes) -> Document:
        """The delta for a replica whose state vector is ``state`` (plus pending updates)."""
        doc = self._materialize()
        d = Document()
        d._roots = dict(self._roots)
        u = doc.get_update(state)
        if u != _EMPTY_UPDATE:
            d._updates.append((u, _parse(u)))
        d._updates.extend(self._pending.values())
        d._origin = (doc.get_state(), self.content_digest())
        return d

    def sender_summary(self) -> tuple[bytes, bytes] | None:
        """(a delta from :meth:`delta_since`) The sender's state vector and digest: a receiver
        that holds more answers with only what the sender lacks, instead of its whole state;
        one whose digest equals the sender's answers nothing."""
        return self._origin if self._doc is None else None

    def is_empty_delta(self) -> bool:
        """A delta that carries no update (it may still name root kinds)."""
        return self._doc is None and not self._updates

    def update_since(self, state: bytes | None = None) -> bytes:
        """One v1 update with what a replica at state vector ``state`` lacks of the integrated
        content (everything if None): a Yjs client's step 2. Pending updates are separate
        (:meth:`pending_updates`): merged into it, they would hold the rest back at a client."""
        doc = self._materialize()
        return bytes(doc.get_update(state))

    def pending_updates(self) -> list[bytes]:
        """The updates held back until their dependencies arrive (relayed, not shown)."""
        return list(self._pending)

    @classmethod
    def read_summary(cls, payload: Any, reader: Reader) -> bytes:
        if not isinstance(payload, bytes):
            reader.fail("a Document summary is a state vector (bytes)")
        try:
            parse_state_vector(payload)
        except UpdateError as exc:
            reader.fail(f"invalid state vector: {exc}")
        return payload

    def __repr__(self) -> str:
        if self._doc is None:
            return f"Document(<delta of {len(self._updates)} updates>)"
        return f"Document(client_id={self._doc.client_id}, roots={sorted(self._roots)})"

    def close(self) -> None:
        """Stop observing the live ``Doc`` (pycrdt never frees an observed Doc otherwise)."""
        if self._doc is not None and self._sub is not None:
            self._doc.unobserve(self._sub)
            self._sub = None
        for doc, sub in self._orphans:
            doc.unobserve(sub)
        self._orphans.clear()

    # ------------------------------------------------------------------ ops as data

    @dataclass(frozen=True, slots=True)
    class Apply(Op):
        """Apply a v1 update made elsewhere (e.g. by a Yjs client)."""

        update: bytes
        FIELDS = ("update",)

        def apply(self, state: Any, ctx: UpdateContext) -> Document:
            return state._apply_op_update(self.update)  # type: ignore[no-any-return]

    @dataclass(frozen=True, slots=True)
    class InsertText(Op):
        """Insert ``text`` into the text root ``root`` at ``index`` (clamped to its length).

        Indices count characters (code points); pycrdt's own ``Text`` indices count UTF-8 bytes."""

        root: str
        index: int
        text: str
        FIELDS = ("key", "amount", "value")

        def __post_init__(self) -> None:
            Op.__post_init__(self)
            _check_root(self.root)
            if not isinstance(self.text, str):
                raise InvalidArgument(f"InsertText.text must be a str, got {self.text!r}")

        def apply(self, state: Any, ctx: UpdateContext) -> Document:
            def fn(doc: Doc[Any]) -> None:
                t = state.root(self.root, "text")
                t.insert(_byte_offset(str(t), self.index), self.text)

            return state.edit(fn)  # type: ignore[no-any-return]

    @dataclass(frozen=True, slots=True)
    class DeleteText(Op):
        """Delete ``length`` characters of the text root ``root`` from ``index`` (clamped)."""

        root: str
        index: int
        length: int
        FIELDS = ("key", "amount", "amount")

        def __post_init__(self) -> None:
            Op.__post_init__(self)
            _check_root(self.root)

        def apply(self, state: Any, ctx: UpdateContext) -> Document:
            def fn(doc: Doc[Any]) -> None:
                t = state.root(self.root, "text")
                s = str(t)
                start = _byte_offset(s, self.index)
                end = _byte_offset(s, self.index + self.length)
                if end > start:
                    del t[start:end]

            return state.edit(fn)  # type: ignore[no-any-return]

    @dataclass(frozen=True, slots=True)
    class SetKey(Op):
        """Set ``key`` of the map root ``root`` to ``value`` (see :func:`check_doc_value`)."""

        root: str
        key: str
        value: Any
        FIELDS = ("key", "key", "value")

        def __post_init__(self) -> None:
            check_doc_value(self.value)  # (first: its reason beats the generic 64-bit one)
            Op.__post_init__(self)
            _check_root(self.root)
            if not isinstance(self.key, str):
                raise InvalidArgument(f"SetKey.key must be a str, got {self.key!r}")

        def apply(self, state: Any, ctx: UpdateContext) -> Document:
            def fn(doc: Doc[Any]) -> None:
                state.root(self.root, "map")[self.key] = self.value

            return state.edit(fn)  # type: ignore[no-any-return]

    @dataclass(frozen=True, slots=True)
    class DeleteKey(Op):
        """Delete ``key`` from the map root ``root`` (nothing if absent)."""

        root: str
        key: str
        FIELDS = ("key", "key")

        def __post_init__(self) -> None:
            Op.__post_init__(self)
            _check_root(self.root)
            if not isinstance(self.key, str):
                raise InvalidArgument(f"DeleteKey.key must be a str, got {self.key!r}")

        def apply(self, state: Any, ctx: UpdateContext) -> Document:
            def fn(doc: Doc[Any]) -> None:
                m = state.root(self.root, "map")
                if self.key in m:
                    del m[self.key]

            return state.edit(fn)  # type: ignore[no-any-return]

    OPS = (Apply, InsertText, DeleteText, SetKey, DeleteKey)

    def _apply_op_update(self, update: bytes) -> Document:
        parsed = _parse(update)  # (once: a 5 MB paste is read once, not three times)
        self._materialize()
        self._apply_all([(update, parsed)])
        delta = Document()
        delta._updates.append((update, parsed))
        for root, kind in parsed.roots.items():
            if kind is not None:
                delta._learn_root(root, kind)
        return delta


_SV_CACHE: list[tuple[bytes, dict[int, int]]] = []


def _sv_map(sv: bytes) -> dict[int, int]:
    """A live document's state vector, read (and remembered: the same vector is read several
    times per update). Callers must not mutate the result."""
    for seen, parsed in _SV_CACHE:
        if seen == sv:
            return parsed
    parsed = parse_state_vector(sv)
    _SV_CACHE.append((sv, parsed))
    del _SV_CACHE[:-8]
    return parsed


def _orphaned_edit(ev: Any) -> None:
    _log.warning(
        "an edit was made on a document's old pycrdt Doc, replaced after a client-id collision:"
        " it is not replicated; take root types from the handle's doc again"
    )


def _py(x: Any, depth: int = 0) -> Any:
    """A document value as plain Python, whatever a Yjs client nested in it: text and XML as
    their string form, a subdocument as ``{"subdocument": guid}`` (pycrdt's own ``to_py``
    raises on XML nested in a map)."""
    if depth > 64:
        return None
    if isinstance(x, Text | XmlFragment | XmlElement | XmlText):
        return str(x)
    if isinstance(x, Map):
        return {k: _py(v, depth + 1) for k, v in x.items()}
    if isinstance(x, Array):
        return [_py(v, depth + 1) for v in x]
    if isinstance(x, Doc):
        return {"subdocument": str(x.guid)}
    if isinstance(x, dict):
        return {k: _py(v, depth + 1) for k, v in x.items()}
    if isinstance(x, list):
        return [_py(v, depth + 1) for v in x]
    return x


def _byte_offset(s: str, index: int) -> int:
    """The UTF-8 byte offset of character ``index`` of ``s`` (clamped to its end)."""
    if s.isascii():
        return min(index, len(s))
    return len(s[:index].encode("utf-8"))


def _parse(update: bytes | bytearray | memoryview) -> ParsedUpdate:
    try:
        return parse_update(update)
    except UpdateError as exc:
        raise InvalidUpdate(str(exc)) from None


def _merge(updates: Iterable[bytes]) -> bytes:
    from pycrdt import merge_updates

    return bytes(merge_updates(*updates))
