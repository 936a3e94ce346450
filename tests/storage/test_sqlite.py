"""SqliteStorage: what a restart reads is exactly what was written; schemas; locks; crashes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcoord import GCounter, Lease, LWWRegister, ORMap, ORSet, PNCounter, encode
from crdtcoord.engine import EngineConfig, Persist
from crdtcoord.host import Host, MemoryStorage
from crdtcoord.storage import SCHEMA, SqliteStorage, StorageError
from crdtcoord.storage.sqlite import DDL_V1
from crdtcoord.testing import ManualCluster
from crdtcoord.testing.strategies import ops

ROOT = Path(__file__).resolve().parents[2]
QUIET = EngineConfig(ae_enabled=False, gossip_membership=False)


def _open(path: Path, **kw: Any) -> Host:
    return Host.open(
        "a", SqliteStorage(path, **kw), lambda *m: None, wall_ms=1_000, clock_ms=None, config=QUIET
    )


def test_a_restart_reads_back_every_key_version_and_op_id(tmp_path: Path) -> None:
    h = _open(tmp_path / "a.db")
    h.start(0.0)
    h.update("hits", GCounter, GCounter.Increment(3), 0.0, op_id="r1")
    h.update("set", ORSet, ORSet.Add("x"), 0.0)
    h.update("set", ORSet, ORSet.Remove("x"), 0.0)
    h.update("set", ORSet, ORSet.Add("y"), 0.0)
    h.update("cfg", ORMap, ORMap.Update("owner", LWWRegister.Assign("svc")), 0.0)
    h.update("lease", Lease, Lease.Acquire("h1", 60_000), 0.0)

    def dump(e: Any) -> dict[str, bytes]:
        return {k: encode(e.get(k)) for k in e.keys(prefix="")}

    before = dump(h.engine)
    vv = h.engine.version("lease")
    h.storage.close()
    again = _open(tmp_path / "a.db")
    assert again.engine.incarnation == 1_000
    assert dump(again.engine) == before
    assert again.engine.version("lease") == vv and "r1" in again.engine.op_ids()
    again.update("hits", GCounter, GCounter.Increment(3), 0.0, op_id="r1")  # a retry
    assert again.engine.value("hits") == 3


def test_compaction_folds_deltas_and_keeps_the_state(tmp_path: Path) -> None:
    st_ = SqliteStorage(tmp_path / "a.db", compact_min_bytes=512)
    h = Host.open("a", st_, lambda *m: None, wall_ms=5, clock_ms=None, config=QUIET)
    h.start(0.0)
    for i in range(2_000):
        h.update("set", ORSet, ORSet.Add(f"e{i % 300}"), 0.0)
        h.update("n", PNCounter, PNCounter.Decrement(1), 0.0)
    assert st_.compactions > 0
    db = sqlite3.connect(tmp_path / "a.db")
    (left,) = db.execute("SELECT COUNT(*) FROM deltas").fetchone()
    assert left < 500  # not 4,000 rows: folded as they outweighed the states
    db.close()
    value = h.engine.value("set")
    st_.close()
    again = _open(tmp_path / "a.db")
    assert again.engine.value("set") == value and again.engine.value("n") == -2_000


def test_a_replaced_key_restarts_as_the_replacing_type(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "a.db")
    s.create("a", 1)
    c = GCounter()
    c.increment("x/1", 2)
    p = PNCounter()
    p.increment("y/1", 5)
    s.write([Persist("k", c)])
    s.write([Persist("k", p, replace=True)])
    s.close()
    snap = SqliteStorage(tmp_path / "a.db").open("a")
    assert snap is not None and type(snap.states["k"]) is PNCounter
    assert snap.states["k"].value() == 5


def test_a_newer_schema_is_refused_and_another_node_too(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "a.db")
    s.create("a", 1)
    s.close()
    with pytest.raises(StorageError, match="holds node 'a', not 'b'"):
        SqliteStorage(tmp_path / "a.db").open("b")
    db = sqlite3.connect(tmp_path / "a.db")
    db.execute("UPDATE meta SET v = ? WHERE k = 'schema'", (SCHEMA + 1,))
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="newer than this crdtcoord reads"):
        SqliteStorage(tmp_path / "a.db").open("a")


def test_a_schema_1_data_dir_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(DDL_V1)
    c = PNCounter()
    c.increment("a/7", 4)
    db.executemany(
        "INSERT INTO meta(k, v) VALUES (?, ?)",
        [("schema", 1), ("node_id", "a"), ("incarnation", 7), ("op_ids", msgpack.packb(["x"]))],
    )
    db.execute("INSERT INTO states(key, state, size) VALUES ('k', ?, 1)", (encode(c),))
    db.commit()
    db.close()
    snap = SqliteStorage(path).open("a")
    assert snap is not None and snap.incarnation == 7 and snap.op_ids == ["x"]
    assert snap.states["k"].value() == 4
    db = sqlite3.connect(path)
    assert db.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone() == (SCHEMA,)
    db.close()


def test_one_process_per_data_dir(tmp_path: Path) -> None:
    first = SqliteStorage(tmp_path / "a.db")
    first.create("a", 1)
    with pytest.raises(StorageError, match="in use by another process"):
        SqliteStorage(tmp_path / "a.db").open("a")
    first.close()
    assert SqliteStorage(tmp_path / "a.db").open("a") is not None


@pytest.mark.parametrize(("durability", "level"), [("process", 1), ("power", 2)])
def test_the_durability_knob(tmp_path: Path, durability: Any, level: int) -> None:
    s = SqliteStorage(tmp_path / "a.db", durability=durability)
    s.create("a", 1)
    assert s._db is not None and s._db.execute("PRAGMA synchronous").fetchone() == (level,)
    s.close()
    with pytest.raises(StorageError):
        SqliteStorage(tmp_path / "b.db", durability="sometimes")  # type: ignore[arg-type]


def test_garbage_in_the_file_is_a_clear_error(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "a.db")
    s.create("a", 1)
    s.close()
    db = sqlite3.connect(tmp_path / "a.db")
    db.execute("INSERT INTO deltas(key, delta, replace) VALUES ('k', x'c1c1', 0)")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="does not decode"):
        SqliteStorage(tmp_path / "a.db").open("a")


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_sqlite_and_memory_storage_restart_to_the_same_replica(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Random updates, deliveries and restarts on two clusters that differ only in storage."""
    tmp = tmp_path_factory.mktemp("db")
    seq = [0]

    def sqlite(node: str) -> SqliteStorage:
        seq[0] += 1
        return SqliteStorage(tmp / f"{node}-{seq[0]}.db", compact_min_bytes=256)

    mem = ManualCluster(["a", "b"], QUIET)
    sql = ManualCluster(["a", "b"], QUIET, storage=sqlite)
    kinds = {"c": PNCounter, "s": ORSet, "m": ORMap, "r": LWWRegister}
    for _ in range(data.draw(st.integers(5, 30))):
        step = data.draw(st.sampled_from(["update", "update", "deliver", "restart"]))
        node = data.draw(st.sampled_from(["a", "b"]))
        if step == "update":
            key = data.draw(st.sampled_from(sorted(kinds)))
            op = data.draw(ops(kinds[key], replicas=[mem.engines[n].actor for n in "ab"]))
            outcomes = []
            for c in (mem, sql):
                try:
                    c.update(node, key, kinds[key], op)
                    outcomes.append(True)
                except Exception as exc:  # a refused op is refused on both
                    outcomes.append(type(exc).__name__)
            assert outcomes[0] == outcomes[1]
        elif step == "deliver":
            for c in (mem, sql):
                c.tick(0.01)
                c.flush_network()
        else:
            for c in (mem, sql):
                c.crash(node)
                c.restart(node)
        for n in "ab":
            assert mem.engines[n].digest() == sql.engines[n].digest()


CHILD = textwrap.dedent(
    """
    import sys
    from crdtcoord import PNCounter
    from crdtcoord.engine import EngineConfig
    from crdtcoord.host import Host
    from crdtcoord.storage import SqliteStorage

    cfg = EngineConfig(ae_enabled=False, gossip_membership=False)
    # (checkpoints often, in the background thread: a kill can land in the middle of one)
    store = SqliteStorage(sys.argv[1], checkpoint_pages=50, checkpoint_every=0.01)
    h = Host.open("a", store, lambda *m: None, wall_ms=1, clock_ms=None, config=cfg)
    h.start(0.0)
    i = 0
    while True:
        i += 1
        h.update("k", PNCounter, PNCounter.Increment(1), 0.0, op_id=f"op-{i}")
        # the host wrote the update before returning: from here on it is acknowledged
        print(i, flush=True)
    """
)


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    acked = 0
    for line in proc.stdout:
        acked = int(line)
        if acked >= 3_000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    snap = SqliteStorage(db).open("a")
    assert snap is not None
    value = snap.states["k"].value()
    assert value >= acked  # every acknowledged increment survived the kill
    assert {f"op-{i}" for i in range(1, acked + 1)} <= set(snap.op_ids)
    assert MemoryStorage  # (the in-memory storage would have lost all of it with the process)


RUNS_CHILD = textwrap.dedent(
    """
    import sys
    from crdtcoord import GCounter
    from crdtcoord.engine import EngineConfig
    from crdtcoord.host import Host
    from crdtcoord.storage import SqliteStorage

    cfg = EngineConfig(ae_enabled=False, gossip_membership=False)
    store = SqliteStorage(sys.argv[1], checkpoint_pages=50, checkpoint_every=0.01)
    h = Host.open("a", store, lambda *m: None, wall_ms=1, clock_ms=None, config=cfg)
    h.start(0.0)
    total = 0
    while True:
        for _ in range(10):  # a run: ten increments fold into one delta between two polls
            h.engine.update("k", GCounter, GCounter.Increment(1), 0.0)
        total += 10
        h.run()  # written before it returns: from here on the run is acknowledged
        print(total, flush=True)
    """
)


def test_kill_9_during_runs_of_increments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNS_CHILD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    acked = 0
    for line in proc.stdout:
        acked = int(line)
        if acked >= 20_000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    snap = SqliteStorage(db).open("a")
    assert snap is not None
    value = snap.states["k"].value()
    # every acknowledged run survived (the child may have written more before the kill, not
    # read yet), and each run was written whole, as one delta: never part of one
    assert value >= acked and value % 10 == 0, (value, acked)


def test_wal_checkpoints_run_in_the_background_and_bound_the_wal(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    h = _open(db, checkpoint_pages=100, checkpoint_every=0.02)
    storage = h.storage
    assert isinstance(storage, SqliteStorage)
    h.start(0.0)
    # the writer's own connection never checkpoints inside a commit (that stalled the loop)
    probe = sqlite3.connect(db)
    assert storage._db is not None
    assert storage._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    wal = Path(str(db) + "-wal")
    sizes = []
    for i in range(1, 6_001):
        h.update(f"k{i % 50}", GCounter, GCounter.Increment(1), 0.0)
        if i % 500 == 0:
            sizes.append(wal.stat().st_size)
    deadline = 5.0
    while storage.checkpoints == 0 and deadline > 0:
        import time

        time.sleep(0.05)
        deadline -= 0.05
    assert storage.checkpoints > 0
    # (a writer that never pauses: the thread's checkpoints cannot restart the WAL, the writer's
    # own inline checkpoint at 8 x checkpoint_pages keeps it bounded; unbounded, 6,000 commits
    # made it 52 MB)
    assert max(sizes) < 12 * 1024 * 1024, sizes
    assert storage.inline_checkpoints > 0
    probe.close()
    h.close()
    snap = SqliteStorage(db).open("a")
    assert snap is not None
    assert sum(s.value() for s in snap.states.values()) == 6_000


def test_with_pauses_between_writes_the_thread_alone_keeps_the_wal_small(tmp_path: Path) -> None:
    import time

    db = tmp_path / "a.db"
    h = _open(db, checkpoint_pages=100, checkpoint_every=0.01)
    storage = h.storage
    assert isinstance(storage, SqliteStorage)
    h.start(0.0)
    wal = Path(str(db) + "-wal")
    sizes = []
    for _burst in range(30):  # (a node: writes in batching windows, the loop idle in between)
        for i in range(40):
            h.update(f"k{i}", GCounter, GCounter.Increment(1), 0.0)
        time.sleep(0.03)
        sizes.append(wal.stat().st_size)
    assert storage.checkpoints > 0 and storage.inline_checkpoints == 0
    # the WAL restarted from its start again and again: it stays about the size of a few
    # bursts (1,200 commits without checkpoints would be about 10 MB)
    assert max(sizes) < 2 * 1024 * 1024, sizes
    h.close()


def test_a_reader_in_another_process_never_stalls_the_writer(tmp_path: Path) -> None:
    # (found by an attack: the writer's inline checkpoint waited 30 s for a reader's snapshot)
    import time

    db = tmp_path / "a.db"
    h = _open(db, checkpoint_pages=20, checkpoint_every=0.01)
    storage = h.storage
    assert isinstance(storage, SqliteStorage)
    h.start(0.0)
    h.update("k", GCounter, GCounter.Increment(1), 0.0)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM deltas").fetchone()  # (a snapshot held open)
    worst = 0.0
    for i in range(400):
        t0 = time.perf_counter()
        h.update(f"k{i % 50}", GCounter, GCounter.Increment(1), 0.0)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 1.0, worst
    # the writer's attempts failed (the reader's snapshot), and the thread was not left standing
    # down: it copies the WAL in the idle time that follows, instead of the next write doing it
    assert storage._ckpt is not None and not storage._ckpt.paused
    reader.execute("COMMIT")
    reader.close()
    h.close()


def test_compactions_are_spread_over_writes_and_the_wal_stays_bounded(tmp_path: Path) -> None:
    # (found by an attack: 200 keys coming due in one write compacted in one go, 3-12 s, and
    # the WAL grew to hundreds of MB between two checks)
    db = tmp_path / "a.db"
    h = _open(db, checkpoint_pages=100, compact_min_bytes=1024)
    storage = h.storage
    assert isinstance(storage, SqliteStorage)
    h.start(0.0)
    wal = Path(str(db) + "-wal")
    peak = 0
    for _ in range(600):
        for k in range(200):  # one write of 200 keys per round
            h.engine.update(f"c{k}", GCounter, GCounter.Increment(1), 0.0)
        before = storage.compactions
        h.run()
        assert storage.compactions - before <= 8  # (at most 8 compactions in one write)
        peak = max(peak, wal.stat().st_size)
    assert storage.compactions > 100
    assert peak < 16 * 1024 * 1024, peak  # (bound: 8 x 100 pages, plus one write's frames)
    h.close()
    snap = SqliteStorage(db).open("a")
    assert snap is not None
    assert all(snap.states[f"c{k}"].value() == 600 for k in range(200))


def test_a_failed_open_releases_the_data_dir_and_its_thread(tmp_path: Path) -> None:
    import threading

    db = tmp_path / "c.db"
    made = SqliteStorage(db)
    made.create("a", 1)
    made.close()
    raw = sqlite3.connect(db)
    raw.execute("DROP TABLE states")  # (a damaged data dir)
    raw.commit()
    raw.close()
    for _ in range(2):  # (the second open must not say "in use by another process")
        with pytest.raises(StorageError, match="not a usable data dir"):
            SqliteStorage(db).open("a")
    assert not [t for t in threading.enumerate() if t.name == "crdtcoord-checkpoint:c.db"]


def test_a_dead_checkpointer_puts_checkpoints_back_inline(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    h = _open(db)
    storage = h.storage
    assert isinstance(storage, SqliteStorage)
    h.start(0.0)
    assert storage._ckpt is not None
    storage._ckpt.stop()  # (as if its thread had died)
    storage._ckpt._stop = False
    h.update("k", GCounter, GCounter.Increment(1), 0.0)
    assert storage._ckpt is None
    assert storage._db is not None
    assert storage._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    h.close()


def test_checkpoint_settings_are_checked(tmp_path: Path) -> None:
    for kw in ({"checkpoint_pages": 0}, {"checkpoint_every": 0}, {"checkpoint_every": "1"}):
        with pytest.raises(StorageError):
            SqliteStorage(tmp_path / "x.db", **kw)
