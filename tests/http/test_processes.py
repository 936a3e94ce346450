"""Real ``crdtcoord serve`` processes on loopback (started and stopped by each test, bounded in
time): five nodes converge under concurrent load; kill -9 mid-load loses nothing acknowledged at
majority; a SIGSTOPped node is suspected, then catches up; the CLI end to end with its errors."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtcoord_http import Client, ClientError
from crdtcoord_http.demo import Cluster, Proc

SECRET = "processes-secret-0123456789abcdef"
TOKEN = "processes-token-0123456789"
CLI = [sys.executable, "-m", "crdtcoord"]

pytestmark = pytest.mark.slow


@pytest.fixture
def secured(tmp_path: Path) -> list[str]:
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "tokens").write_text(f"tests:{TOKEN}\n")
    return ["--secret-file", str(tmp_path / "secret"), "--token-file", str(tmp_path / "tokens")]


@pytest.fixture
def cluster_of(tmp_path: Path, secured: list[str]) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(n: int, *extra: str) -> Cluster:
        c = Cluster(n, tmp_path / f"c{len(made)}", [*secured, *extra])
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        c.stop()


def client(p: Proc) -> Client:
    return Client(p.url, TOKEN, timeout=5.0)


def wait(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except ClientError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s")
        time.sleep(0.1)


def values(c: Cluster, key: str) -> list[Any]:
    out = []
    for p in c.procs:
        try:
            out.append(client(p).get(key)["value"])
        except ClientError as e:
            out.append(f"error {e.code}")
    return out


class Load:
    """Client threads, one per node, incrementing ``key`` until stopped."""

    def __init__(self, procs: list[Proc], key: str, consistency: str | None) -> None:
        self.acked = 0
        self.indefinite = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(p, key, consistency), daemon=True)
            for p in procs
        ]
        for t in self.threads:
            t.start()

    def _run(self, p: Proc, key: str, consistency: str | None) -> None:
        c = client(p)
        rng = random.Random(p.port)
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                c.op(key, "inc", n=1, consistency=consistency, op_id=f"{p.node}-{i}", timeout=3)
                with self.lock:
                    self.acked += 1
            except ClientError as e:
                with self.lock:
                    if not (e.status == 0 and "refused" in e.detail.lower()):
                        self.indefinite += 1
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.003))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)


def test_five_nodes_converge_under_concurrent_updates(
    cluster_of: Callable[..., Cluster],
) -> None:
    c = cluster_of(5)
    wait(lambda: all(len(client(p).status()["peers"]) == 4 for p in c.procs), what="peering")
    load = Load(c.procs, "hits", None)
    sets = [client(p) for p in c.procs]
    for i, s in enumerate(sets):
        s.op("members", "add", element=f"n{i + 1}", consistency="majority")
    time.sleep(3)
    load.finish()
    assert load.acked > 200 and load.indefinite == 0
    wait(lambda: values(c, "hits") == [load.acked] * 5, what=f"hits == {load.acked} on all")
    assert values(c, "members") == [[f"n{i}" for i in range(1, 6)]] * 5
    st = client(c.procs[0]).status()
    assert st["sync"]["rejected"] == 0 and st["transport"]["refused"] == {}


def test_kill_9_mid_load_loses_nothing_acknowledged_at_majority(
    cluster_of: Callable[..., Cluster],
) -> None:
    c = cluster_of(3)
    victim = c.procs[2]
    incarnation = client(victim).status()["incarnation"]
    load = Load(c.procs, "hits", "majority")
    time.sleep(2)
    victim.kill9()
    time.sleep(1.5)
    victim.start(c.extra)
    c.wait_ready(victim)
    time.sleep(1.5)
    load.finish()
    acked, indefinite = load.acked, load.indefinite
    assert acked > 100
    wait(lambda: len(set(values(c, "hits"))) == 1, what="convergence")
    final = values(c, "hits")[0]
    assert acked <= final <= acked + indefinite, (acked, indefinite, final)
    # it came back with its data dir: the same incarnation (a node that lost its data would
    # come back as a new one), recorded as not shut down cleanly, so it probed its peers
    assert client(victim).status()["incarnation"] == incarnation
    assert victim.log is not None and victim.log.read_text().count("listening on") == 2


def test_a_stopped_node_is_suspected_then_catches_up(cluster_of: Callable[..., Cluster]) -> None:
    c = cluster_of(3, "--failure-timeout", "1")
    a, sleeper = c.procs[0], c.procs[2]
    wait(lambda: all(len(client(p).status()["peers"]) == 2 for p in c.procs), what="peering")
    assert sleeper.proc is not None
    os.kill(sleeper.proc.pid, signal.SIGSTOP)
    try:
        client(a).op("cfg", "set", value="while-asleep")
        client(a).op("n", "inc", n=7)

        def suspected() -> bool:
            peers = {x["node"]: x for x in client(a).status()["peers"]}
            return bool(peers[sleeper.node]["suspected"])

        wait(suspected, timeout=15, what="suspicion")
    finally:
        os.kill(sleeper.proc.pid, signal.SIGCONT)
    wait(lambda: values(c, "cfg") == ["while-asleep"] * 3 and values(c, "n") == [7] * 3)
    wait(lambda: not any(x["suspected"] for x in client(a).status()["peers"]), what="cleared")


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRDTCOORD_TOKEN": TOKEN}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_the_cli_end_to_end(cluster_of: Callable[..., Cluster], tmp_path: Path) -> None:
    c = cluster_of(2)
    n1, n2 = (p.url for p in c.procs)
    r = cli("inc", "jobs", "5", "--node", n1, "--consistency", "majority", "--op-id", "j1")
    assert (r.returncode, r.stdout.strip()) == (0, "5"), r.stderr
    r = cli("inc", "jobs", "5", "--node", n1, "--op-id", "j1")  # a retry: applied once
    assert r.stdout.strip() == "5"
    assert cli("dec", "jobs", "--node", n1).stdout.strip() == "4"
    assert cli("add", "team", "ann", "--node", n1).stdout.strip() == '["ann"]'
    assert cli("add", "team", "bob", "--node", n2).returncode == 0
    assert cli("set", "cfg", '{"level": 3}', "--node", n2).stdout.strip() == '{"level": 3}'
    wait(lambda: cli("get", "team", "--node", n2).stdout.strip() == '["ann", "bob"]')
    assert cli("remove", "team", "ann", "--node", n2).stdout.strip() == '["bob"]'
    r = cli("get", "jobs", "--node", n2, "--consistency", "majority")
    assert r.stdout.strip() == "4"
    r = cli("add", "jobs", "x", "--node", n1)
    assert r.returncode == 1 and "wrong_type" in r.stderr and "PNCounter" in r.stderr
    r = cli("get", "nope", "--node", n1)
    assert r.returncode == 1 and "no_such_key" in r.stderr
    r = cli("status", "--node", n1)
    assert r.returncode == 0 and "PEER" in r.stdout and "n2" in r.stdout, r.stdout
    assert "compactions 0" in r.stdout and "checkpoints" in r.stdout, r.stdout
    # watch: the feed from the start of this process's cursors, then stop it
    w = subprocess.Popen(
        [*CLI, "watch", "team", "--node", n1, "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "CRDTCOORD_TOKEN": TOKEN},
    )
    try:
        time.sleep(1.0)
        cli("add", "team", "cy", "--node", n2)
        assert w.stdout is not None
        line = w.stdout.readline()
        assert '"key": "team"' in line and "cy" in line, line
    finally:
        w.terminate()
        w.wait(10)
        if w.stdout is not None:
            w.stdout.close()
    # errors: unreachable node, bad flags, missing token, taken port
    r = cli("get", "jobs", "--node", "http://127.0.0.1:9")
    assert r.returncode == 1 and "cannot reach http://127.0.0.1:9" in r.stderr
    r = cli("inc", "jobs", "many", "--node", n1)
    assert r.returncode == 2 and "invalid int value" in r.stderr
    r = subprocess.run(
        [*CLI, "get", "jobs", "--node", n1], capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "CRDTCOORD_TOKEN"},
    )  # fmt: skip
    assert r.returncode == 1 and "no_token" in r.stderr
    port = c.procs[0].port
    r = cli(
        "serve", "--id", "x", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "port is taken" in r.stderr, r.stderr
    r = cli("serve", "--id", "x", "--listen", "0.0.0.0:0")
    assert r.returncode == 2 and "protected mode" in r.stderr


def test_sigterm_is_a_graceful_leave(cluster_of: Callable[..., Cluster]) -> None:
    c = cluster_of(3)
    wait(lambda: all(len(client(p).status()["peers"]) == 2 for p in c.procs), what="peering")
    leaver = c.procs[2]
    client(leaver).op("k", "inc", n=3)
    assert leaver.stop() == 0
    assert leaver.log is not None and "stopped (clean)" in leaver.log.read_text()
    st = client(c.procs[0]).status()
    assert st["members"] == 2
    assert values(c, "k")[:2] == [3, 3]
    # a majority write among the two that remain does not wait for the one that left
    r = client(c.procs[0]).op("k", "inc", n=1, consistency="all", timeout=3)
    assert r["value"] == 4
