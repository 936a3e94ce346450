"""The delta-propagation part: the batched delta buffer, per-peer streams, acknowledgements,
retransmission and forwarding.

Local deltas (and received deltas that inflated the store) are batched for ``delta_delay``,
then become one numbered buffer entry and are pushed to the targets. Each peer's stream keeps
``acked`` and ``sent``; an ACK ``(lo, hi]`` advances ``acked`` only if it does not skip an
unacknowledged range.

**Retransmission** follows TCP's rules (RFC 6298): the timeout is the smoothed round trip plus
four deviations, measured from acknowledgements of ranges sent once (Karn), at least
``retransmit_min`` — ``retransmit_after`` before the first measurement — doubling while the peer
stays silent, up to ``4 * retransmit_after``. A reply from a silent peer means the link (or the
partition) healed: every silent peer gets its backlog (or a probe) at once, and the backoff
starts over at one timeout; another message from a silent peer brings its resend forward, with a
second try one timeout later (a lost resend must not wait for the capped backoff).

**Which path.** A resend, or a push after the peer fell silent, that would ship more than
``probe_bytes`` goes to anti-entropy instead: a root probe costs one small message pair, and finds
the peer already in sync when other nodes or anti-entropy got there first (then it counts as an
acknowledgement of everything up to the probe); otherwise the digest descent ships only what still
differs. A peer whose ``acked`` falls behind the buffer, or whose backlog would not fit one round's
byte budget, is handed to anti-entropy the same way (*marked behind*). A peer that stayed silent
through several resends is resent only the oldest unacknowledged entry each period (a crashed or
partitioned node is not sent its growing backlog over and over); its ACK shows the link healed, and
the rest follows at once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice

from crdtcoord.codec import encode
from crdtcoord.engine.core import Core
from crdtcoord.engine.effects import PeerRepair
from crdtcoord.engine.membership import Membership
from crdtcoord.engine.messages import Ack, Delta, Entry
from crdtcoord.engine.store import Store, join_ranked
from crdtcoord.types import CRDTBase

__all__ = ["JOIN_EVERY", "PeerStream", "Propagation", "join_all"]


@dataclass(slots=True)
class PeerStream:
    """This node's delta stream to one peer (volatile: a restart costs a repair, nothing else).

    ``acked``/``sent``: highest buffer entry acknowledged / sent. ``floor``: entries up to here
    were handed to a repair instead of being sent, so an ACK proves nothing about them.
    ``retry_at``: when the oldest unacknowledged range is resent. ``silent``: resends in a row
    without progress (the peer is unreachable or overloaded). ``backoff_from``: the ``silent``
    count at which the current backoff started over (a sign of life restarts the backoff at
    the RTO, while a peer silent for long stays on one-entry probes).
    """

    acked: int = 0
    sent: int = 0
    floor: int = 0
    retry_at: float | None = None
    silent: int = 0
    healed_at: float = float("-inf")  # the last resend triggered by a sign of life
    backoff_from: int = 0
    #: round-trip estimate (RFC 6298): smoothed RTT and its deviation, None before a sample
    srtt: float | None = None
    rttvar: float = 0.0
    #: the range end being timed and when it was sent (only ranges sent once are timed)
    timing: tuple[int, float] | None = None


#: Timeouts in a row after which a peer counts as cut off (not just one lost message).
_CUT_OFF = 2
#: Resends in a row without an answer after which a resend carries only the oldest entry (a
#: probe: a dead peer is not sent the whole backlog every period; its ACK brings the rest).
_GIVE_UP = 5
#: Pending deltas of one key are joined at flush, or once this many accumulated.
JOIN_EVERY = 64


def join_all(deltas: list[CRDTBase]) -> CRDTBase:
    """A fresh join of ``deltas`` (two types at one key: the larger rank wins, as in the store)."""
    if len(deltas) == 1:
        return deltas[0]
    first = deltas[0]
    kind = type(first)
    if not first.HAS_PARAMS and all(type(d) is kind for d in deltas):
        return kind.join_all(deltas)
    out = first.copy()
    for d in islice(deltas, 1, None):
        out = join_ranked(out, d)
    return out


@dataclass(slots=True)
class _LogEntry:
    seq: int
    deltas: dict[str, tuple[CRDTBase, frozenset[str]]]  # key -> (joined delta, origins)
    size: int = -1  # encoded size of the deltas, computed when first needed

    def wire_size(self) -> int:
        if self.size < 0:
            self.size = sum(len(k) + len(encode(d)) for k, (d, _) in self.deltas.items())
        return self.size


class Propagation:
    """Delta buffer and per-peer streams of one engine."""

    def __init__(
        self,
        core: Core,
        store: Store,
        membership: Membership,
        *,
        repair: Callable[[str, bool], None],
        acked: Callable[[str, int, int], None],
    ) -> None:
        self._core = core
        self._store = store
        self._members = membership
        self._repair = repair  # (peer, probe): hand the peer to anti-entropy
        self._acked = acked  # (peer, acked, floor): a peer acknowledged up to `acked`
        self.stream = core.id.process & ((1 << 62) - 1)
        self._pending: dict[str, tuple[list[CRDTBase], set[str]]] = {}
        #: key -> the deltas list of the batch not yet flushed, for keys whose batch already
        #: holds a delta of this node's own: the engine's local update hot path appends there
        #: directly (a key's first local delta of a batch goes by ``enqueue``)
        self.local_batch: dict[str, list[CRDTBase]] = {}
        #: bumped whenever batched delta objects are replaced by a join: at a flush (the batch
        #: becomes a log entry) and when a key's list is compacted every ``JOIN_EVERY`` deltas.
        #: The engine extends a run's delta in place only while it is still batched as itself.
        self.batch_gen = 0
        self._pending_since: float | None = None
        self._last_flush = -math.inf
        self._log: deque[_LogEntry] = deque()
        self.seq = 0
        self._peers: dict[str, PeerStream] = {}
        self._rr = -1  # round-robin position; starts at a random peer (see targets)

    # ------------------------------------------------------------------ inspection

    def backlog(self) -> int:
        """Buffer entries not yet acknowledged by every peer, plus one for the batch not yet
        flushed if it has a live peer to go to (a delta still waiting for ``delta_delay`` has
        not left either)."""
        return len(self._log) + (1 if self._pending and self._members.peers() else 0)

    def stream_to(self, peer: str) -> PeerStream | None:
        return self._peers.get(peer)

    # ------------------------------------------------------------------ outgoing

    def enqueue(self, key: str, delta: CRDTBase, origin: str, *, force: bool = False) -> None:
        """Batch a delta to push (``origin``: this node, or the peer it came from).

        The deltas of one key are kept as a list and joined when the batch is flushed (or every
        ``JOIN_EVERY`` deltas): an update pays an append, the join happens once per batch. The
        delta is not copied — mutators and decoders hand out fresh objects, and the join builds
        a new one."""
        if not (self._core.config.push_deltas or force):
            return
        cur = self._pending.get(key)
        if cur is None:
            cur = self._pending[key] = ([delta], {origin})
            if origin == self._core.node_id and self._core.config.push_deltas:
                self.local_batch[key] = cur[0]
            if self._pending_since is None:
                now = self._core.now
                delay = self._core.config.delta_delay
                if self._core.config.delta_idle_send and now - self._last_flush >= delay:
                    now -= delay  # (quiet for a window: this batch is due at once)
                self._pending_since = now
            return
        deltas, origins = cur
        deltas.append(delta)
        if origin not in origins:
            origins.add(origin)
            if origin == self._core.node_id and self._core.config.push_deltas:
                self.local_batch[key] = deltas
        if len(deltas) >= JOIN_EVERY:
            deltas[:] = [join_all(deltas)]
            self.batch_gen += 1

    def flush(self) -> int:
        """Turn the pending deltas into the next buffer entry; returns its sequence number."""
        if self._pending:
            self.seq += 1
            entry = {k: (join_all(d), frozenset(o)) for k, (d, o) in self._pending.items()}
            self._log.append(_LogEntry(self.seq, entry))
            self._pending.clear()
            self.local_batch.clear()
            self.batch_gen += 1
            self._pending_since = None
            self._last_flush = self._core.now
            for _ in range(max(0, len(self._log) - self._core.config.delta_buffer)):
                self._log.popleft()
        return self.seq

    def targets(self) -> list[str]:
        """Peers of the next push: all, or ``delta_fanout`` of them in round-robin order."""
        fanout = self._core.config.delta_fanout
        peers = self._members.peers()
        if fanout is None or fanout >= len(peers):
            return peers
        if self._rr < 0:  # nodes must not all forward to the same first peers
            self._rr = self._core.rng.randrange(len(peers))
        out = []
        for _ in range(fanout):
            out.append(peers[self._rr % len(peers)])
            self._rr += 1
        return out

    def push(self, targets: Iterable[str]) -> None:
        """Send each target what it has not been sent yet from the buffer."""
        if not self._log:
            return
        for p in targets:
            st = self._peers.get(p)
            if st is None:
                st = self._peers[p] = PeerStream()
            if st.sent < self.seq:
                self._send_range(p, st)
        self.gc()

    def _send_range(self, p: str, st: PeerStream, limit: int | None = None) -> None:
        """Send ``p`` the entries after ``st.sent`` (at most ``limit`` of them)."""
        core = self._core
        first = self._log[0].seq
        if st.acked < first - 1:
            self.mark_behind(p, st)  # it missed entries no longer held
            return
        if st.silent and st.acked < st.sent:
            # The peer has not answered for a while: don't stack more ranges on a dead link
            # (the next resend carries everything from `acked`).
            return
        lo = max(st.sent, first - 1)
        hi = self.seq if limit is None else min(self.seq, lo + limit)
        joined: dict[str, CRDTBase] = {}
        for e in islice(self._log, lo - first + 1, hi - first + 1):
            for key, (delta, origins) in e.deltas.items():
                if origins == {p}:
                    continue  # never back to where it came from
                cur = joined.get(key)
                joined[key] = delta.copy() if cur is None else join_ranked(cur, delta)
        if not joined:
            # Nothing in (sent, seq] is for this peer. It counts as acknowledged only if
            # everything before it was: an unacknowledged range must never be skipped.
            if st.acked >= st.sent:
                st.acked = hi
            st.sent = hi
            return
        entries = tuple(Entry(k, d, self._store.version(k)) for k, d in joined.items())
        msg = Delta(self.stream, lo, hi, entries)
        _, data = core.encode(msg)
        if len(data) > core.config.max_round_bytes:
            self.mark_behind(p, st)  # too much backlog for one message: a budgeted repair
            return
        core.emit_bytes(p, data, msg.KIND)
        if st.acked >= st.sent:
            st.retry_at = core.now + self._rto(st)
        if st.timing is None and not st.silent:
            st.timing = (hi, core.now)
        st.sent = hi
        core.count("delta_messages")

    def gc(self) -> None:
        """Drop buffer entries every live peer acknowledged."""
        if not self._log:
            return
        peers = self._members.peers()
        if not peers:
            self._log.clear()
        else:
            floor = min((self._peers[p].acked if p in self._peers else 0) for p in peers)
            while self._log and self._log[0].seq <= floor:
                self._log.popleft()
        first = self._log[0].seq if self._log else self.seq + 1
        for st in self._peers.values():
            if st.retry_at is not None and st.acked < first - 1:
                # A peer that is not live (it left) lost entries it never acknowledged: nothing
                # is left to resend; if it comes back, its stream is behind and it is repaired.
                st.retry_at = None
                st.silent = 0
                st.backoff_from = 0

    def mark_behind(self, peer: str, st: PeerStream | None = None, *, probe: bool = False) -> None:
        """Hand ``peer`` to anti-entropy: its stream jumps to the present (acks no longer prove
        the skipped entries), and a repair exchange is scheduled."""
        st = st or self._peers.setdefault(peer, PeerStream())
        st.floor = st.acked = st.sent = self.seq
        st.retry_at = None
        st.silent = 0
        st.backoff_from = 0
        self._core.emit(PeerRepair(peer, "probe" if probe else "behind"))
        self._core.count("repairs_scheduled")
        self._repair(peer, probe)

    def proven(self, peer: str, seq: int) -> None:
        """An anti-entropy exchange started at buffer entry ``seq`` ended in sync: ``peer``
        holds everything up to it (that is as good as an acknowledgement)."""
        st = self._peers.setdefault(peer, PeerStream())
        if seq >= st.floor:
            st.floor = 0
        if seq > st.acked:
            st.acked = seq
        st.sent = max(st.sent, st.acked)
        if st.acked >= st.sent:
            st.retry_at = None
            st.silent = 0
            st.backoff_from = 0
        self._acked(peer, seq, 0)
        self.gc()

    def forget(self, peer: str) -> None:
        """``peer`` restarted without its state: whatever it acknowledged is gone."""
        self.mark_behind(peer)

    def rto_of(self, peer: str) -> float:
        """The current retransmission timeout towards ``peer`` (before backoff)."""
        st = self._peers.get(peer)
        return self._core.config.retransmit_after if st is None else self._rto(st)

    # ------------------------------------------------------------------ incoming

    def ack_for(self, msg: Delta) -> Ack:
        return Ack(msg.stream, msg.lo, msg.hi)

    def on_ack(self, peer: str, ack: Ack) -> None:
        st = self._peers.get(peer)
        if st is None or ack.stream != self.stream:
            return  # an ack for another (earlier) delta stream of ours
        if ack.lo > st.acked:
            # An earlier range was lost: acknowledging this one would skip the gap. The
            # retransmission resends from st.acked.
            self._core.count("acks_out_of_order")
            return
        if ack.hi > st.acked:
            now = self._core.now
            if st.timing is not None and ack.hi >= st.timing[0]:
                self._sample(st, now - st.timing[1])
                st.timing = None
            st.acked = min(ack.hi, self.seq)
            st.silent = 0
            st.backoff_from = 0
            st.retry_at = None if st.acked >= st.sent else now + self._rto(st)
            if st.acked >= st.sent and st.sent < self.seq and self._log:
                self._send_range(peer, st)  # it got a probe: the rest follows
        self._acked(peer, st.acked, st.floor)
        self.gc()

    def heard_from(self, peer: str, *, reply: bool) -> None:
        """A message from ``peer``; ``reply``: it answers one of ours (proof that our traffic
        reaches it). A reply from a cut-off peer means the link or the partition healed: resend
        now to it and to every other cut-off peer, backoff reset. A message that is not a reply
        only shows the peer→us direction works (a one-way partition looks the same): resend to
        that peer alone, once per backed-off period, backoff kept."""
        st = self._peers.get(peer)
        if st is None or st.silent < _CUT_OFF or st.retry_at is None or not self._log:
            return
        now = self._core.now
        if not reply:
            if st.acked < st.sent and now >= st.healed_at + self._backoff(st):
                st.healed_at = now
                self._retry(peer, st)
                # one quick second try if that resend is lost (then the backoff goes on: a
                # one-way partition gets two resends per backed-off period, not a storm)
                if st.retry_at is not None:
                    st.retry_at = min(st.retry_at, now + self._rto(st))
            return
        self._core.count("heals_detected")
        quiet_since = now - self._core.config.retransmit_after
        for p, other in list(self._peers.items()):
            if (
                other.silent >= _CUT_OFF
                and other.retry_at is not None
                and other.acked < other.sent
                and other.healed_at <= quiet_since  # one resend per heal, not one per message
            ):
                other.healed_at = now
                # the backoff starts over (a lost resend is retried after one RTO, not after
                # the capped backoff); a peer silent for long stays on probes (a heal of
                # another peer says nothing about it)
                other.silent = 0 if other.silent < _GIVE_UP else _GIVE_UP - 1
                other.backoff_from = other.silent
                self._retry(p, other)

    # ------------------------------------------------------------------ time

    def _retry(self, p: str, st: PeerStream) -> None:
        core = self._core
        c = core.config
        if not self._log:  # nothing left to resend
            st.retry_at = None
            return
        core.count("retransmits")
        if c.probe_bytes is not None and self._backlog_bytes(st) > c.probe_bytes:
            self.mark_behind(p, st, probe=True)
            return
        silent = st.silent + 1
        st.sent = st.acked
        st.silent = 0  # (so that the range goes out now)
        # a peer silent for long gets only the oldest entry: its ACK proves the link healed
        # (then everything goes), and a dead peer is not sent its whole backlog every period
        limit = 1 if silent >= _GIVE_UP else None
        self._send_range(p, st, limit)
        while limit is not None and st.acked >= st.sent < self.seq:
            self._send_range(p, st, limit)  # that entry held nothing for it: probe with the next
        st.silent = silent
        st.timing = None  # Karn: a resent range is not timed
        st.retry_at = core.now + self._backoff(st)

    def _backoff(self, st: PeerStream) -> float:
        """The timeout after ``st.silent`` resends without progress: doubled each time since
        the backoff last started over (``backoff_from``, a sign of life), capped."""
        rto = self._rto(st)
        backoff = rto * (1 << min(max(st.silent - st.backoff_from - 1, 0), 6))
        return min(backoff, max(4 * self._core.config.retransmit_after, rto))

    def _rto(self, st: PeerStream) -> float:
        """The retransmission timeout before backoff (RFC 6298, section 2)."""
        c = self._core.config
        if st.srtt is None:
            return c.retransmit_after
        return max(c.retransmit_min, st.srtt + 4 * st.rttvar)

    @staticmethod
    def _sample(st: PeerStream, rtt: float) -> None:
        if st.srtt is None:
            st.srtt, st.rttvar = rtt, rtt / 2
        else:
            st.rttvar = 0.75 * st.rttvar + 0.25 * abs(st.srtt - rtt)
            st.srtt = 0.875 * st.srtt + 0.125 * rtt

    def _backlog_bytes(self, st: PeerStream) -> int:
        """Encoded size of the unacknowledged range, roughly (stops past the threshold)."""
        if not self._log:
            return 0
        limit = self._core.config.probe_bytes or 0
        first = self._log[0].seq
        if st.acked < first - 1:
            return limit + 1
        total = 0
        for e in islice(self._log, max(0, st.acked - first + 1), None):
            total += e.wire_size()  # an upper bound: a key in several entries counts each time
            if total > limit:
                break
        return total

    def next_deadline(self) -> float | None:
        ds: list[float] = []
        if self._pending_since is not None:
            ds.append(self._pending_since + self._core.config.delta_delay)
        if self._log:
            ds.extend(st.retry_at for st in self._peers.values() if st.retry_at is not None)
        return min(ds) if ds else None

    def tick(self, now: float) -> None:
        c = self._core.config
        since = self._pending_since
        if self._pending and since is not None and now >= since + c.delta_delay:
            self.flush()
            self.push(self.targets())
        if self._log:
            for p, st in list(self._peers.items()):
                if st.retry_at is not None and now >= st.retry_at and st.acked < st.sent:
                    self._retry(p, st)
                elif st.retry_at is not None and st.acked >= st.sent:
                    st.retry_at = None
            self.gc()
        else:
            for st in self._peers.values():
                st.retry_at = None
