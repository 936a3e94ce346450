"""The host: writes before dependent sends, group commit across updates in deferred mode."""

from __future__ import annotations

from collections.abc import Sequence

from crdtcoord import GCounter
from crdtcoord.engine import EngineConfig, Event, Kind, Persist
from crdtcoord.host import Host, MemoryStorage

CFG = EngineConfig(ae_enabled=False, gossip_membership=False)


class Log(MemoryStorage):
    """Records writes into a shared timeline of what the host did."""

    def __init__(self, timeline: list[str]) -> None:
        super().__init__()
        self.timeline = timeline

    def write(self, batch: Sequence[Persist], meta: dict[str, int] | None = None) -> None:
        super().write(batch, meta)
        self.timeline.append(f"write {len(batch)}")


def _host(timeline: list[str], *, defer: bool, seeds: tuple[str, ...] = ("a", "b")) -> Host:
    def send(peer: str, data: bytes, kind: Kind) -> None:
        timeline.append(f"send {kind.name}")

    def event(e: Event) -> None:
        timeline.append(f"event {type(e).__name__}")

    h = Host.open(
        "a",
        Log(timeline),
        send,
        event,
        wall_ms=1,
        clock_ms=None,
        seeds=seeds,
        config=CFG,
        defer=defer,
    )
    h.engine.report_all_changes()
    h.start(0.0)
    return h


def test_each_poll_is_written_before_its_sends_and_events() -> None:
    timeline: list[str] = []
    h = _host(timeline, defer=False)
    h.update("k", GCounter, GCounter.Increment(1), 0.0)
    h.tick(0.01)
    assert timeline == ["write 1", "event Changed", "send DELTA"]


def test_deferred_mode_groups_the_writes_of_many_updates() -> None:
    timeline: list[str] = []
    h = _host(timeline, defer=True)
    for _ in range(100):
        h.update("k", GCounter, GCounter.Increment(1), 0.0)
    assert timeline == [] and h.pending_writes() == 100  # applied in memory, not written yet
    assert h.engine.value("k") == 100
    h.tick(0.01)  # the batching window passed: one write, then the changes, then the delta
    # (one row: the 100 deltas of one key are joined before they are written)
    assert timeline == ["write 1", *["event Changed"] * 100, "send DELTA"]
    snap = h.storage.open("a")
    assert snap is not None and snap.states["k"].value() == 100


def test_coalescing_keeps_op_ids_and_replacements_in_place() -> None:
    from crdtcoord.engine import Persist
    from crdtcoord.host.host import coalesce

    def inc(n: int) -> GCounter:
        c = GCounter()
        c.increment("a/1", n)
        return c

    batch = [
        Persist("k", inc(1)),
        Persist("j", inc(5)),
        Persist("k", inc(2)),
        Persist("k", inc(3), op_id="op-1"),
        Persist("k", inc(4)),
        Persist("k", inc(6)),
    ]
    out = coalesce(batch)
    assert [(p.key, p.delta.value(), p.op_id) for p in out] == [
        ("k", 2, None),
        ("j", 5, None),
        ("k", 3, "op-1"),
        ("k", 6, None),
    ]
    assert batch[0].delta.value() == 1  # the deltas themselves are not mutated


def test_deferred_writes_without_peers_are_flushed_by_the_tick() -> None:
    timeline: list[str] = []
    h = _host(timeline, defer=True, seeds=())
    h.update("k", GCounter, GCounter.Increment(1), 0.0)
    assert timeline == []
    h.tick(0.01)
    assert timeline == ["write 1", "event Changed"]
    assert isinstance(h.storage, MemoryStorage) and h.storage.open("a") is not None


def test_close_records_a_clean_shutdown_only_when_nothing_is_left_to_send() -> None:
    timeline: list[str] = []
    h = _host(timeline, defer=True)
    h.update("k", GCounter, GCounter.Increment(1), 0.0)
    h.tick(0.01)  # the delta is sent, not acknowledged
    assert h.close() is False
    snap = h.storage.open("a")
    assert snap is not None and snap.meta.get("clean_shutdown") == 0
    lone = _host([], defer=True, seeds=())
    lone.update("k", GCounter, GCounter.Increment(1), 0.0)
    assert lone.close() is True
    snap = lone.storage.open("a")
    assert snap is not None and snap.meta.get("clean_shutdown") == 1
