"""HTTP transport benchmark: real processes replicating over loopback HTTP, next to Redis.

Every node is its own OS process; nodes talk only through ``POST /v1/messages``. All nodes run
with a cluster secret (HMAC-signed peer requests and responses, as a LAN deployment would), a
SQLite data dir (group-committed writes, as ``crdtcoord serve --data-dir``) and the default
``EngineConfig`` (5 ms delta batching, anti-entropy every 1 s +-10%). Workloads, in one run:

* **Local increment vs Redis** (first, while nothing else of ours runs): ``await counter.inc()``
  on a started ``Node`` with ``HttpTransport`` and SQLite in this process, one
  ``perf_counter_ns`` sample per call (timer overhead included; every 100 calls the loop runs,
  outside the samples, so the batching timer and its write happen as in an application),
  alternated batch by batch (2,000 local, 250 Redis) with redis-py ``INCR`` round trips to a
  ``redis-server`` started here on loopback (``--save '' --appendonly no``). Without
  ``redis-server`` on PATH the baseline is reported unavailable (an error when ``CI`` is set).
* **5 ``crdtcoord serve`` processes** (``--secret-file``, ``--token-file``, ``--data-dir``):
  idle CPU of each (``/proc/<pid>/stat`` utime+stime over 5 s, after 3 s of settling), and
  propagation as a client sees it: a JSON API ``set`` of a new register ``lat/<node>/<seq>`` to
  ``[seq, t]`` at one node (round robin, one write every 20 ms), read from every other node's
  ``/v1/watch`` server-sent events by a client thread here; sample = arrival time - ``t``.
* **5 driver nodes**: this script started as ``--driver`` (a ``Node`` + ``HttpTransport`` +
  ``SqliteStorage``, the objects ``crdtcoord serve`` builds and as it builds them — the GC's
  startup heap frozen, ``freeze_gc=True`` — plus a JSON-lines control pipe on stdin/stdout).
  Propagation: node ``i`` writes a new register ``lat/<i>/<seq>`` = ``[seq, t]``
  at ``t0 + seq * 10 ms`` for ``seq = i, i + 5, ...`` (a new key per write, so a slow arrival is
  never hidden behind a later write); each node's in-process change feed
  (``node.subscribe("lat/")``) records ``now - t`` for every remote write. Timestamps are
  ``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock for all processes of the machine). A write's
  "all nodes" latency is the latest of its 4 arrivals (p50/p99 over writes); "per peer" is each
  arrival. Then sustained load: every node loops ``await node.counter("load/<i>").inc()``
  (``asyncio.sleep(0)`` every 100) for 20 s while the propagation writes go on at the same pace;
  increments/s and CPU (``time.process_time``) per node, and the time from the last increment
  until every node holds every final count (each node polls its values every 0.5 ms).
* **Bytes on the wire**: the engine's ``bytes_sent`` (message bodies of every kind, replies that
  ride back in HTTP responses included) and every byte the drivers' asyncio sockets wrote
  (``_SelectorSocketTransport.write`` wrapped in the driver: request and status lines, headers,
  bodies; TCP/IP headers not counted). HTTP overhead per request = (socket bytes - engine bytes)
  / POSTs. The drivers' storage writes (rows, time, compactions) are printed as diagnostics.
* **Anti-entropy in sync**: 2 driver nodes; one writes 100,000 counter keys (``--quick``:
  5,000), the other receives them as deltas; once an in-sync round was seen, the engine bytes of
  ``AE_ROOT``/``AE_OK``/``AE_STEP`` and the socket bytes per round over 10 s, next to what a
  naive full-state round would ship.

``--quick`` runs 3-node clusters and short windows (targets not evaluated). The load average is
printed with each phase: these are shared 2-core machines. Diagnostics (not used by ``make``):
``HTTP_BENCH_REDIS=optional`` reports a missing Redis as unavailable even under ``CI`` (the
test suite's smoke run); ``HTTP_BENCH_STORAGE=memory`` gives the drivers a ``MemoryStorage``
(the cost of the disk), ``HTTP_BENCH_GC_FREEZE=0`` starts the drivers without ``freeze_gc``,
``HTTP_BENCH_SLOW=SECONDS`` logs the drivers' event-loop callbacks slower than that (asyncio
debug mode: slows everything), ``HTTP_BENCH_PROFILE=DIR`` writes a cProfile of each driver's
load and latency phases to ``DIR/<node>.prof`` and ``DIR/<node>.latency.prof``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# This file is named http.py: with its directory first on sys.path (as for any script), it would
# shadow the standard library's http package (urllib, aiohttp and redis-py import http.client).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, _HERE)
from _harness import Result, cli, finish, progress, stats_us  # noqa: E402

sys.path.remove(_HERE)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
INSTALL_REDIS = "apt-get install -y redis-server  (Debian/Ubuntu; `make bench` does it)"


# ====================================================================== driver (child process)

_SOCK = [0, 0]  # bytes written to sockets, write calls


def _count_socket_writes() -> None:
    """Count every byte this process's asyncio sockets write (aiohttp client and server)."""
    from asyncio import selector_events

    cls: Any = selector_events._SelectorSocketTransport
    orig_write = cls.write

    def write(self: Any, data: Any) -> None:
        _SOCK[0] += len(data)
        _SOCK[1] += 1
        orig_write(self, data)

    cls.write = write
    if "writelines" in cls.__dict__:  # (3.12+: does not go through write)
        orig_lines = cls.writelines

        def writelines(self: Any, chunks: Any) -> None:
            chunks = list(chunks)
            _SOCK[0] += sum(len(c) for c in chunks)
            _SOCK[1] += 1
            orig_lines(self, chunks)

        cls.writelines = writelines


def _out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _sleep_until(t_ns: int) -> None:
    d = (t_ns - time.monotonic_ns()) / 1e9
    if d > 0:
        await asyncio.sleep(d)


async def _cmd_latency(node: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Write ``lat/<me>/<seq>`` on this node's slots (a new register per write: a slow
    arrival is never hidden behind a later write of the same key); record every remote
    write's arrival."""
    sub = node.subscribe("lat/")
    arrivals: dict[str, int] = {}  # "writer:seq" -> ns from write to arrival here

    async def watch() -> None:
        async for ch in sub:
            now = time.monotonic_ns()
            if ch.origin is None or not isinstance(ch.value, list | tuple):
                continue
            seq, t = ch.value
            arrivals.setdefault(f"{ch.key.split('/')[1]}:{seq}", now - t)

    w = asyncio.ensure_future(watch())
    late = 0
    try:
        for k in range(p["me"], p["n"], p["nodes"]):
            at = p["t0"] + k * p["period"]
            await _sleep_until(at)
            t = time.monotonic_ns()
            late = max(late, t - at)
            await node.register(f"lat/{node.node_id}/{k}").set([k, t])
        await _sleep_until(p["t0"] + p["n"] * p["period"] + p["grace"])
    finally:
        w.cancel()
        sub.close()
    return {"arrivals": arrivals, "writer_late_ns": late}


async def _cmd_load(node: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Increment this node's load key as fast as possible for ``seconds`` from ``t0``; note
    when every load key's value first showed up here from 20 ms before the end on."""
    inc = node.counter(p["key"]).inc
    end_at = p["t0"] + int(p["seconds"] * 1e9)
    t = asyncio.ensure_future(_track(node, p["prefix"], end_at - 20_000_000, p["track"]))
    _TASKS.add(t)
    t.add_done_callback(_TASKS.discard)
    await _sleep_until(p["t0"])
    cpu0 = time.process_time()
    start = time.monotonic_ns()
    end = start + int(p["seconds"] * 1e9)
    n = 0
    while True:
        for _ in range(100):
            await inc()
        n += 100
        await asyncio.sleep(0)  # (lets the batching timer, the peers' requests and replies run)
        if time.monotonic_ns() >= end:
            break
    stop = time.monotonic_ns()
    cpu = time.process_time() - cpu0
    return {"n": n, "start": start, "end": stop, "cpu_s": cpu}


#: after a load: per key under the load prefix, when each new value was first seen here
_SEEN: dict[str, list[tuple[int, int]]] = {}
_TASKS: set[asyncio.Task[Any]] = set()
_TRACKING = [False]


async def _track(node: Any, prefix: str, begin_ns: int, seconds: float) -> None:
    """From ``begin_ns`` on, poll the load keys every 0.5 ms (for ``seconds``) and note when
    each value first showed up."""
    _TRACKING[0] = True
    try:
        await _sleep_until(begin_ns)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            now = time.monotonic_ns()
            for k in node.keys(prefix):
                v = node.value(k)
                seen = _SEEN.setdefault(k, [])
                if not seen or seen[-1][0] != v:
                    seen.append((v, now))
            await asyncio.sleep(0.0005)
    finally:
        _TRACKING[0] = False


async def _cmd_first_seen(p: dict[str, Any]) -> dict[str, Any]:
    """When this node first held every expected value (None if it never did while tracked)."""
    want: dict[str, int] = p["expected"]
    deadline = time.monotonic() + p["timeout"]
    while True:
        times = []
        for k, v in want.items():
            t = next((t for val, t in _SEEN.get(k, []) if val >= v), None)
            times.append(t)
        if all(t is not None for t in times):
            return {"ok": True, "t": max(t for t in times if t is not None)}
        if not _TRACKING[0] or time.monotonic() > deadline:
            return {"ok": False, "have": {k: (_SEEN.get(k) or [(None, 0)])[-1][0] for k in want}}
        await asyncio.sleep(0.01)


async def _cmd_await_values(node: Any, p: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + p["timeout"]
    want: dict[str, int] = p["expected"]
    while time.monotonic() < deadline:
        if all(node.value(k) == v for k, v in want.items()):
            return {"ok": True, "t": time.monotonic_ns()}
        await asyncio.sleep(0.0005)
    return {"ok": False, "t": time.monotonic_ns(), "have": {k: node.value(k) for k in want}}


async def _cmd_fill(node: Any, p: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i in range(p["n"]):
        await node.counter(f"{p['prefix']}{i:07d}").inc()
        if i % 500 == 499:
            await asyncio.sleep(0)
    node.flush()
    return {"seconds": time.perf_counter() - t0}


def _cmd_stats(node: Any) -> dict[str, Any]:
    t = node.transport
    c = t.counters
    return {
        "metrics": dict(node.engine.metrics),
        "http_sent": c.sent,
        "http_sent_bytes": c.sent_bytes,
        "http_errors": c.send_errors,
        "http_retries": c.retries,
        "queued": sum(t.status()["queues"].values()),
        "dropped": c.dropped_queue_full + c.dropped_after_retries + c.dropped_no_address,
        "refused": dict(c.refused),
        "socket_bytes": _SOCK[0],
        "socket_writes": _SOCK[1],
        "keys": len(node.keys()),
        "peers": len(node.engine.peers()),
        "backlog": node.engine.backlog(),
        "feed_lag": node.feed_lag(),
        "store_writes": _WRITES[0],
        "store_rows": _WRITES[1],
        "store_ns": _WRITES[2],
        "store_max_ns": _WRITES[3],
        "compactions": int(getattr(node.storage, "compactions", 0)),
        "gc_ns": _GC[0],
        "gc_max_ns": _GC[1],
        "gc_full": _GC[2],
    }


#: cyclic garbage collections: total and longest pause (ns), full (generation 2) collections
_GC = [0, 0, 0]
_GC_START = [0]


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _GC_START[0] = time.perf_counter_ns()
        return
    ns = time.perf_counter_ns() - _GC_START[0]
    _GC[0] += ns
    _GC[1] = max(_GC[1], ns)
    _GC[2] += info.get("generation") == 2


#: storage writes: count, persist effects written, total and longest duration (ns)
_WRITES = [0, 0, 0, 0]


def _observe_write(n: int, seconds: float) -> None:
    ns = int(seconds * 1e9)
    _WRITES[0] += 1
    _WRITES[1] += n
    _WRITES[2] += ns
    _WRITES[3] = max(_WRITES[3], ns)


def _cmd_state_bytes(node: Any, prefix: str) -> dict[str, Any]:
    from crdtcoord import encode

    keys = node.keys(prefix)
    return {
        "bytes": sum(len(encode(node.state(k))) + len(k.encode()) for k in keys),
        "n": len(keys),
    }


async def _handle(node: Any, msg: dict[str, Any]) -> None:
    cmd = msg["cmd"]
    try:
        if cmd == "latency":
            prof_dir = os.environ.get("HTTP_BENCH_PROFILE")
            if prof_dir:
                import cProfile

                pr = cProfile.Profile()
                pr.enable()
            r = await _cmd_latency(node, msg)
            if prof_dir:
                pr.disable()
                pr.dump_stats(f"{prof_dir}/{node.node_id}.latency.prof")
        elif cmd == "load":
            prof_dir = os.environ.get("HTTP_BENCH_PROFILE")
            if prof_dir:
                import cProfile

                pr = cProfile.Profile()
                pr.enable()
            r = await _cmd_load(node, msg)
            if prof_dir:
                pr.disable()
                pr.dump_stats(f"{prof_dir}/{node.node_id}.prof")
        elif cmd == "await_values":
            r = await _cmd_await_values(node, msg)
        elif cmd == "first_seen":
            r = await _cmd_first_seen(msg)
        elif cmd == "fill":
            r = await _cmd_fill(node, msg)
        elif cmd == "stats":
            r = _cmd_stats(node)
        elif cmd == "count_keys":
            r = {"n": len(node.keys(msg["prefix"]))}
        elif cmd == "state_bytes":
            r = _cmd_state_bytes(node, msg["prefix"])
        elif cmd == "inc":
            await node.counter(msg["key"]).inc()
            r = {}
        else:
            r = {"error": f"unknown command {cmd!r}"}
    except Exception as e:  # reported to the orchestrator, which fails the phase
        r = {"error": f"{type(e).__name__}: {e}"}
    _out({"id": msg["id"], **r})


async def _driver(cfg: dict[str, Any]) -> None:
    from crdtcoord.runtime import Node
    from crdtcoord.storage import SqliteStorage
    from crdtcoord_http.auth import load_secret
    from crdtcoord_http.transport import HttpTransport

    _count_socket_writes()
    import gc

    gc.callbacks.append(_gc_callback)
    transport = HttpTransport(
        f"{HOST}:{cfg['port']}", cfg["peers"], secret=load_secret(cfg["secret_file"])
    )
    Path(cfg["data"]).mkdir(parents=True, exist_ok=True)
    storage: Any = SqliteStorage(Path(cfg["data"]) / "node.db")
    if os.environ.get("HTTP_BENCH_STORAGE") == "memory":  # (diagnostic: the cost of the disk)
        from crdtcoord.host import MemoryStorage

        storage = MemoryStorage()
    # (set up as `crdtcoord serve` sets up its node: the GC's startup heap frozen)
    freeze = os.environ.get("HTTP_BENCH_GC_FREEZE", "1") != "0"
    node = Node(cfg["id"], transport=transport, storage=storage, freeze_gc=freeze)
    node.write_observers.append(_observe_write)
    await node.start()
    if os.environ.get("HTTP_BENCH_SLOW"):
        import logging

        logging.basicConfig(level=logging.WARNING)
        lp = asyncio.get_running_loop()
        lp.set_debug(True)
        lp.slow_callback_duration = float(os.environ["HTTP_BENCH_SLOW"])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _out({"ready": transport.url, "pid": os.getpid()})
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            line = await reader.readline()
            if not line:
                break  # the orchestrator is gone
            msg = json.loads(line)
            if msg["cmd"] == "quit":
                break
            t = asyncio.ensure_future(_handle(node, msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    finally:
        for t in tasks:
            t.cancel()
        await node.close(drain=0.5)


def driver_main(cfg_json: str) -> int:
    asyncio.run(_driver(json.loads(cfg_json)))
    return 0


# ====================================================================== orchestrator helpers


#: Runs a command with PR_SET_PDEATHSIG set (SIGTERM when this benchmark dies, even by SIGKILL),
#: without a preexec_fn (not safe with threads): a small exec wrapper.
_PDEATHSIG = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM);"
    " os.getppid() == int(sys.argv[1]) or sys.exit(1); os.execv(sys.argv[2], sys.argv[2:])"
)


def child(cmd: list[str]) -> list[str]:
    """``cmd`` (its first item an absolute path) so that it ends when this process does."""
    return [sys.executable, "-S", "-c", _PDEATHSIG, str(os.getpid()), *cmd]


def free_port() -> int:
    from crdtcoord_http.demo import free_port as fp

    return fp()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def loadavg() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f}"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def wait_with_bar(seconds: float, label: str) -> None:
    steps = max(1, int(seconds / 0.1))
    for _ in progress(range(steps), steps, label):
        time.sleep(seconds / steps)


class PhaseError(RuntimeError):
    pass


class Driver:
    """One ``--driver`` child process and its JSON-lines control pipe."""

    def __init__(
        self, node: str, port: int, peers: list[str], root: Path, secret_file: Path
    ) -> None:
        self.node = node
        self.port = port
        self.log_path = root / f"{node}.log"
        cfg = {
            "id": node,
            "port": port,
            "peers": peers,
            "data": str(root / node),
            "secret_file": str(secret_file),
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            child([sys.executable, os.path.abspath(__file__), "--driver", json.dumps(cfg)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
        )
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._got: dict[int, dict[str, Any]] = {}
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._q.put(json.loads(line))
            except ValueError:
                continue
        self._q.put(None)

    def tail(self, n: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _take(self, want: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if want in self._got:
                return self._got.pop(want)
            left = deadline - time.monotonic()
            if left <= 0:
                raise PhaseError(f"{self.node}: no answer in {timeout:.0f} s: {self.tail()}")
            try:
                msg = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                raise PhaseError(f"{self.node} exited ({self.proc.poll()}): {self.tail()}")
            self._got[msg.get("id", "ready" if "ready" in msg else None)] = msg

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.url = self._take("ready", timeout)["ready"]

    def send(self, cmd: str, **p: Any) -> int:
        self._next += 1
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"cmd": cmd, "id": self._next, **p}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise PhaseError(f"{self.node} is gone: {self.tail()}") from None
        return self._next

    def wait(self, rid: int, timeout: float) -> dict[str, Any]:
        r = self._take(rid, timeout)
        if "error" in r:
            raise PhaseError(f"{self.node}: {r['error']}")
        return r

    def call(self, cmd: str, timeout: float = 30.0, **p: Any) -> dict[str, Any]:
        return self.wait(self.send(cmd, **p), timeout)

    def quit(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b'{"cmd": "quit", "id": 0}\n')
                self.proc.stdin.flush()

    def stop(self, timeout: float = 5.0) -> None:
        self.quit()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Procs:
    """Every process this benchmark started; all stopped at the end, whatever happens.

    A phase *retires* its processes when it ends (asks them to stop, without waiting); the
    next phase *reaps* them (waits, kills what is left) once its own processes are up and
    before it measures anything, so their goodbyes overlap its start-up."""

    def __init__(self) -> None:
        self.drivers: list[Driver] = []
        self.popens: list[subprocess.Popen[bytes]] = []
        self._retiring_d: list[Driver] = []
        self._retiring_p: list[subprocess.Popen[bytes]] = []

    def retire_drivers(self, ds: list[Driver]) -> None:
        for d in ds:
            d.quit()  # all at once: each node's goodbye overlaps the others'
            self._retiring_d.append(d)

    def retire_popens(self, ps: list[subprocess.Popen[bytes]]) -> None:
        for p in ps:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            self._retiring_p.append(p)

    def reap(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for d in self._retiring_d:
            d.stop(max(0.1, deadline - time.monotonic()))
            if d in self.drivers:
                self.drivers.remove(d)
        for p in self._retiring_p:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p in self.popens:
                self.popens.remove(p)
        self._retiring_d.clear()
        self._retiring_p.clear()

    def stop_popens(self, ps: list[subprocess.Popen[bytes]]) -> None:
        self.retire_popens(ps)
        self.reap()

    def stop_all(self) -> None:
        self.retire_drivers([d for d in self.drivers if d not in self._retiring_d])
        self.retire_popens([p for p in self.popens if p not in self._retiring_p])
        self.reap()


def start_drivers(procs: Procs, names: list[str], root: Path, secret_file: Path) -> list[Driver]:
    ports = [free_port() for _ in names]
    ds = []
    for i, name in enumerate(names):
        peers = [f"{names[j]}=http://{HOST}:{ports[j]}" for j in range(len(names)) if j != i]
        d = Driver(name, ports[i], peers, root, secret_file)
        procs.drivers.append(d)
        ds.append(d)
    for d in ds:
        d.wait_ready()
    procs.reap()  # (the previous phase's processes: gone before this one measures)
    return ds


def snapshot(ds: list[Driver]) -> list[dict[str, Any]]:
    return [d.call("stats") for d in ds]


def diff(a: list[dict[str, Any]], b: list[dict[str, Any]], field: str) -> int:
    """Sum over nodes of the change of a stats field (``metrics.<name>`` for engine counters)."""

    def get(s: dict[str, Any]) -> int:
        if field.startswith("metrics."):
            return int(s["metrics"].get(field[8:], 0))
        return int(s[field])

    return sum(get(y) - get(x) for x, y in zip(a, b, strict=True))


# ====================================================================== phases


def bench_local_vs_redis(b: Any, quick: bool, root: Path, secret: bytes, procs: Procs) -> None:
    b.section("Local `await counter.inc()` vs redis-py INCR round trip (us per call)")
    print(f"  ({loadavg()})")
    redis_bin = shutil.which("redis-server")
    redis_bin = os.path.abspath(redis_bin) if redis_bin else None
    rounds = 4 if quick else 40
    a_batch, b_batch = 2000, 250
    rd: Any = None
    rproc: subprocess.Popen[bytes] | None = None
    if redis_bin is not None:
        import redis

        port = free_port()
        log = (root / "redis.log").open("wb")
        rproc = subprocess.Popen(
            child(
                [redis_bin, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # (the child holds its own copy)
        procs.popens.append(rproc)
        rd = redis.Redis(host=HOST, port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                rd.ping()
                break
            except redis.ConnectionError:
                if rproc.poll() is not None or time.monotonic() > deadline:
                    raise PhaseError("redis-server did not start: see redis.log") from None
                time.sleep(0.05)
        version = rd.info("server").get("redis_version", "?")
        print(f"  redis-server {version} on {HOST}:{port} (--save '' --appendonly no), redis-py")

    amortized: list[float] = []  # ns per increment, writes included

    async def run() -> tuple[list[int], list[int], list[int]]:
        from crdtcoord.runtime import Node
        from crdtcoord.storage import SqliteStorage
        from crdtcoord_http.transport import HttpTransport

        node = Node(
            "solo",
            transport=HttpTransport(f"{HOST}:0", secret=secret),
            storage=SqliteStorage(root / "solo.db"),
        )
        await node.start()
        pc = time.perf_counter_ns
        local: list[int] = []
        remote: list[int] = []
        empty: list[int] = []
        try:
            inc = node.counter("hits").inc
            for i in range(3_000 if quick else 20_000):  # warm-up
                await inc()
                if i % 100 == 99:
                    await asyncio.sleep(0)
            if rd is not None:
                for _ in range(500):
                    rd.incr("hits")
            for _ in progress(range(rounds), rounds, "local inc / redis INCR"):
                for j in range(a_batch):  # A: the local increment
                    t = pc()
                    await inc()
                    local.append(pc() - t)
                    if j % 100 == 99:
                        await asyncio.sleep(0)  # (the batching timer and its write run here)
                for _ in range(200):
                    t = pc()
                    empty.append(pc() - t)
                if rd is not None:
                    for _ in range(b_batch):  # B: a Redis round trip
                        t = pc()
                        rd.incr("hits")
                        remote.append(pc() - t)
                await asyncio.sleep(0.006)
            # amortized: a run of increments with the batching timer's writes included
            m = 10_000 if quick else 200_000
            node.flush()
            t0 = pc()
            for j in range(m):
                await inc()
                if j % 100 == 99:
                    await asyncio.sleep(0)
            node.flush()
            amortized.append((pc() - t0) / m)
        finally:
            await node.close(drain=0.1)
        return local, remote, empty

    try:
        local, remote, empty = asyncio.run(run())
    finally:
        if rproc is not None:
            if rd is not None:
                with contextlib.suppress(Exception):
                    rd.close()
            procs.stop_popens([rproc])
    lp50, lp99, _ = stats_us(local)
    tp50, _, _ = stats_us(empty)
    b.add(
        Result(
            "local_counter_inc",
            lp50,
            "us",
            p50=lp50,
            p99=lp99,
            samples=len(local),
            note=f"Node+HttpTransport+SQLite, in process; includes ~{tp50 * 1000:.0f} ns of"
            f" timer; target: median <= 3 us ({lp50:.2f} us: {'met' if lp50 <= 3 else 'MISSED'})",
        )
    )
    if amortized:
        b.add(
            Result(
                "local_counter_inc_amortized",
                amortized[0] / 1000,
                "us",
                samples=10_000 if quick else 200_000,
                note="wall time of a run of increments / count, the batching timer's SQLite"
                " writes included (no target)",
            )
        )
    if not remote:
        print(f"  (Redis baseline unavailable: no ratio. Install: {INSTALL_REDIS})")
        return
    rp50, rp99, _ = stats_us(remote)
    b.add(
        Result(
            "redis_incr_rtt",
            rp50,
            "us",
            p50=rp50,
            p99=rp99,
            samples=len(remote),
            role="baseline",
            note="redis-py sync client, loopback",
        )
    )
    b.target(
        Result(
            "local_incr_vs_redis",
            rp50 / lp50,
            "x",
            role="ratio",
            note="redis-py INCR median / local inc median",
        ),
        20,
    )


def bench_serve(
    b: Any, quick: bool, root: Path, secret_file: Path, token: str, procs: Procs
) -> None:
    from crdtcoord_http.client import Client, ClientError

    n = 3 if quick else 5
    b.section(f"{n} `crdtcoord serve` processes (secret, token file, SQLite data dirs), loopback")
    token_file = root / "tokens"
    token_file.write_text(f"bench:{token}\n")
    ports = [free_port() for _ in range(n)]
    names = [f"s{i + 1}" for i in range(n)]
    ps: list[subprocess.Popen[bytes]] = []
    for i, name in enumerate(names):
        peers = [f"{names[j]}=http://{HOST}:{ports[j]}" for j in range(n) if j != i]
        cmd = [
            sys.executable,
            "-m",
            "crdtcoord",
            "serve",
            "--id",
            name,
            "--listen",
            f"{HOST}:{ports[i]}",
            "--data-dir",
            str(root / name),
            "--secret-file",
            str(secret_file),
            "--token-file",
            str(token_file),
            *(a for p in peers for a in ("--peer", p)),
        ]
        with (root / f"{name}.log").open("ab") as out:
            p = subprocess.Popen(child(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        procs.popens.append(p)
        ps.append(p)
    urls = [f"http://{HOST}:{port}" for port in ports]
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 30
        for p, url in zip(ps, urls, strict=True):
            c = Client(url, token, timeout=1.0)
            while True:
                try:
                    c.health()
                    break
                except ClientError:
                    if p.poll() is not None or time.monotonic() > deadline:
                        raise PhaseError(f"serve at {url} did not start (logs in {root})") from None
                    time.sleep(0.05)
        procs.reap()
        # every node hears from every other (one write each, seen everywhere)
        clients = [Client(u, token, timeout=5.0) for u in urls]
        for i, c in enumerate(clients):
            c.op(f"warm/{names[i]}", "inc")
        deadline = time.monotonic() + 20
        for c in clients:
            while len(c.keys("warm/")) < n:
                if time.monotonic() > deadline:
                    raise PhaseError("serve cluster did not converge on its warm-up writes")
                time.sleep(0.02)
        settle = 0.3 if quick else 3.0
        window = 0.8 if quick else 5.0
        time.sleep(settle)
        print(f"  ({loadavg()})")
        cpu0 = [cpu_seconds(p.pid) for p in ps]
        t0 = time.monotonic()
        wait_with_bar(window, "idle CPU window")
        dt = time.monotonic() - t0
        cpu = [(cpu_seconds(p.pid) - c0) / dt * 100 for p, c0 in zip(ps, cpu0, strict=True)]
        b.add(
            Result(
                "serve_idle_cpu_per_node_max",
                max(cpu),
                "%core",
                note=f"{n}-node cluster idle {dt:.1f} s after {settle:.0f} s settle; per node "
                + ", ".join(f"{x:.2f}" for x in cpu),
            )
        )

        # propagation as a client sees it: JSON API write -> SSE event at every other node
        got: dict[tuple[str, int], list[int]] = {}
        lock = threading.Lock()

        def watch(url: str) -> None:
            c = Client(url, token)
            while not stop.is_set():
                try:
                    for ch in c.watch("lat/", idle_timeout=2.0):
                        now = time.monotonic_ns()
                        if stop.is_set():
                            return
                        v = ch.get("value")
                        if ch.get("origin") and isinstance(v, list):
                            with lock:
                                got.setdefault((ch["key"], v[0]), []).append(now - v[1])
                except (ClientError, OSError, ValueError):
                    time.sleep(0.05)

        threads = [threading.Thread(target=watch, args=(u,), daemon=True) for u in urls]
        for th in threads:
            th.start()
        time.sleep(0.3)  # (the streams are open)
        writes = 20 if quick else 300
        period = 0.02
        sent: list[tuple[str, int]] = []
        base = time.monotonic() + 0.05
        for k in progress(range(writes), writes, "serve: write -> SSE"):
            i = k % n
            d = base + k * period - time.monotonic()
            if d > 0:
                time.sleep(d)
            key = f"lat/{names[i]}/{k}"
            clients[i].op(key, "set", value=[k, time.monotonic_ns()])
            sent.append((key, k))
        time.sleep(0.3)
        stop.set()
        with lock:
            all_nodes = [max(got[s]) for s in sent if len(got.get(s, [])) >= n - 1]
            per_peer = [x for s in sent for x in got.get(s, [])]
        missing = len(sent) - len(all_nodes)
        if all_nodes:
            p50, p99, _ = stats_us(all_nodes)
            b.add(
                Result(
                    "serve_sse_propagation_all_nodes",
                    p50 / 1000,
                    "ms",
                    p50=p50 / 1000,
                    p99=p99 / 1000,
                    samples=len(all_nodes),
                    note="JSON API set at one node -> SSE event parsed at all others"
                    f" (client view); {missing} writes not seen everywhere",
                )
            )
            q50, q99, _ = stats_us(per_peer)
            b.add(
                Result(
                    "serve_sse_propagation_per_peer",
                    q50 / 1000,
                    "ms",
                    p50=q50 / 1000,
                    p99=q99 / 1000,
                    samples=len(per_peer),
                )
            )
        else:
            raise PhaseError("no write was seen on every node's SSE feed")
    finally:
        stop.set()
        procs.retire_popens(ps)


def _latency_samples(
    answers: list[dict[str, Any]], names: list[str], n_writes: int
) -> tuple[list[int], list[int], int]:
    """(all-nodes latency of each write, every single arrival, writes not seen everywhere),
    in ns. Write ``k`` was made by ``names[k % len(names)]``."""
    nodes = len(names)
    all_nodes: list[int] = []
    per_peer: list[int] = []
    missing = 0
    for k in range(n_writes):
        key = f"{names[k % nodes]}:{k}"
        xs = [a["arrivals"][key] for a in answers if key in a["arrivals"]]
        per_peer.extend(xs)
        if len(xs) == nodes - 1:
            all_nodes.append(max(xs))
        else:
            missing += 1
    return all_nodes, per_peer, missing


def run_schedule(
    ds: list[Driver],
    n_writes: int,
    period_s: float,
    load: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the propagation writes on every driver (and the same ``load`` command on each, from
    the same start time); returns the latency answers and the load answers."""
    period = int(period_s * 1e9)
    grace = int(0.3e9)
    t0 = time.monotonic_ns() + int(0.1e9)
    lat_ids = [
        d.send("latency", t0=t0, period=period, n=n_writes, me=i, nodes=len(ds), grace=grace)
        for i, d in enumerate(ds)
    ]
    load_ids = []
    if load is not None:
        load_ids = [d.send("load", t0=t0, key=f"{load['prefix']}{d.node}", **load) for d in ds]
    total = (t0 - time.monotonic_ns() + n_writes * period + grace) / 1e9
    label = "propagation writes" + (" + load" if load else "")
    wait_with_bar(max(0.0, total), label)
    lat = [d.wait(rid, 30.0) for d, rid in zip(ds, lat_ids, strict=True)]
    loads = [d.wait(rid, 30.0) for d, rid in zip(ds, load_ids, strict=True)] if load_ids else []
    return lat, loads


def add_latency(
    b: Any, name: str, lat: list[dict[str, Any]], names: list[str], n: int, note: str, target: bool
) -> float:
    """Add the all-nodes and per-peer propagation results; returns the all-nodes p99 (ms)."""
    all_nodes, per_peer, missing = _latency_samples(lat, names, n)
    if not all_nodes:
        raise PhaseError(f"{name}: no write reached every node")
    p50, p99, _ = stats_us(all_nodes)
    p50, p99 = p50 / 1000, p99 / 1000
    late = max(r["writer_late_ns"] for r in lat) / 1e6
    full = f"{note}; {missing}/{n} writes not seen everywhere; writer wake-up <= {late:.1f} ms late"
    if target:
        full += f"; target: p99 <= 20 ms ({p99:.2f} ms: {'met' if p99 <= 20 else 'MISSED'})"
    b.add(
        Result(f"{name}_all_nodes", p50, "ms", p50=p50, p99=p99, samples=len(all_nodes), note=full)
    )
    q50, q99, _ = stats_us(per_peer)
    b.add(
        Result(
            f"{name}_per_peer",
            q50 / 1000,
            "ms",
            p50=q50 / 1000,
            p99=q99 / 1000,
            samples=len(per_peer),
            note="each single arrival",
        )
    )
    return p99


def add_bytes(
    b: Any, tag: str, s0: list[dict[str, Any]], s1: list[dict[str, Any]], updates: int
) -> None:
    """Wire bytes per update between two snapshots of every driver."""
    eng = diff(s0, s1, "metrics.bytes_sent")
    delta = diff(s0, s1, "metrics.bytes_sent_DELTA")
    ack = diff(s0, s1, "metrics.bytes_sent_ACK")
    ae = sum(diff(s0, s1, f"metrics.bytes_sent_{k}") for k in ("AE_ROOT", "AE_OK", "AE_STEP"))
    sock = diff(s0, s1, "socket_bytes")
    posts = diff(s0, s1, "http_sent")
    deltas = diff(s0, s1, "metrics.sent_DELTA")
    b.add(
        Result(
            f"engine_bytes_per_update_{tag}",
            eng / updates,
            "B",
            note=f"engine messages, all nodes, {updates} updates: DELTA {delta / updates:.1f},"
            f" ACK {ack / updates:.1f}, anti-entropy {ae / updates:.1f}, other"
            f" {(eng - delta - ack - ae) / updates:.1f}; {deltas / updates:.2f} DELTA messages"
            f" per update, {delta / max(deltas, 1):.0f} B each",
        )
    )
    b.add(
        Result(
            f"socket_bytes_per_update_{tag}",
            sock / updates,
            "B",
            note=f"HTTP requests + responses incl. headers; {posts / updates:.2f} POSTs per update",
        )
    )
    if posts:
        b.add(
            Result(
                f"http_overhead_per_request_{tag}",
                (sock - eng) / posts,
                "B",
                note="request + response lines and headers (+ reply array framing) per POST",
            )
        )


def bench_cluster(b: Any, quick: bool, root: Path, secret_file: Path, procs: Procs) -> None:
    n = 3 if quick else 5
    names = [f"d{i + 1}" for i in range(n)]
    b.section(
        f"{n} driver nodes (Node + HttpTransport + SQLite, one OS process each, secret), loopback"
    )
    ds = start_drivers(procs, names, root, secret_file)
    try:
        for d in ds:
            d.call("inc", key=f"warm/{d.node}")
        warm = {f"warm/{x}": 1 for x in names}
        ids = [d.send("await_values", expected=warm, timeout=20.0) for d in ds]
        for d, rid in zip(ds, ids, strict=True):
            if not d.wait(rid, 25.0)["ok"]:
                raise PhaseError(f"{d.node} did not receive the warm-up writes")
        time.sleep(0.1 if quick else 0.5)
        period = 0.01
        n_idle = 50 if quick else 1000
        print(f"  idle: one register write every {period * 1000:.0f} ms, round robin ({loadavg()})")
        s0 = snapshot(ds)
        lat, _ = run_schedule(ds, n_idle, period)
        s1 = snapshot(ds)
        add_latency(b, "propagation_idle", lat, names, n_idle, f"{n} nodes, in-process feeds", True)
        add_bytes(b, "idle", s0, s1, n_idle)

        seconds = 1.0 if quick else 20.0
        n_load = int(seconds / period)
        print(
            f"  load: every node increments its own counter for {seconds:g} s, propagation"
            f" writes continue ({loadavg()})"
        )
        s2 = snapshot(ds)
        lat2, loads = run_schedule(
            ds, n_load, period, {"seconds": seconds, "prefix": "load/", "track": 10.0}
        )
        expected = {f"load/{d.node}": r["n"] for d, r in zip(ds, loads, strict=True)}
        ids = [d.send("first_seen", expected=expected, timeout=15.0) for d in ds]
        seen = [d.wait(rid, 20.0) for d, rid in zip(ds, ids, strict=True)]
        s3 = snapshot(ds)
        rates = [r["n"] / ((r["end"] - r["start"]) / 1e9) for r in loads]
        cpu = [r["cpu_s"] / ((r["end"] - r["start"]) / 1e9) * 100 for r in loads]
        converged = all(x["ok"] for x in seen)
        per_node = ", ".join(f"{x:,.0f}" for x in rates)
        b.target(
            Result(
                "incs_per_s_per_node_min",
                min(rates),
                "/s",
                note=f"{n} nodes, {seconds:g} s; per node {per_node}; total {sum(rates):,.0f}/s;"
                f" CPU per node {', '.join(f'{c:.0f}%' for c in cpu)}",
            ),
            10_000,
        )
        add_latency(
            b,
            "propagation_at_load",
            lat2,
            names,
            n_load,
            "same writes during the load (no target of its own)",
            False,
        )
        if converged:
            end = max(r["end"] for r in loads)
            conv = (max(x["t"] for x in seen) - end) / 1e6
            b.add(
                Result(
                    "converged_after_load",
                    conv,
                    "ms",
                    note="from the last node's last increment until every node held every count",
                )
            )
        else:
            have = [x.get("have") for x in seen if not x["ok"]]
            b.add(
                Result(
                    "converged_after_load",
                    -1.0,
                    "ms",
                    note=f"NOT converged within 10 s of the end: wanted {expected}, have {have}",
                )
            )
        add_bytes(b, "at_load", s2, s3, sum(r["n"] for r in loads) + n_load)
        errors = diff(s0, s3, "http_errors")
        dropped = diff(s0, s3, "dropped")
        retrans = diff(s0, s3, "metrics.retransmits")
        refused: dict[str, int] = {}
        for st in s3:
            for k, v in st["refused"].items():
                refused[k] = refused.get(k, 0) + v
        print(
            f"  transport: {errors} send errors, {dropped} dropped, {retrans} retransmits,"
            f" refused {refused or 'none'}"
        )
        for tag, a, z, ups, secs in (
            ("idle", s0, s1, n_idle, n_idle * period),
            ("load", s2, s3, sum(r["n"] for r in loads) + n_load, seconds),
        ):
            w = diff(a, z, "store_writes")
            rows = diff(a, z, "store_rows")
            busy = diff(a, z, "store_ns") / 1e9
            longest = max(x["store_max_ns"] for x in z) / 1e6
            comp = diff(a, z, "compactions")
            gc_s = diff(a, z, "gc_ns") / 1e9
            print(
                f"  storage ({tag}): {w} writes, {rows} rows = {rows / ups:.2f} per update,"
                f" {comp} compactions, {busy / len(ds) / secs * 100:.0f}% of each node's wall"
                f" time in writes, longest write (since start) {longest:.1f} ms; garbage"
                f" collector ({tag}): {gc_s / len(ds) / secs * 100:.1f}% of wall time,"
                f" {diff(a, z, 'gc_full')} full collections, longest pause (since start)"
                f" {max(x['gc_max_ns'] for x in z) / 1e6:.1f} ms"
            )
    finally:
        procs.retire_drivers(ds)


def bench_ae(b: Any, quick: bool, root: Path, secret_file: Path, procs: Procs) -> None:
    keys = 5_000 if quick else 100_000
    tag = f"{keys // 1000}k"
    b.section(f"Anti-entropy between 2 driver nodes holding the same {keys:,} keys (in sync)")
    ds = start_drivers(procs, ["a1", "a2"], root, secret_file)
    try:
        a1, a2 = ds
        filled = a1.call("fill", n=keys, prefix="k/", timeout=300.0)["seconds"]
        t0 = time.monotonic()
        have = 0
        bar = progress(range(keys), keys, f"replicating {keys:,} keys")
        while have < keys:
            if time.monotonic() - t0 > (30 if quick else 180):
                raise PhaseError(f"a2 holds {have} of {keys} keys after the timeout")
            time.sleep(0.1)
            now = a2.call("count_keys", prefix="k/")["n"]
            for _ in range(now - have):
                next(bar, None)
            have = now
        for _ in bar:
            pass
        replicated = time.monotonic() - t0
        print(
            f"  filled {keys:,} keys at a1 in {filled:.1f} s; at a2 {replicated:.1f} s later"
            f" ({loadavg()})"
        )
        base = snapshot(ds)
        deadline = time.monotonic() + 30
        while True:  # in-sync answers after the fill (digests settled), nothing left to send
            time.sleep(0.2)
            cur = snapshot(ds)
            quiet = all(x["backlog"] == 0 and x["queued"] == 0 for x in cur)
            if quiet and diff(base, cur, "metrics.ae_in_sync") >= (1 if quick else 2):
                break
            if time.monotonic() > deadline:
                raise PhaseError("no in-sync anti-entropy round within 30 s of the fill")
        window = 1.0 if quick else 10.0
        s0 = snapshot(ds)
        cpu0 = [cpu_seconds(d.pid) for d in ds]
        w0 = time.monotonic()
        wait_with_bar(window, "anti-entropy window")
        dt = time.monotonic() - w0
        cpu = [(cpu_seconds(d.pid) - c) / dt * 100 for d, c in zip(ds, cpu0, strict=True)]
        s1 = snapshot(ds)
        rounds = diff(s0, s1, "metrics.ae_rounds")
        in_sync = diff(s0, s1, "metrics.ae_in_sync")
        kinds = {
            k: diff(s0, s1, f"metrics.bytes_sent_{k}") for k in ("AE_ROOT", "AE_OK", "AE_STEP")
        }
        ae = sum(kinds.values())
        eng = diff(s0, s1, "metrics.bytes_sent")
        sock = diff(s0, s1, "socket_bytes")
        if rounds == 0:
            raise PhaseError("no anti-entropy round in the window")
        print(
            f"  window: {diff(s0, s1, 'http_sent')} POSTs, {diff(s0, s1, 'http_retries')} HTTP"
            f" retries, {diff(s0, s1, 'http_errors')} send errors,"
            f" {diff(s0, s1, 'store_writes')} storage writes"
        )
        b.add(
            Result(
                f"ae_in_sync_bytes_per_round_{tag}",
                ae / rounds,
                "B",
                note=f"engine bytes AE_ROOT {kinds['AE_ROOT']}, AE_OK {kinds['AE_OK']}, AE_STEP"
                f" {kinds['AE_STEP']} over {rounds} rounds ({in_sync} in-sync answers, counted at"
                f" both ends) in {dt:.0f} s;"
                f" all engine bytes {eng} (other kinds {eng - ae})",
            )
        )
        b.add(
            Result(
                f"ae_in_sync_socket_bytes_per_round_{tag}",
                sock / rounds,
                "B",
                note="everything the 2 nodes' sockets wrote in the window, HTTP headers included",
            )
        )
        full = a1.call("state_bytes", prefix="k/")["bytes"]
        b.add(
            Result(
                f"full_state_push_pull_bytes_{tag}",
                2 * full / 1e3,
                "KB",
                role="baseline",
                note="a naive full-state round: every encoded state and key, both directions",
            )
        )
        b.add(
            Result(
                f"full_state_vs_ae_round_{tag}",
                2 * full / max(ae / rounds, 1),
                "x",
                role="ratio",
            )
        )
        b.add(
            Result(
                f"idle_cpu_per_node_{tag}_keys_max",
                max(cpu),
                "%core",
                note="the 2 nodes during the window: " + ", ".join(f"{c:.2f}" for c in cpu),
            )
        )
    finally:
        procs.retire_drivers(ds)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--driver":
        sys.exit(driver_main(sys.argv[2]))
    args, b = cli("http", __doc__)
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    if os.environ.get("HTTP_BENCH_REDIS") == "optional":
        ci = False  # (the test suite checks that the script runs; make bench installs Redis)
    if shutil.which("redis-server") is None:
        msg = f"redis-server is not on PATH (the Redis baseline). Install it: {INSTALL_REDIS}"
        if ci:
            sys.exit(f"benchmarks/http.py: {msg}; CI is set, so this is an error")
        print(f"note: {msg}; the baseline is reported as unavailable", flush=True)
    # SIGTERM (a timeout, an impatient user) must still run the finally blocks below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="crdtcoord-bench-http-"))
    secret = secrets.token_hex(32)
    secret_file = root / "secret"
    secret_file.write_text(secret + "\n")
    procs = Procs()
    ok = False
    t_start = time.monotonic()
    b.add(Result("machine_load_1min_at_start", os.getloadavg()[0], "", role="context"))
    try:
        phases: list[tuple[Any, tuple[Any, ...]]] = [
            (bench_local_vs_redis, (root, secret.encode(), procs)),
            (bench_serve, (root, secret_file, secrets.token_hex(24), procs)),
            (bench_cluster, (root, secret_file, procs)),
            (bench_ae, (root, secret_file, procs)),
        ]
        for fn, extra in phases:
            t = time.monotonic()
            fn(b, args.quick, *extra)
            print(f"  (phase took {time.monotonic() - t:.1f} s)", flush=True)
        ok = True
    finally:
        procs.stop_all()
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}", file=sys.stderr)
    b.add(Result("machine_load_1min_at_end", os.getloadavg()[0], "", role="context"))
    print(f"\n(total {time.monotonic() - t_start:.1f} s)")
    finish(args, b)


if __name__ == "__main__":
    main()
