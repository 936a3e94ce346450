"""The anti-entropy part: periodic digest exchanges, repairs, and the descent itself.

Every ``ae_interval`` (± jitter) the node starts one exchange with a random peer: AE_ROOT with
its root digest; equal roots end it with AE_OK (one small message pair, whatever the store
size); otherwise both sides descend the 16-ary digest tree only where it differs and ship the
states of the keys that differ (see ``docs/protocol.md`` §4.2).

**Exchanges are named.** An exchange's id is the msg_id of its AE_ROOT (random per process
start), and this part remembers the exchanges it started: the buffer entry the delta stream had
reached and the peer's repair generation at the time. Only an answer to an exchange of this
process counts, an AE_OK proves that the peer held everything up to that buffer entry, and a
repair is cleared only by an exchange started after the repair was (re)scheduled — an answer to
an older exchange never cancels a repair that is still needed.

**Repairs** are exchanges in push-pull mode (whatever ``ae_mode``), retried every
``min(ae_interval, max(1 s, 4 * retransmit_after))`` until one ends in sync. A descent that ends
is followed at once by a root probe, whose AE_OK clears the repair.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from crdtcoord.codec import digest as state_digest
from crdtcoord.engine.core import Core
from crdtcoord.engine.messages import AeOk, AeRoot, AeStep, Entry, Envelope, Want
from crdtcoord.engine.store import Store
from crdtcoord.engine.tree import FANOUT, LEVEL_BITS, SHORT_DIGEST, TreeItem, owns
from crdtcoord.types import CRDTBase
from crdtcoord.types._base import Summary

__all__ = ["AntiEntropy", "Exchange"]

_EXCHANGE_TTL = 30.0
_MAX_EXCHANGES = 4096


@dataclass(slots=True)
class Exchange:
    """An exchange this process started: with whom, in which mode, and what it can prove."""

    peer: str
    mode: str
    seq: int  # the delta buffer entry reached when it started
    gen: int  # the peer's repair generation when it started (0: none pending)
    started: float


@dataclass(slots=True)
class _Repair:
    due: float
    gen: int
    attempts: int = 0  # exchanges started for it since the peer last answered


class AntiEntropy:
    """Digest anti-entropy of one engine."""

    def __init__(
        self,
        core: Core,
        store: Store,
        *,
        random_peer: Callable[[], str | None],
        stream_seq: Callable[[], int],
        join: Callable[[tuple[Entry, ...], str], None],
        proven: Callable[[str, int], None],
        rto: Callable[[str], float],
    ) -> None:
        self._core = core
        self._store = store
        self._random_peer = random_peer
        self._stream_seq = stream_seq
        self._join = join
        self._proven = proven
        self._rto = rto
        self._next: float | None = None
        self._exchanges: OrderedDict[int, Exchange] = OrderedDict()
        self._repairs: dict[str, _Repair] = {}
        self._gen = 0

    # ------------------------------------------------------------------ control, inspection

    def start(self, now: float) -> None:
        if self._core.config.ae_enabled:
            self._next = now + self._gap()

    def stop_periodic(self) -> None:
        """No more periodic exchanges from this node (repairs and answers go on)."""
        self._next = None

    def repairs(self) -> list[str]:
        """Peers owed a repair."""
        return sorted(self._repairs)

    def _gap(self) -> float:
        c = self._core.config
        return c.ae_interval * (1.0 + c.ae_jitter * (2.0 * self._core.rng.random() - 1.0))

    # ------------------------------------------------------------------ starting

    def schedule_repair(self, peer: str, probe: bool = False) -> None:
        """``peer`` needs this node's data: repair it (at once), until an exchange started from
        now on ends in sync. A repair already pending starts a new generation."""
        self._gen += 1
        self._repairs[peer] = _Repair(self._core.now, self._gen)

    def cancel_repair(self, peer: str) -> None:
        self._repairs.pop(peer, None)

    def heard_from(self, peer: str) -> None:
        """Any message from ``peer``. A repair that went unanswered twice means the peer was cut
        off; hearing from it means the partition healed: run every such repair now."""
        rep = self._repairs.get(peer)
        if rep is None:
            return
        if rep.attempts >= 2:
            now = self._core.now
            for other in self._repairs.values():
                if other.attempts >= 2:
                    other.due = now
                    other.attempts = 0
            self._core.count("repair_heals_detected")
        else:
            rep.attempts = 0

    def begin(self, peer: str, mode: str | None = None) -> int:
        """Start an exchange with ``peer``; returns its id."""
        core = self._core
        core.count("ae_rounds")
        mode = mode or core.config.ae_mode
        rep = self._repairs.get(peer)
        xid = core.send(peer, AeRoot(mode, self._store.index.root()))
        self._exchanges[xid] = Exchange(
            peer, mode, self._stream_seq(), rep.gen if rep else 0, core.now
        )
        while len(self._exchanges) > _MAX_EXCHANGES:
            self._exchanges.popitem(last=False)
        return xid

    # ------------------------------------------------------------------ answering

    def on_root(self, env: Envelope, msg: AeRoot) -> None:
        if msg.root == self._store.index.root():
            self._core.send(env.sender, AeOk(), env.msg_id)
            self._core.count("ae_in_sync")
            return
        item = self._store.index.item(0, 0)
        step = AeStep(env.msg_id, msg.mode, False, (item,), (), ())
        self._core.send(env.sender, step, env.msg_id)

    def on_ok(self, env: Envelope) -> None:
        x = self._exchanges.get(env.reply_to)
        if x is None or x.peer != env.sender:
            self._core.count("ae_stale_answers")  # an answer for an exchange not of this process
            return
        del self._exchanges[env.reply_to]
        self._core.count("ae_in_sync")
        self._proven(x.peer, x.seq)
        rep = self._repairs.get(x.peer)
        if rep is not None and rep.gen <= x.gen:
            del self._repairs[x.peer]
            self._core.count("repairs_done")

    def on_step(self, env: Envelope, msg: AeStep) -> None:
        core = self._core
        peer = env.sender
        # Who may ship to whom: the initiator pushes in "push"/"push-pull", pulls in
        # "pull"/"push-pull". The sender of this message is the initiator iff from_initiator.
        i_am_initiator = not msg.from_initiator
        if i_am_initiator:
            x = self._exchanges.get(msg.xid)
            if x is None or x.peer != peer:
                core.count("ae_stale_answers")
                return
        pushes, pulls = msg.mode != "pull", msg.mode != "push"
        i_ship = pushes if i_am_initiator else pulls
        they_ship = pulls if i_am_initiator else pushes
        # On a key both hold differently, who goes first? Without per-key causality nobody
        # knows which side is newer: ask for theirs first (and ship the join back if it holds
        # more) — except in a repair, whose initiator owes the peer data: it ships first.
        ship_first = not they_ship or (msg.mode == "repair" and i_am_initiator)
        if msg.entries:
            self._join(msg.entries, peer)
        store = self._store
        index = store.index
        ship: list[str] = []
        deltas: list[Entry] = []
        if i_ship:
            # A state we received and joined: if our join holds more than it (both sides had
            # changes), ship the join back. One side newer: nothing travels back.
            for e in msg.entries:
                sender = _sender_summary(e)
                if sender is None:
                    if index.digest(e.key) != _digest_of(e):
                        ship.append(e.key)
                    continue
                # a delta since our summary, carrying the sender's summary and digest: if our
                # join holds more than the sender had, send back only what it lacks (a document
                # never ships whole for one changed character); equal digests end the exchange
                hint, their_digest = sender
                if index.digest(e.key) == their_digest:
                    continue
                mine = store.state(e.key)
                back = _delta_since(mine, hint) if mine is not None else None
                if back is None:
                    ship.append(e.key)
                else:
                    deltas.append(Entry(e.key, back, store.version(e.key)))
            for w in msg.want:
                mine = store.state(w.key)
                if mine is None:
                    continue
                delta = _delta_since(mine, w.summary)
                if delta is not None:
                    deltas.append(Entry(w.key, delta, store.version(w.key)))
                else:
                    ship.append(w.key)
        my_want: list[Want] = []
        reply_items: list[TreeItem] = []
        width = SHORT_DIGEST
        budget = core.config.max_round_bytes
        for item in msg.items:
            if item.children is not None:
                mine_h = index.children(item.level, item.prefix)
                for c in range(FANOUT):
                    if budget <= 0:
                        break  # the rest of the tree waits for the next exchange
                    lo, hi = c * width, (c + 1) * width
                    if mine_h[lo:hi] != item.children[lo:hi]:
                        sub = index.item(item.level + 1, (item.prefix << LEVEL_BITS) + c)
                        budget -= sub.wire_size()
                        reply_items.append(sub)
            else:
                # Keys only we hold: ship them. Keys both hold, differently: ask for theirs
                # first (we ship our join back if it differs from what comes); if they may not
                # ship, push ours. Keys only they hold: ask.
                theirs = dict(item.keys)
                ours = dict(index.keys_under(item.level, item.prefix))
                if i_ship:
                    ship.extend(
                        k
                        for k, d in ours.items()
                        if k not in theirs or (theirs[k] != d and ship_first)
                    )
                if they_ship:
                    for k, d in item.keys:
                        if k in ours and ship_first and i_ship:
                            continue  # shipped above; their join comes back if it holds more
                        if ours.get(k) != d and owns(item.level, item.prefix, k):
                            state = store.state(k)
                            my_want.append(Want(k, Summary.of(state) if state else None))
        shipped, _more, state_bytes = store.entries_within_budget(
            list(dict.fromkeys(ship)), core.config.max_round_bytes
        )
        shipped.extend(deltas)
        core.count("ae_keys_shipped", len(shipped))
        core.count("ae_state_bytes", state_bytes)
        core.count("ae_tree_bytes", sum(i.wire_size() for i in reply_items))
        my_want.sort(key=lambda x: x.key)
        if reply_items or shipped or my_want:
            step = AeStep(
                msg.xid,
                msg.mode,
                i_am_initiator,
                tuple(reply_items),
                tuple(shipped),
                tuple(my_want),
            )
            core.send(peer, step, env.msg_id)
        else:
            core.count("ae_exchanges_done")
            if i_am_initiator:
                # Our descent is over; a root probe now proves (or not) that we are in sync.
                self._exchanges.pop(msg.xid, None)
                if peer in self._repairs:
                    self._repairs[peer].due = core.now

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        ds = [r.due for r in self._repairs.values()]
        if self._next is not None:
            ds.append(self._next)
        return min(ds) if ds else None

    def tick(self, now: float) -> None:
        c = self._core.config
        if self._repairs:
            retry = min(c.ae_interval, max(1.0, 4 * c.retransmit_after))
            for p, rep in list(self._repairs.items()):
                if now >= rep.due:
                    # (on a slow link an exchange takes several round trips: don't overlap them)
                    rep.due = now + max(retry, 4 * self._rto(p))
                    rep.attempts += 1
                    self.begin(p, "repair")  # push-pull: the peer lacks what we hold
        if self._next is not None and now >= self._next:
            while self._next <= now:
                self._next += self._gap()
            peer = self._random_peer()
            if peer is not None:
                self.begin(peer)
        while self._exchanges:
            first = next(iter(self._exchanges.values()))
            if now - first.started < _EXCHANGE_TTL:
                break
            self._exchanges.popitem(last=False)


def _digest_of(e: Entry) -> bytes:
    return state_digest(e.state)


def _sender_summary(e: Entry) -> tuple[Summary, bytes] | None:
    """The sender's own causal summary and digest, when the entry is a delta carrying them."""
    fn = getattr(e.state, "sender_summary", None)
    if fn is None:
        return None
    got = fn()
    if got is None:
        return None
    payload, digest = got
    return Summary(type(e.state), payload), digest


def _delta_since(state: CRDTBase, summary: Summary | None) -> CRDTBase | None:
    """The type's delta since a peer's causal summary, when it offers one."""
    if summary is None or type(state) is not summary.kind:
        return None
    fn = getattr(state, "delta_since", None)
    return None if fn is None else cast(CRDTBase | None, fn(summary.payload))
