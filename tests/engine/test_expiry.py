"""Expiring keys (``~<ms>~name``): every replica deletes them once its clock passes the expiry,
refuses their updates from then on, persists the deletion, and the replicas still converge."""

from __future__ import annotations

import pytest

from crdtcoord import GCounter, InvalidArgument
from crdtcoord.engine import EngineConfig, expiring_key, key_expiry
from crdtcoord.host import MemoryStorage
from crdtcoord.sim import LinkConfig, NetworkConfig, Simulation


def test_names_carry_their_expiry() -> None:
    k = expiring_key("rl/api/7", 12_345)
    assert k == "~12345~rl/api/7" and key_expiry(k) == 12_345
    assert key_expiry("plain") is None and key_expiry("~abc~x") is None
    with pytest.raises(InvalidArgument):
        expiring_key("x", -1)


def test_an_expired_key_is_deleted_everywhere_and_not_revived() -> None:
    sim = Simulation(["a", "b", "c"], seed=3, network=NetworkConfig(LinkConfig(loss=0.2)))
    sim.run_for(0.5)
    k = expiring_key("window", 5_000)  # (the simulator's clock: ms since its start)
    for n in ("a", "b", "c"):
        sim.update(n, k, GCounter, GCounter.Increment(1))
    sim.update("a", "keep", GCounter, GCounter.Increment(1))
    sim.run_for(2.0)
    assert all(sim.value(n, k) == 3 for n in ("a", "b", "c"))
    sim.set_skew("c", 0.3)  # c's clock runs ahead: it deletes first, the others then
    sim.run_for(4.0)
    assert all(sim.value(n, k) is None for n in ("a", "b", "c"))
    assert sim.quiesce(timeout=20)
    with pytest.raises(InvalidArgument, match="expired"):
        sim.update("a", k, GCounter, GCounter.Increment(1))
    sim.crash("b")
    sim.restart("b")  # the deletion was persisted: it does not come back from storage
    sim.run_for(2.0)
    assert sim.value("b", k) is None and sim.value("b", "keep") == 1
    assert sim.quiesce(timeout=20)


def test_memory_storage_forgets_a_deleted_key() -> None:
    from crdtcoord.engine import Persist

    s = MemoryStorage()
    s.create("a", 1)
    c = GCounter()
    c.increment("a/1", 2)
    s.write([Persist("~9~k", c)])
    s.write([Persist("~9~k", c, delete=True)])
    snap = s.open("a")
    assert snap is not None and "~9~k" not in snap.states


def test_sqlite_storage_forgets_a_deleted_key(tmp_path: object) -> None:
    from pathlib import Path

    from crdtcoord.engine import Persist
    from crdtcoord.storage import SqliteStorage

    path = Path(str(tmp_path)) / "n.db"
    s = SqliteStorage(path)
    s.create("a", 1)
    c = GCounter()
    c.increment("a/1", 2)
    s.write([Persist("~9~k", c), Persist("other", c)])
    s.write([Persist("~9~k", c), Persist("~9~k", c, delete=True)])
    s.close()
    s2 = SqliteStorage(path)
    snap = s2.open("a")
    s2.close()
    assert snap is not None and set(snap.states) == {"other"}


def test_config_is_untouched() -> None:
    assert EngineConfig().ae_interval > 0
