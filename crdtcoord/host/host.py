"""The driver host: one engine, one storage, one send function, and the only effect loop.

Every driver — the deterministic simulator, the hand-driven :class:`ManualCluster`, the asyncio
runtime — gives a :class:`Host` its inputs (updates, reads, received bytes, ticks) and a way to
send bytes; the host feeds the engine and then executes :meth:`Engine.poll` **in order**:

1. every :class:`Persist` of the poll is written to the storage in one ``write`` call (one
   transaction: group commit), *before* anything else of that poll happens — so no message that
   depends on a change (the ACK of received data, the delta of a local write) leaves the node
   before the change is as durable as the storage makes it;
2. then sends and events, in the engine's order.

**Deferred mode** (``defer=True``, what a networked node uses): writes accumulate across polls
and go to the storage in one transaction as soon as anything depends on them — a send, or an
event other than ``Changed`` — and at every tick; ``Changed`` events wait for that write. A local
update is then applied in memory at once and durable within one batching window, before any
message about it leaves the node (group commit across updates).

A failed write is fatal to the host (crash-only: its memory is ahead of its disk); it refuses
every further call, and the driver restarts it from its storage. A restart is :meth:`Host.open`
on the same storage: the engine is built from what was persisted, nothing else. A storage with no
state (new or lost) gives the node a new incarnation equal to the wall clock in ms, which is
larger than any earlier incarnation of that node without remembering it (protocol.md §1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from crdtcoord.engine import Changed, Effect, Engine, Event, Kind, Persist, Send
from crdtcoord.host.storage import Storage, StorageError

__all__ = ["CLEAN", "EventSink", "Host", "SendFn"]

#: Storage counter: 1 when the last process shut down cleanly (see Host.close).
CLEAN = "clean_shutdown"
#: ``send(peer, data, kind)``: hand one encoded message to the transport.
SendFn = Callable[[str, bytes, Kind], None]
#: Receives every event (Changed, WriteDone, ...) in order.
EventSink = Callable[[Event], None]
#: Called with the events of a poll before its write; returns counters stored in the same write.
MetaFn = Callable[[list[Event]], dict[str, int] | None]


class Host:
    """Runs one :class:`Engine` against a :class:`Storage` (see the module documentation)."""

    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        send: SendFn,
        on_event: EventSink | None = None,
        *,
        meta: MetaFn | None = None,
        defer: bool = False,
        max_deferred: int = 10_000,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self._send = send
        self._on_event = on_event
        self._meta = meta
        self._failed: BaseException | None = None
        #: driver counters restored from the storage by :meth:`open`
        self.restored_meta: dict[str, int] = {}
        self.unclean = False
        self._recover = False  # probe the peers at start (the last process crashed)
        self._defer = defer
        self._max_deferred = max_deferred
        self._deferred: list[Persist] = []  # written at the next flush
        self._queue: list[Effect] = []  # released after that write
        self._marked = False  # the storage records that this process has not shut down cleanly
        #: called after each storage write with (persist effects written, seconds it took)
        self.on_write: Callable[[int, float], None] | None = None

    @classmethod
    def open(
        cls,
        node_id: str,
        storage: Storage,
        send: SendFn,
        on_event: EventSink | None = None,
        *,
        wall_ms: int,
        clock_ms: Callable[[], int] | None,
        meta: MetaFn | None = None,
        defer: bool = False,
        **engine_args: Any,
    ) -> Host:
        """Build the engine from ``storage`` (or, with no stored state, under a new incarnation
        ``wall_ms``); ``engine_args`` go to :class:`Engine` (seeds, config, ...).

        ``wall_ms`` (the wall clock now, in ms) and ``clock_ms`` (the engine's physical clock in
        ms) must be on the same scale: pass the wall clock for both (a real node), or ``None``
        for ``clock_ms`` when ``wall_ms`` counts from the same origin as the engine's ``now``
        (a simulator: the clock is then ``now`` in ms). Peers refuse an incarnation beyond their
        own clock, so a mismatch makes every message ``future_incarnation``."""
        snap = storage.open(node_id)
        if snap is None:
            if type(wall_ms) is not int or wall_ms < 0:
                raise StorageError("a new node needs the wall clock (ms) as its incarnation")
            storage.create(node_id, wall_ms)
            engine = Engine(node_id, incarnation=wall_ms, clock_ms=clock_ms, **engine_args)
        else:
            engine = Engine(
                node_id,
                incarnation=snap.incarnation,
                store=snap.states,
                versions=snap.versions,
                op_ids=snap.op_ids,
                clock_ms=clock_ms,
                **engine_args,
            )
        host = cls(engine, storage, send, on_event, meta=meta, defer=defer)
        host.restored_meta = dict(snap.meta) if snap is not None else {}
        # A node whose last process did not shut down cleanly may have applied updates whose
        # deltas never left: it probes its peers at start (Engine.recover).
        host._recover = snap is not None and snap.meta.get(CLEAN) != 1
        #: the last process stopped without recording a clean shutdown
        host.unclean = host._recover
        return host

    # ------------------------------------------------------------------ inputs

    def _ok(self) -> Engine:
        if self._failed is not None:
            raise StorageError(f"host stopped after a failed write: {self._failed}")
        return self.engine

    def start(self, now: float) -> None:
        engine = self._ok()
        engine.start(now)
        if self._recover:
            self._recover = False
            engine.recover()
        self.run()

    def mark_running(self, meta: dict[str, int] | None = None) -> None:
        """Record (durably, now) that this process runs: a crash from here on is seen as one
        by the next start, even before the first batch is written; with ``meta`` besides."""
        self.storage.write([], {**(meta or {}), CLEAN: 0})
        self._marked = True

    def close(self) -> bool:
        """Record a clean shutdown if nothing is left to send (every delta acknowledged, no
        request waiting, no repair owed to a peer), so the next start need not probe its peers;
        returns whether it was clean."""
        engine = self._ok()
        self.run()
        self.flush()
        clean = engine.backlog() == 0 and engine.pending_requests() == 0 and not engine.repairs()
        if clean:
            self.storage.write([], {CLEAN: 1})
        self.storage.close()
        return clean

    def update(self, key: str, factory: Any, fn: Any, now: float, **kw: Any) -> int:
        """:meth:`Engine.update`, then run the effects."""
        try:
            return self._ok().update(key, factory, fn, now, **kw)
        finally:
            self.run()

    def read(self, key: str, now: float, **kw: Any) -> int:
        try:
            return self._ok().read(key, now, **kw)
        finally:
            self.run()

    def receive(self, data: bytes, now: float) -> str:
        """:meth:`Engine.receive` (returns the sender), then run the effects (a
        :class:`ProtocolError` propagates; a rejected message produced none)."""
        try:
            return self._ok().receive(data, now)
        finally:
            self.run()

    def tick(self, now: float) -> None:
        try:
            self._ok().tick(now)
        finally:
            self.run()
            self.flush()  # (deferred mode: at least one write per tick)

    def leave(self, now: float) -> None:
        try:
            self._ok().leave(now)
        finally:
            self.run()

    def recover(self) -> None:
        """:meth:`Engine.recover` (probe every peer by anti-entropy), then run the effects."""
        try:
            self._ok().recover()
        finally:
            self.run()

    def next_deadline(self) -> float | None:
        return self._ok().next_deadline()

    # ------------------------------------------------------------------ the effect loop

    def run(self) -> None:
        """Execute the engine's effects in order: the writes first (one transaction), then the
        sends and events. In deferred mode, writes accumulate until something depends on them
        (a send, an event other than Changed) or until :meth:`flush`."""
        if self._failed is not None:
            return
        effects = self.engine.poll()
        if not effects:
            return
        if not self._defer:
            self._commit([e for e in effects if isinstance(e, Persist)], effects)
            return
        urgent = False
        for e in effects:
            if isinstance(e, Persist):
                self._deferred.append(e)
            else:
                self._queue.append(e)
                urgent = urgent or not isinstance(e, Changed)
        if urgent or len(self._deferred) >= self._max_deferred:
            self.flush()

    def flush(self) -> None:
        """Write what is deferred (one transaction), then release what waited for it."""
        if self._failed is not None or not (self._deferred or self._queue):
            return
        batch, self._deferred = self._deferred, []
        queue, self._queue = self._queue, []
        self._commit(batch, queue)

    def write_now(self) -> None:
        """Write the updates applied so far now (one transaction), without waiting for the
        batching window; events stay queued until the next flush (nothing was sent about
        these writes yet, so the write-before-send rule holds)."""
        self.run()
        if self._failed is not None or not self._deferred:
            return
        batch, self._deferred = self._deferred, []
        self._commit(batch, [])

    def pending_writes(self) -> int:
        """Persist effects applied in memory and not written yet (deferred mode)."""
        return len(self._deferred)

    def _commit(self, batch: list[Persist], effects: list[Effect]) -> None:
        if len(batch) > 1:
            batch = coalesce(batch)
        events: list[Event] = [e for e in effects if not isinstance(e, Persist | Send)]
        meta = self._meta(events) if self._meta is not None else None
        if batch and not self._marked:  # from now on, a crash is not a clean shutdown
            meta = {**(meta or {}), CLEAN: 0}
            self._marked = True
        if batch or meta:
            t0 = time.perf_counter()
            try:
                self.storage.write(batch, meta)
            except BaseException as exc:
                self._failed = exc
                raise
            if self.on_write is not None:
                self.on_write(len(batch), time.perf_counter() - t0)
        send, sink = self._send, self._on_event
        for e in effects:
            if isinstance(e, Send):
                send(e.peer, e.data, e.kind)
            elif sink is not None and not isinstance(e, Persist):
                sink(e)

    def __repr__(self) -> str:
        return f"Host({self.engine!r}, {type(self.storage).__name__})"


def coalesce(batch: list[Persist]) -> list[Persist]:
    """One ``Persist`` per key for a run of plain deltas (joined): a hot key updated 10,000
    times in one batching window is one row, not 10,000. A ``Persist`` that replaces the state
    or carries an op id is kept as it is, in its place (an op id is stored with exactly its
    delta's write, and a replace must not absorb deltas written before it)."""
    out: list[Persist | list[Persist]] = []
    open_: dict[str, int] = {}  # key -> index in out of its run of plain deltas
    for p in batch:
        if p.replace or p.op_id is not None or p.delete:
            open_.pop(p.key, None)
            out.append(p)
            continue
        i = open_.get(p.key)
        if i is None:
            open_[p.key] = len(out)
            out.append([p])
        else:
            run = out[i]
            assert isinstance(run, list)
            run.append(p)
    merged: list[Persist] = []
    for x in out:
        if isinstance(x, Persist):
            merged.append(x)
        elif len(x) == 1:
            merged.append(x[0])
        else:
            last = x[-1]
            # (join_all builds a fresh state: the deltas are shared with the delta buffer)
            delta = type(last.delta).join_all([p.delta for p in x])
            merged.append(Persist(last.key, delta, last.vv))
    return merged
