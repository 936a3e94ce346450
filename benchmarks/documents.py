"""Document sync benchmark: one Yjs document shared by 3 pycrdt clients, through 3 crdtcoord nodes
replicating peer to peer over HTTP, next to a ``pycrdt-websocket`` hub, in one run.

**Baseline** (``benchmarks/_yhub.py``): one hub process (``pycrdt.websocket.WebsocketServer``
behind aiohttp on 127.0.0.1); the writer and both receivers connect to it.

**crdtcoord**: 3 ``crdtcoord serve`` processes on 127.0.0.1 (``--data-dir`` in a temp dir, so
SQLite with the default ``--durability process``; no secret: protected mode, loopback only;
default ``EngineConfig``: deltas batched ``delta_delay`` = 5 ms, anti-entropy every 1 s +-10%),
each with ``--peer`` URLs of the other two; no hub. Each node serves the document over
y-protocols at ``ws://127.0.0.1:PORT/v1/yjs/bench-room``. The writer connects to node 1, the
receivers to nodes 2 and 3: an edit goes writer -> node 1 -> (peer HTTP delta) -> nodes 2 and 3
-> receivers. A node never sends an update back to the session it came from.

**Clients** are the same code for both systems (``_yhub._client``: a ``pycrdt.Doc`` joined with
``pycrdt.Provider`` over aiohttp ``ws_connect``, one process each). **Workload**: edit ``i``
sets ``doc.get("edits", type=Map)[f"e{i}"] = i`` in its own transaction (a 29-33 byte update);
latency = a receiver's ``time.monotonic_ns()`` in its ``Map.observe`` callback - the writer's
right after the commit, over every (edit, receiver) pair. pycrdt's ``Provider`` sends every
update it gets back to its server (the receivers' echoes): both systems get and absorb them.

Phases, both systems' processes up for the whole run (the idle one costs little: its CPU is
printed):

1. warm-up at ``rate`` edits/s, each system (discarded);
2. **latency** at ``rate`` = 100 edits/s, paced on an absolute schedule, in blocks alternated
   hub, crdtcoord, hub, crdtcoord (the blocks of a system pooled). Per block, counters are read
   before the writer starts and after both receivers have every edit + 0.3 s: **CPU per edit**
   (hub: its process CPU time, ``time.process_time_ns``; crdtcoord: each node's utime + stime
   from ``/proc/PID/stat``, 10 ms ticks: the max of the three and their sum) and **bytes per
   edit** (below);
3. **saturation**: the writer flat out for ``sustained_seconds`` with at most 64 edits
   unacknowledged (hub: until the hub's broadcast of an edit comes back to the writer, as
   ``_yhub`` does; crdtcoord never echoes to the sender, so an edit counts as acknowledged once
   both receivers reported it over a UDP side channel on loopback: end to end);
4. **sustained**: ``_yhub.sustained_ramp`` for each (paced runs from the saturated rate, up or
   down by 10%; a run passes when every edit arrives and the last quarter's median latency is
   at most 20 ms).

**Bytes per edit.** Hub: WebSocket message payloads in + out at the hub (the 3 connections),
and with RFC 6455 frame headers. crdtcoord: the same WebSocket count, taken at the 3 clients
(each client counts what it sends and gets, which is what its node gets and sends), plus the
peer HTTP traffic between the nodes: engine message bytes (``/v1/status`` ``sync.bytes_sent``
summed over the nodes: every message, including ACKs and anti-entropy that ride back in HTTP
responses), and the TCP payload of the nodes' peer connections (``ss -ti`` ``bytes_sent`` +
``bytes_received`` of each node's outgoing connections to the other nodes: request and status
lines, headers, bodies; TCP/IP headers not counted). The wire total of crdtcoord is WebSocket
frames + peer TCP payload.

Targets (this run, full size): crdtcoord's propagation p99 no worse than the hub's; the largest
per-node CPU per edit no more than the hub's CPU per edit, both at 100 edits/s.

Every process runs on this machine: 3 nodes + 3 clients on the crdtcoord side share its CPUs
(2 on the usual runner), so the crdtcoord numbers include that contention (the run-queue wait
share is in the JSON details; the load average is printed at the start and the end). The
sustained rule's 20 ms bound is absolute: a system whose latency is above it at any rate fails
every run even when it keeps up (the growth of each run is printed next to it).

``--quick``: blocks of 1.5 s, runs of 1.5 s, ramp steps of 25% (about 30 s in all); full size:
blocks of 10 s, runs of 5 s, steps of 10% (about 2 minutes). ``--json FILE`` writes the harness
object plus ``details`` (per-node counters, every paced run, CPU of every process).
Diagnostic: ``DOCS_BENCH_PROFILE=DIR`` runs each node under cProfile (CPU time), written to
``DIR/<node>.prof`` when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

# benchmarks/http.py would shadow the standard library's http package (urllib needs it): this
# directory is on sys.path only while the harness and the hub baseline are imported.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, _HERE)
import _yhub  # noqa: E402
from _harness import Bench, Result, cli  # noqa: E402

sys.path.remove(_HERE)

import urllib.request  # noqa: E402

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
DOC = "bench-room"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NODES = ("n1", "n2", "n3")
# the child ends when this process does, even on kill -9 (PR_SET_PDEATHSIG)
_PDEATHSIG = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM);"
    " os.getppid() == int(sys.argv[1]) or sys.exit(1); os.execv(sys.argv[2], sys.argv[2:])"
)

# ``DOCS_BENCH_PROFILE=DIR``: each node runs under cProfile, CPU time (not wall time: a node
# mostly waits), written to DIR/<node>.prof when it stops
_PROFILE = (
    "import cProfile, runpy, sys, time; out = sys.argv[1]; sys.argv = sys.argv[2:];"
    " p = cProfile.Profile(time.process_time)\n"
    "try: p.runcall(runpy.run_module, 'crdtcoord', run_name='__main__', alter_sys=True)\n"
    "except SystemExit: pass\n"
    "finally: p.dump_stats(out)"
)


def log(msg: str) -> None:
    print(f"documents: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    from crdtcoord.testing.servers import free_port as fp

    return fp()


def proc_cpu_ns(pid: int) -> int:
    """utime + stime of a process (all its threads, exited ones too), ns; 10 ms ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK


# ====================================================================== the crdtcoord cluster


class Cluster:
    """Three ``crdtcoord serve`` processes peered with each other on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = [free_port() for _ in NODES]
        self.procs: list[subprocess.Popen[str]] = []
        self.tails: dict[str, deque[str]] = {n: deque(maxlen=20) for n in NODES}
        for i, name in enumerate(NODES):
            data = root / name
            data.mkdir(parents=True)
            peers = [f"http://{HOST}:{p}" for j, p in enumerate(self.ports) if j != i]
            prof = os.environ.get("DOCS_BENCH_PROFILE")  # (a diagnostic: cProfile each node)
            cmd = [
                sys.executable,
                *(("-c", _PROFILE, os.path.join(prof, f"{name}.prof")) if prof else ("-m",)),
                *("crdtcoord", "serve", "--id", name),
                *("--listen", f"{HOST}:{self.ports[i]}", "--data-dir", str(data)),
                *(a for p in peers for a in ("--peer", p)),
                *("--log-level", "warning"),
            ]
            p = subprocess.Popen(
                [sys.executable, "-S", "-c", _PDEATHSIG, str(os.getpid()), *cmd],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                start_new_session=True,  # a Ctrl-C reaches us only; we stop the nodes
            )
            self.procs.append(p)
            threading.Thread(target=self._pump, args=(name, p), daemon=True).start()

    def _pump(self, name: str, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            self.tails[name].append(line.rstrip())
            if "listening on" not in line:  # (the start-up line is noise)
                sys.stderr.write(f"[{name}] {line}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def url(self, i: int) -> str:
        return f"ws://{HOST}:{self.ports[i]}/v1/yjs/{DOC}"

    def status(self, i: int, timeout: float = 5.0) -> dict[str, Any]:
        url = f"http://{HOST}:{self.ports[i]}/v1/status"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out

    def check_alive(self) -> None:
        for name, p in zip(NODES, self.procs, strict=True):
            if p.poll() is not None:
                tail = "\n  ".join(self.tails[name])
                raise RuntimeError(f"node {name} exited with status {p.returncode}:\n  {tail}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every node up and knowing both others, none suspected."""
        deadline = time.monotonic() + timeout
        for i in range(len(NODES)):
            while True:
                self.check_alive()
                try:
                    peers = self.status(i, 1.0)["peers"]
                    if len(peers) == 2 and not any(p["suspected"] for p in peers):
                        break
                except (OSError, ValueError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {NODES[i]} not peered within {timeout:.0f} s")
                time.sleep(0.05)

    def cpu(self) -> list[int]:
        return [proc_cpu_ns(pid) for pid in self.pids]

    def cpu_fine(self) -> list[int]:
        """CPU ns of each node from ``/proc/PID/task/*/schedstat`` (ns, live threads only: a
        node runs one), for windows too short for 10 ms ticks."""
        return [_yhub._schedstat(pid)[0] for pid in self.pids]

    def snap(self) -> dict[str, Any]:
        """Each node's CPU (read first: the status request itself counts in the next window,
        once per phase), counters from ``/v1/status``, and the peer TCP byte counts."""
        cpu = self.cpu()
        nodes = []
        for i in range(len(NODES)):
            s = self.status(i)
            sync, tr = s["sync"], s["transport"]
            nodes.append(
                {
                    "cpu_ns": cpu[i],
                    "engine_bytes_sent": sync["bytes_sent"],
                    "deltas_sent": sync["sent_DELTA"],
                    "retransmits": sync["retransmits"],
                    "ae_rounds": sync["ae_rounds"],
                    "repairs_scheduled": sync["repairs_scheduled"],
                    "http_requests": tr["sent"],
                    "http_request_body_bytes": tr["sent_bytes"],
                    "http_replies_sent": tr["replies_sent"],
                    "http_send_errors": tr["send_errors"],
                    "http_dropped": sum(tr["dropped"].values()),
                    "http_refused": sum(tr["refused"].values()),
                    "storage_writes": s["storage"].get("writes", 0),
                }
            )
        return {"nodes": nodes, "tcp": peer_tcp(set(self.pids), set(self.ports))}

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.terminate()  # (graceful: pending deltas acknowledged, LEAVE sent)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


_SS_HEAD = re.compile(r"(\S+):(\d+)\s+(\S+):(\d+)\s+users:\(\((.*)\)\)")


def peer_tcp(pids: set[int], ports: set[int]) -> dict[str, tuple[int, int]] | None:
    """``{"local->remote": (bytes_sent, bytes_received)}`` of every established TCP connection
    a node (``pids``) opened to a node port (``ports``): the peer HTTP client side, so each peer
    request and its response counted once. None without ``ss``."""
    if shutil.which("ss") is None:
        return None
    try:
        out = subprocess.run(
            ["ss", "-tinpH", "state", "established"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    conns: dict[str, tuple[int, int]] = {}
    cur: str | None = None
    for line in out.splitlines():
        if line[:1].strip():  # a connection's first line (its details follow, indented)
            cur = None
            m = _SS_HEAD.search(line)
            if (
                m
                and int(m[4]) in ports
                and int(m[2]) not in ports
                and {int(x) for x in re.findall(r"pid=(\d+)", m[5])} & pids
            ):
                cur = f"{m[1]}:{m[2]}->{m[3]}:{m[4]}"
        elif cur is not None:
            sent = re.search(r"\bbytes_sent:(\d+)", line)
            got = re.search(r"\bbytes_received:(\d+)", line)
            conns[cur] = (int(sent[1]) if sent else 0, int(got[1]) if got else 0)
            cur = None
    return conns


def tcp_delta(
    a: dict[str, tuple[int, int]] | None, b: dict[str, tuple[int, int]] | None
) -> dict[str, int] | None:
    """Bytes of the peer connections between two snapshots (a connection opened since counts
    from 0; one closed since is counted as ``closed``: its last bytes are lost)."""
    if a is None or b is None:
        return None
    sent = got = 0
    for k, (s, g) in b.items():
        s0, g0 = a.get(k, (0, 0))
        sent, got = sent + s - s0, got + g - g0
    return {
        "sent": sent,
        "received": got,
        "opened": len(b.keys() - a.keys()),
        "closed": len(a.keys() - b.keys()),
    }


def nodes_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": [{k: y[k] - x[k] for k in x} for x, y in zip(a["nodes"], b["nodes"], strict=True)],
        "tcp": tcp_delta(a["tcp"], b["tcp"]),
    }


# ====================================================================== runs


def client_counts(clients: list[_yhub._Child]) -> list[dict[str, int]]:
    return [c.call(10, cmd="counts") for c in clients]


def sum_counts(a: list[dict[str, int]], b: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x, y in zip(a, b, strict=True):
        for k in x:
            out[k] = out.get(k, 0) + y[k] - x[k]
    return out


class CoordRun:
    """The crdtcoord side of ``_yhub._Run``: one writer run and its counters."""

    def __init__(
        self, cluster: Cluster, writer: _yhub._Child, readers: list[_yhub._Child], ack_port: int
    ) -> None:
        self.cluster, self.writer, self.readers, self.ack_port = cluster, writer, readers, ack_port
        self.roles = {"writer": writer} | {f"receiver{k}": r for k, r in enumerate(readers, 1)}

    def _sched(self) -> dict[str, tuple[int, int]]:
        pids = {k: c.proc.pid for k, c in self.roles.items()}
        pids |= dict(zip(NODES, self.cluster.pids, strict=True))
        return {k: _yhub._schedstat(pid) for k, pid in pids.items()}

    def phase(
        self, rate: float, duration: float, window: int = 0, drain: float = 10.0
    ) -> dict[str, Any]:
        a = self.cluster.snap()
        if window:
            for r in self.readers:
                r.call(10, cmd="acks", port=self.ack_port)
        s0, t0 = self._sched(), time.monotonic_ns()
        w = self.writer.call(
            duration + 30,
            cmd="write",
            rate=rate,
            duration=duration,
            window=window,
            acks="receivers",
            receivers=len(self.readers),
        )
        s1, t1 = self._sched(), time.monotonic_ns()
        if window:
            for r in self.readers:
                r.call(10, cmd="acks", port=0)
        mid = self.cluster.snap()
        first, times = w["first"], w["times"]
        last = first + len(times) - 1
        delivered = all(
            r.call(drain + 10, cmd="wait", upto=last, timeout=drain)["ok"] for r in self.readers
        )
        time.sleep(_yhub._SETTLE_S)  # the receivers' echoes reach their nodes
        b = self.cluster.snap()
        self.cluster.check_alive()
        arrivals = _yhub.collect_arrivals(self.readers)
        return {
            "first": first,
            "times": times,
            "arrivals": arrivals,
            "delivered": delivered,
            "nodes": nodes_delta(a, b),
            "nodes_writing": nodes_delta(a, mid),
            "sched": {k: (s1[k][0] - s0[k][0], s1[k][1] - s0[k][1]) for k in s0},
            "sched_wall_ns": t1 - t0,
        }


class System:
    """One side of the comparison: its run (``phase``), its clients, and what it pools."""

    def __init__(self, name: str, run: Any, clients: list[_yhub._Child]) -> None:
        self.name = name
        self.run = run
        self.clients = clients
        self.blocks: list[dict[str, Any]] = []

    def phase(self, rate: float, duration: float, **kw: Any) -> dict[str, Any]:
        c0 = client_counts(self.clients)
        p: dict[str, Any] = self.run.phase(rate, duration, **kw)
        p["ws"] = sum_counts(c0, client_counts(self.clients))
        return p


def pooled_latency(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency over the blocks of one system (their ids are consecutive)."""
    times = [t for p in blocks for t in p["times"]]
    arrivals: list[dict[int, int]] = [{}, {}]
    for p in blocks:
        for k, got in enumerate(p["arrivals"]):
            arrivals[k].update(got)
    return _yhub.latency_summary(blocks[0]["first"], times, arrivals)


def add_dicts(ds: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def coord_totals(blocks: list[dict[str, Any]], key: str = "nodes") -> dict[str, Any]:
    """Per-node counters summed over blocks, and the peer TCP bytes."""
    per_node = [add_dicts([p[key]["nodes"][i] for p in blocks]) for i in range(len(NODES))]
    tcps = [p[key]["tcp"] for p in blocks]
    tcp = None if any(t is None for t in tcps) else add_dicts(tcps)
    return {"per_node": per_node, "tcp": tcp}


def cpu_context(blocks: list[dict[str, Any]], edits: int) -> dict[str, Any]:
    """While the writer ran: CPU µs per edit of every process, the machine's CPU share and the
    run-queue wait share (time runnable but waiting for a CPU / wall time, summed)."""
    wall = max(1, sum(p["sched_wall_ns"] for p in blocks))
    run: dict[str, int] = {}
    wait: dict[str, int] = {}
    for p in blocks:
        for k, (r, w) in p["sched"].items():
            run[k] = run.get(k, 0) + r
            wait[k] = wait.get(k, 0) + w
    return {
        "cpu_us_per_edit_by_process": {k: v / max(1, edits) / 1000 for k, v in run.items()},
        "machine_cpu_share": sum(run.values()) / wall / (os.cpu_count() or 1),
        "runqueue_wait_share": sum(wait.values()) / wall,
    }


def summarize_hub(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    edits = sum(len(p["times"]) for p in blocks)
    hub = add_dicts([p["hub"] for p in blocks])
    ws = add_dicts([p["ws"] for p in blocks])
    e = max(1, edits)
    return {
        "edits": edits,
        "latency": pooled_latency(blocks),
        "cpu_us_per_edit": hub["cpu_ns"] / e / 1000,
        "ws_payload_bytes_per_edit": (hub["bytes_in"] + hub["bytes_out"]) / e,
        "ws_wire_bytes_per_edit": (hub["frames_in"] + hub["frames_out"]) / e,
        "client_ws_payload_bytes_per_edit": (ws["bytes_in"] + ws["bytes_out"]) / e,
        "client_ws_wire_bytes_per_edit": (ws["frames_in"] + ws["frames_out"]) / e,
        "hub_msgs_per_edit": (hub["msgs_in"] + hub["msgs_out"]) / e,
        "elapsed_ns": sum(p["elapsed_ns"] for p in blocks),
        **cpu_context(blocks, edits),
    }


def summarize_coord(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    edits = sum(len(p["times"]) for p in blocks)
    e = max(1, edits)
    tot = coord_totals(blocks)
    nodes = tot["per_node"]
    ws = add_dicts([p["ws"] for p in blocks])
    cpu = [n["cpu_ns"] / e / 1000 for n in nodes]
    all_nodes = add_dicts(nodes)
    tcp = tot["tcp"]
    ws_wire = (ws["frames_in"] + ws["frames_out"]) / e
    out: dict[str, Any] = {
        "edits": edits,
        "latency": pooled_latency(blocks),
        "cpu_us_per_edit_by_node": dict(zip(NODES, cpu, strict=True)),
        "cpu_us_per_edit_max_node": max(cpu),
        "cpu_us_per_edit_sum_nodes": sum(cpu),
        "ws_payload_bytes_per_edit": (ws["bytes_in"] + ws["bytes_out"]) / e,
        "ws_wire_bytes_per_edit": ws_wire,
        "ws_msgs_per_edit": (ws["msgs_in"] + ws["msgs_out"]) / e,
        "peer_engine_bytes_per_edit": all_nodes["engine_bytes_sent"] / e,
        "peer_request_body_bytes_per_edit": all_nodes["http_request_body_bytes"] / e,
        "peer_http_requests_per_edit": all_nodes["http_requests"] / e,
        "peer_deltas_per_edit": all_nodes["deltas_sent"] / e,
        "storage_writes_per_edit": all_nodes["storage_writes"] / e,
        "counters": all_nodes,
        "per_node": dict(zip(NODES, nodes, strict=True)),
        "elapsed_ns": sum(p["elapsed_ns"] for p in blocks),
        **cpu_context(blocks, edits),
    }
    if tcp is not None:
        peer = (tcp["sent"] + tcp["received"]) / e
        out |= {
            "peer_http_overhead_bytes_per_request": (
                tcp["sent"] + tcp["received"] - all_nodes["engine_bytes_sent"]
            )
            / max(1, all_nodes["http_requests"]),
            "peer_tcp_bytes_per_edit": peer,
            "peer_tcp": tcp,
            "wire_bytes_per_edit": ws_wire + peer,
        }
    return out


def saturation(sys_: System, seconds: float, window: int) -> dict[str, Any]:
    p = sys_.phase(0, seconds, window=window)
    edits = len(p["times"])
    rates = [_yhub.delivered_rate(p["times"], a) for a in p["arrivals"]]
    lat = _yhub.latency_summary(p["first"], p["times"], p["arrivals"])
    p["elapsed_ns"] = 0
    out = {
        "edits": edits,
        "missing": lat["missing"],
        "delivered_edits_per_s": min(rates),
        "delivered_per_receiver_edits_per_s": rates,
        "latency_p50_ms": lat.get("p50_ms"),
    }
    if "hub" in p:
        w = p["hub_writing"]
        out |= {
            "cpu_us_per_edit": p["hub"]["cpu_ns"] / max(1, edits) / 1000,
            "hub_cpu_share": w["cpu_ns"] / max(1, w["wall_ns"]),
        }
    else:
        s = summarize_coord([p])
        out |= {
            k: s[k]
            for k in (
                "cpu_us_per_edit_by_node",
                "cpu_us_per_edit_max_node",
                "cpu_us_per_edit_sum_nodes",
                "peer_deltas_per_edit",
                "peer_http_requests_per_edit",
            )
        }
        wall = max(1, p["sched_wall_ns"])
        out["node_cpu_share"] = {n: p["sched"][n][0] / wall for n in NODES}
    out |= cpu_context([p], edits)
    return out


# ====================================================================== the benchmark


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(b: Bench, res: dict[str, Any], rate: float) -> None:
    hub, crd = res["hub"]["latency"], res["crdtcoord"]["latency"]
    hl, cl = hub["latency"], crd["latency"]
    b.section(
        f"propagation latency at {rate:g} edits/s, writer -> each receiver, ms"
        f" ({len(res['blocks']) // 2} blocks per system, alternated)"
    )
    for name, lat, role in (("hub", hl, "baseline"), ("crdtcoord", cl, None)):
        b.add(
            Result(
                f"{name} latency p50",
                lat["p50_ms"],
                "ms",
                p50=lat["p50_ms"],
                p99=lat["p99_ms"],
                samples=lat["samples"],
                role=role,
                note=f"max {lat['max_ms']:.1f} ms, {lat['missing']} missing",
            )
        )
    r99 = cl["p99_ms"] / hl["p99_ms"]
    b.add(
        Result(
            "crdtcoord / hub latency p99",
            r99,
            "x",
            role="ratio",
            note=f"target <= 1x, every edit delivered ({cl['p99_ms']:.2f} ms vs"
            f" {hl['p99_ms']:.2f} ms, {r99:.1f}x: {verdict(r99 <= 1.0 and not cl['missing'])})",
        )
    )
    b.add(Result("crdtcoord / hub latency p50", cl["p50_ms"] / hl["p50_ms"], "x", role="ratio"))

    b.section(f"CPU per edit at {rate:g} edits/s, µs (counters from before the writer to drained)")
    hcpu = hub["cpu_us_per_edit"]
    b.add(Result("hub CPU per edit", hcpu, "us", role="baseline", samples=hub["edits"]))
    by = crd["cpu_us_per_edit_by_node"]
    for n in NODES:
        what = "writer's node" if n == "n1" else "a receiver's node"
        b.add(Result(f"crdtcoord {n} CPU per edit", by[n], "us", note=what))
    mx = crd["cpu_us_per_edit_max_node"]
    r = mx / hcpu
    b.add(
        Result(
            "crdtcoord max node CPU / hub CPU per edit",
            r,
            "x",
            role="ratio",
            note=f"target <= 1x ({mx:.0f} us vs {hcpu:.0f} us, {r:.2f}x: {verdict(r <= 1.0)})",
        )
    )
    sm = crd["cpu_us_per_edit_sum_nodes"]
    b.add(Result("crdtcoord 3 nodes CPU per edit", sm, "us", note="sum of the three"))
    b.add(Result("crdtcoord 3 nodes / hub CPU per edit", sm / hcpu, "x", role="ratio"))
    idle = res["idle_node_cpu_ms_per_s"]
    b.add(
        Result(
            "crdtcoord idle node CPU",
            max(idle.values()),
            "ms/s",
            role="context",
            note="max of 3, while the hub ran: anti-entropy, failure detector ("
            + ", ".join(f"{n} {v:.1f}" for n, v in idle.items())
            + ")",
        )
    )

    b.section(f"bytes per edit at {rate:g} edits/s")
    b.add(
        Result(
            "hub WebSocket bytes per edit",
            hub["ws_wire_bytes_per_edit"],
            "B",
            role="baseline",
            note=f"frames in + out at the hub; payloads {hub['ws_payload_bytes_per_edit']:.0f} B,"
            f" {hub['hub_msgs_per_edit']:.1f} messages",
        )
    )
    b.add(
        Result(
            "crdtcoord WebSocket bytes per edit",
            crd["ws_wire_bytes_per_edit"],
            "B",
            note=f"frames at the 3 clients; payloads {crd['ws_payload_bytes_per_edit']:.0f} B,"
            f" {crd['ws_msgs_per_edit']:.1f} messages",
        )
    )
    b.add(
        Result(
            "crdtcoord peer engine bytes per edit",
            crd["peer_engine_bytes_per_edit"],
            "B",
            note=f"message bodies, all kinds; {crd['peer_deltas_per_edit']:.2f} DELTAs,"
            f" {crd['peer_http_requests_per_edit']:.2f} HTTP requests per edit",
        )
    )
    if "peer_tcp_bytes_per_edit" in crd:
        t = crd["peer_tcp"]
        b.add(
            Result(
                "crdtcoord peer HTTP bytes per edit",
                crd["peer_tcp_bytes_per_edit"],
                "B",
                note="TCP payload of the peer connections (ss): requests + responses, HTTP"
                f" lines and headers {crd['peer_http_overhead_bytes_per_request']:.0f} B per"
                f" request; {t['opened']} connections opened, {t['closed']} closed meanwhile",
            )
        )
        wire = crd["wire_bytes_per_edit"]
        b.add(Result("crdtcoord wire bytes per edit", wire, "B", note="WebSocket + peer HTTP"))
        b.add(
            Result(
                "crdtcoord / hub wire bytes per edit",
                wire / hub["ws_wire_bytes_per_edit"],
                "x",
                role="ratio",
            )
        )
    else:
        b.add(Result("crdtcoord peer HTTP bytes per edit", 0, "B", note="ss unavailable"))

    hs, cs = res["hub"]["saturation"], res["crdtcoord"]["saturation"]
    b.section(
        f"throughput, edits/s delivered to both receivers (window {res['window']},"
        f" {res['sustained_seconds']:g} s runs)"
    )
    b.add(
        Result(
            "hub saturated",
            hs["delivered_edits_per_s"],
            "edits/s",
            role="baseline",
            note=f"hub {hs['cpu_us_per_edit']:.0f} us CPU/edit, hub CPU share"
            f" {hs['hub_cpu_share']:.2f}",
        )
    )
    b.add(
        Result(
            "crdtcoord saturated",
            cs["delivered_edits_per_s"],
            "edits/s",
            note=f"node CPU/edit max {cs['cpu_us_per_edit_max_node']:.0f} us, sum"
            f" {cs['cpu_us_per_edit_sum_nodes']:.0f} us; node CPU share "
            + ", ".join(f"{n} {v:.2f}" for n, v in cs["node_cpu_share"].items()),
        )
    )
    hsus, csus = res["hub"]["sustained_edits_per_s"], res["crdtcoord"]["sustained_edits_per_s"]
    for name, v, role in (("hub", hsus, "baseline"), ("crdtcoord", csus, None)):
        checks = res[name]["sustained_checks"]
        note = ", ".join(
            f"{c['rate_edits_per_s']}: {'pass' if c['passed'] else 'fail'}"
            f" (late p50 {c['late_quarter_p50_ms']:.1f} ms, growth {c['lag_growth_ms']:+.1f} ms)"
            for c in checks
        )
        if not v:
            low = min(c["rate_edits_per_s"] for c in checks)
            late = res[name]["latency"]["latency"].get("late_p50_ms", float("nan"))
            note = (
                f"no paced run passed, down to {low} edits/s (50% of saturated); a pass needs"
                f" every edit and a last-quarter p50 <= {_yhub.LATE_P50_MAX_MS:g} ms (at"
                f" {rate:g} edits/s, the latency blocks: {late:.1f} ms); {note}"
            )
        b.add(Result(f"{name} sustained", v, "edits/s", role=role, note=note))
    b.add(Result("crdtcoord / hub sustained", csus / max(1, hsus), "x", role="ratio"))


def run(b: Bench, quick: bool) -> dict[str, Any]:
    rate = 100.0
    blocks = 2
    block_s = 1.5 if quick else 10.0
    warmup = 1.0 if quick else 2.0
    sustained_s = 1.5 if quick else 5.0
    ramp_step = 0.25 if quick else 0.1
    window = 64
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="crdtcoord-bench-docs-"))
    children: list[_yhub._Child] = []
    cluster: Cluster | None = None
    ok = False
    b.add(Result("machine load (1 min) at start", os.getloadavg()[0], "", role="context"))
    try:
        log(f"starting a pycrdt-websocket hub and 3 crdtcoord nodes (data in {root})")
        hub = _yhub._Child("hub", "_hub")
        children.append(hub)
        cluster = Cluster(root)
        hub_url = f"ws://{HOST}:{hub.read(20)['port']}{_yhub.ROOM}"
        cluster.wait_ready()
        hub_readers = [
            _yhub._Child(f"hub-receiver{k}", "_client", hub_url, "reader") for k in (1, 2)
        ]
        hub_writer = _yhub._Child("hub-writer", "_client", hub_url, "writer")
        children += [*hub_readers, hub_writer]
        c_readers = [
            _yhub._Child(f"crdtcoord-receiver{k}", "_client", cluster.url(k), "reader")
            for k in (1, 2)
        ]
        c_writer = _yhub._Child("crdtcoord-writer", "_client", cluster.url(0), "writer")
        children += [*c_readers, c_writer]
        ready = {c.name: c.read(30) for c in children[1:]}
        log(f"all up ({time.monotonic() - started:.1f} s); {os.cpu_count()} CPUs")
        systems = {
            "hub": System(
                "hub",
                _yhub._Run(hub, hub_writer, hub_readers),
                [hub_writer, *hub_readers],
            ),
            "crdtcoord": System(
                "crdtcoord",
                CoordRun(cluster, c_writer, c_readers, ready["crdtcoord-writer"]["ack_port"]),
                [c_writer, *c_readers],
            ),
        }
        hub_sys, crd_sys = systems["hub"], systems["crdtcoord"]
        for s in systems.values():
            log(f"warm-up {s.name}: {rate:g} edits/s for {warmup:g} s")
            s.phase(rate, warmup)

        idle_cpu = [0] * len(NODES)
        idle_ns = 0
        order = []
        for k in range(blocks):
            for s in (hub_sys, crd_sys):
                log(f"latency block {k + 1}/{blocks}, {s.name}: {rate:g} edits/s for {block_s:g} s")
                c0, t0 = cluster.cpu_fine(), time.monotonic_ns()
                p = s.phase(rate, block_s)
                p["elapsed_ns"] = time.monotonic_ns() - t0
                if s is hub_sys:  # the nodes idle meanwhile
                    now = cluster.cpu_fine()
                    idle_cpu = [x + y - z for x, y, z in zip(idle_cpu, now, c0, strict=True)]
                    idle_ns += p["elapsed_ns"]
                lat = _yhub.latency_summary(p["first"], p["times"], p["arrivals"])
                log(
                    f"  p50 {lat.get('p50_ms', 0):.2f} ms, p99 {lat.get('p99_ms', 0):.2f} ms,"
                    f" {lat['missing']} missing"
                )
                s.blocks.append(p)
                order.append(s.name)
        hub_lat, crd_lat = summarize_hub(hub_sys.blocks), summarize_coord(crd_sys.blocks)
        if hub_lat["latency"]["missing"] or crd_lat["latency"]["missing"]:
            log("WARNING: edits missing at a receiver (see latency_missing)")

        sat: dict[str, dict[str, Any]] = {}
        sus: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        for s in (hub_sys, crd_sys):
            log(f"saturation {s.name}: flat out, window {window}, for {sustained_s:g} s")
            sat[s.name] = saturation(s, sustained_s, window)
            log(f"  {sat[s.name]['delivered_edits_per_s']:.0f} edits/s delivered")
        for s in (hub_sys, crd_sys):
            log(f"sustained {s.name}: paced runs of {sustained_s:g} s around the saturated rate")

            def say(msg: str, name: str = s.name) -> None:
                log(f"  {name}: {msg}")

            sus[s.name] = _yhub.sustained_ramp(
                s.phase,
                sat[s.name]["delivered_edits_per_s"],
                sustained_s,
                ramp_step=ramp_step,
                log=say,
            )
        cluster.check_alive()
        idle_s = max(1, idle_ns) / 1e9
        res: dict[str, Any] = {
            "rate_edits_per_s": rate,
            "blocks": order,
            "block_seconds": block_s,
            "window": window,
            "sustained_seconds": sustained_s,
            "idle_node_cpu_ms_per_s": {
                n: c / 1e6 / idle_s for n, c in zip(NODES, idle_cpu, strict=True)
            },
            "hub": {
                "latency": hub_lat,
                "saturation": sat["hub"],
                "sustained_edits_per_s": round(sus["hub"][0]),
                "sustained_checks": sus["hub"][1],
            },
            "crdtcoord": {
                "latency": crd_lat,
                "saturation": sat["crdtcoord"],
                "sustained_edits_per_s": round(sus["crdtcoord"][0]),
                "sustained_checks": sus["crdtcoord"][1],
                "status_n1": cluster.status(0),
            },
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        }
        report(b, res, rate)
        b.add(Result("machine load (1 min) at end", os.getloadavg()[0], "", role="context"))
        ok = True
        return res
    finally:
        for c in reversed(children):  # the clients first, then the hub
            c.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        log(f"{'done' if ok else 'stopped'} after {time.monotonic() - started:.1f} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _too_long(signum: int, frame: Any) -> None:
    raise TimeoutError("the benchmark ran past its time limit")


def main() -> None:
    args, b = cli("documents", __doc__)
    signal.signal(signal.SIGTERM, _interrupt)  # (the finally blocks stop every process)
    limit = 90 if args.quick else 900
    signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(limit)
    try:
        details = run(b, args.quick)
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); every process was stopped")
        sys.exit(130)
    finally:
        signal.alarm(0)
    if args.json:
        out = b.to_json() | {"details": details}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
