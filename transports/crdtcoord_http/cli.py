"""The networked commands of ``crdtcoord``: ``serve`` and the client commands (``get``, ``inc``,
``dec``, ``add``, ``remove``, ``set``, ``status``, ``watch``). ``crdtcoord.cli`` defines their
arguments and calls :func:`run` (imported only when such a command runs)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from crdtcoord import CrdtcoordError
from crdtcoord_http.auth import ConfigError, TokenSet, load_secret
from crdtcoord_http.client import Client, ClientError
from crdtcoord_http.transport import PeerSpec

__all__ = ["run"]

DEFAULT_NODE = "http://127.0.0.1:7000"


def run(args: argparse.Namespace) -> int:
    """Run one networked command; returns the exit status (errors printed to stderr)."""
    prog = f"crdtcoord {args.command}"
    try:
        if args.command == "serve":
            return _serve(args)
        return _client_command(args)
    except (ConfigError, ClientError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except CrdtcoordError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------- serve


def _ssl_contexts(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None, None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    server = client = None
    try:
        if args.tls_cert:
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server.load_cert_chain(args.tls_cert, args.tls_key)
            if args.tls_ca:
                server.load_verify_locations(args.tls_ca)
                server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: peers need a certificate
        client = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
        if client is not None and args.tls_cert:
            client.load_cert_chain(args.tls_cert, args.tls_key)  # (our certificate, for mTLS)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS: {e}") from None
    return server, client


def _serve(args: argparse.Namespace) -> int:
    from crdtcoord.engine import EngineConfig
    from crdtcoord.runtime import Node
    from crdtcoord.storage import SqliteStorage
    from crdtcoord_http.transport import HttpTransport

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    secret = load_secret(args.secret_file) if args.secret_file else None
    if args.secret_file and os.stat(args.secret_file).st_mode & 0o077:
        logging.getLogger("crdtcoord").warning(
            "the secret file %s is readable by other users (chmod 600 it)", args.secret_file
        )
    if args.secret_file is None and os.environ.get("CRDTCOORD_SECRET"):
        secret = os.environ["CRDTCOORD_SECRET"].encode()
    tokens = TokenSet.load(args.token_file, secret=secret) if args.token_file else None
    server_ssl, client_ssl = _ssl_contexts(args)
    transport = HttpTransport(
        args.listen,
        args.peer or (),
        secret=secret,
        tokens=tokens,
        advertise=args.advertise,
        ssl_server=server_ssl,
        ssl_client=client_ssl,
    )
    consensus = _consensus(args, secret)
    storage = None
    if args.data_dir:
        storage = SqliteStorage(Path(args.data_dir) / "node.db", durability=args.durability)
    try:
        config = EngineConfig(cluster_id=args.cluster, delta_idle_send=True)
    except CrdtcoordError as e:
        raise ConfigError(str(e)) from None
    node = Node(
        args.id,
        transport=transport,
        storage=storage,
        config=config,
        failure_timeout=args.failure_timeout,
        consensus=consensus,
        freeze_gc=True,  # (this process is the node's: short GC pauses, see Node)
    )
    return asyncio.run(_serve_until_signal(node, args))


def _consensus(args: argparse.Namespace, secret: bytes | None) -> Any:
    """The plug-in ``--consensus`` names (None without the flag)."""
    spec = args.consensus
    if spec is None:
        if args.raft_listen or args.raft_peer:
            raise ConfigError("--raft-listen/--raft-peer need --consensus raft")
        return None
    from crdtcoord.consensus import LocalConsensus, RaftConsensus, raft_address

    if spec == "local":
        if args.peer:
            raise ConfigError(
                "--consensus local is for a single node (each process would decide alone);"
                " with peers use --consensus raft or etcd://HOST:PORT"
            )
        data = Path(args.data_dir) / "consensus.db" if args.data_dir else None
        if data is not None:
            data.parent.mkdir(parents=True, exist_ok=True)
        return LocalConsensus(path=data)
    if spec == "raft":
        from crdtcoord_http.transport import PeerSpec, parse_listen

        host, port = parse_listen(args.listen)
        listen = args.raft_listen or raft_address(host, port)
        if args.raft_peer:
            peers = list(args.raft_peer)
        else:
            peers = []
            for p in args.peer or ():
                u = PeerSpec.parse(p).url
                h, _, pt = u.split("://", 1)[1].rpartition(":")
                peers.append(raft_address(h.strip("[]"), int(pt)))
        if not peers:
            raise ConfigError(
                "--consensus raft needs the other Raft members: every node lists every other"
                " node with --peer (or --raft-peer HOST:PORT); one node alone: --consensus local"
            )
        data = Path(args.data_dir) / "raft" if args.data_dir else None
        try:
            return RaftConsensus(listen, peers, secret=secret, data_dir=data)
        except CrdtcoordError as e:
            raise ConfigError(str(e)) from None
    if spec.startswith(("etcd://", "etcds://")):
        from crdtcoord.consensus.etcd import EtcdConsensus

        scheme = "https" if spec.startswith("etcds://") else "http"
        endpoints = [f"{scheme}://{hp}" for hp in spec.split("://", 1)[1].split(",") if hp]
        if not endpoints:
            raise ConfigError("--consensus etcd://HOST:PORT[,HOST:PORT...]")
        return EtcdConsensus(endpoints)
    raise ConfigError(f"--consensus {spec!r}: expected local, raft or etcd://HOST:PORT")


async def _serve_until_signal(node: Any, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    t = node.transport
    where = args.data_dir or "memory (lost on exit: pass --data-dir)"
    print(
        f"crdtcoord serve: node {node.node_id} (incarnation {node.incarnation}) listening on"
        f" {t.url}; cluster {node.config.cluster_id!r}; data: {where};"
        f" {'secured' if t.signer else 'protected mode (no secret, loopback only)'}",
        flush=True,
    )
    await stop.wait()
    clean = await node.close()
    how = "clean" if clean else f"unclean: {node.close_report or 'see the log'}"
    print(f"crdtcoord serve: node {node.node_id} stopped ({how})", flush=True)
    return 0


# ---------------------------------------------------------------------- client commands


def _client(args: argparse.Namespace) -> Client:
    token = os.environ.get("CRDTCOORD_TOKEN")
    if args.token_file:
        try:
            text = Path(args.token_file).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {args.token_file}: {e.strerror}") from None
        found = TokenSet.parse(text, args.token_file)  # (the server's own reading of the file)
        if not found:
            raise ConfigError(f"{args.token_file} holds no token")
        token = found[0][1]
    ca = args.tls_ca or os.environ.get("CRDTCOORD_TLS_CA")
    cert = args.tls_cert or os.environ.get("CRDTCOORD_TLS_CERT")
    key = args.tls_key or os.environ.get("CRDTCOORD_TLS_KEY")
    ctx = None
    if ca or cert:
        try:
            ctx = Client.tls(ca, cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"TLS: {e}") from None
    url = args.node or os.environ.get("CRDTCOORD_NODE") or DEFAULT_NODE
    try:
        PeerSpec.parse(url if "://" in url else "http://" + url)
    except ConfigError:
        raise ConfigError(f"--node {url!r}: expected http(s)://HOST:PORT") from None
    return Client(url, token, ssl_context=ctx, timeout=getattr(args, "timeout", None) or 10.0)


def _retrying(fn: Any, attempts: int = 4, op_id: str | None = None) -> Any:
    """Call ``fn``; on an unreachable or overloaded node, retry with backoff (mutations carry
    an op id, so a retry never applies twice). Errors get a hint for the user."""
    delay = 0.2
    for i in range(attempts):
        try:
            return fn()
        except ClientError as e:
            if i < attempts - 1 and e.status in (0, 429, 503):
                time.sleep(delay)
                delay *= 2
                continue
            if e.code in ("no_token", "bad_token"):
                e.args = (f"{e}; give a token with --token-file F or $CRDTCOORD_TOKEN",)
            elif e.code == "consistency_timeout" and op_id:
                e.args = (f"{e}\nto wait again without applying it twice: --op-id {op_id}",)
            raise
    raise AssertionError("unreachable")


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses (42, true, {"a": 1}), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _client_command(args: argparse.Namespace) -> int:
    c = _client(args)
    cmd = args.command
    if cmd == "get":
        out = _retrying(lambda: c.get(args.key, args.consistency))
        print(_show(out["value"]))
        return 0
    if cmd == "keys":
        for k in _retrying(lambda: c.keys(args.prefix)):
            print(k)
        return 0
    if cmd == "status":
        st = _retrying(c.status)
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            print(format_status(st))
        return 0
    if cmd == "watch":
        return _watch(c, args)
    if cmd == "lease":
        return _lease(c, args)
    if cmd in ("election", "barrier", "semaphore", "ratelimit"):
        return _primitive(c, args)
    op_id = args.op_id or f"cli-{uuid.uuid4().hex}"
    fields: dict[str, Any] = {}
    if cmd in ("inc", "dec"):
        fields["n"] = args.n
    elif cmd in ("add", "remove"):
        fields["element"] = _parse_value(args.element)
    else:
        fields["value"] = _parse_value(args.value)
    out = _retrying(
        lambda: c.op(
            args.key, cmd, consistency=args.consistency, op_id=op_id, timeout=args.timeout, **fields
        ),
        op_id=op_id,
    )
    if out.get("applied") is False:
        print(
            f"crdtcoord {cmd}: op id {op_id} was already applied; nothing changed now",
            file=sys.stderr,
        )
    print(_show(out["value"]))
    return 0


def _lease(c: Client, args: argparse.Namespace) -> int:
    """``lease acquire`` prints the grant as JSON (exit 0) or ``held by H`` (exit 3);
    ``release`` prints whether it released; ``show`` the lease as JSON."""
    if args.action == "acquire":
        try:
            g = _retrying(lambda: c.lease_acquire(args.name, args.holder, args.ttl, args.mode))
        except ClientError as e:
            if e.code == "held":
                print(f"crdtcoord lease: {e.detail}", file=sys.stderr)
                return 3
            raise
        print(json.dumps(g))
        if args.mode is None and g.get("mode") == "optimistic":
            print(
                "crdtcoord lease: note: this node has no consensus plug-in, so the lease is"
                " optimistic (a local claim; see docs/coordination.md); --mode optimistic"
                " says so explicitly, serve --consensus makes leases strong",
                file=sys.stderr,
            )
        return 0
    if args.action == "release":
        ok = _retrying(lambda: c.lease_release(args.name, args.holder))
        print(json.dumps({"released": ok}))
        return 0 if ok else 1
    print(json.dumps(_retrying(lambda: c.lease_show(args.name))))
    return 0


def _keep_leading(c: Client, name: str, args: argparse.Namespace) -> int:
    """``election campaign --keep``: campaign (without a limit unless --timeout), print the
    term, then check in every ttl/3 and exit 3 **at the end of the term as this process
    measures it** (from when its last successful check-in was sent: the rule of
    docs/coordination.md) if no check-in succeeded since; SIGINT/SIGTERM resign first."""
    path = f"/v1/elections/{name}/campaign"
    ttl = args.ttl
    term_s = ttl * (1 - 0.001) / (1 + 0.001) - 0.05  # (the safe-expiry rule)
    leading = False

    def stop(signum: int, _frame: object) -> None:
        if leading:
            with contextlib.suppress(ClientError, OSError):
                c.call("POST", f"/v1/elections/{name}/resign", {"candidate": args.candidate},
                       timeout=2)  # fmt: skip
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while True:  # campaign: 30 s per request, again and again (a standby waits for its turn)
        left = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
        if left <= 0:
            print("crdtcoord election: not leader within the timeout", file=sys.stderr)
            return 3
        sent = time.monotonic()
        body = {"candidate": args.candidate, "ttl": ttl, "timeout": left}
        try:
            out = c.call("POST", path, body, timeout=left + 10)
            break
        except ClientError as e:
            if e.code != "timeout":
                raise
    leading = True
    valid_until = sent + term_s
    term = out.get("term")
    print(json.dumps(out), flush=True)
    while True:
        time.sleep(max(0.0, min(ttl / 3, valid_until - time.monotonic())))
        if time.monotonic() >= valid_until:
            print("crdtcoord election: lost the lead: the term ended without a check-in",
                  file=sys.stderr)  # fmt: skip
            return 3
        sent = time.monotonic()
        body = {"candidate": args.candidate, "ttl": ttl, "timeout": ttl / 3}
        try:  # (a check-in that cannot finish within the term is as good as none)
            now = c.call("POST", path, body, timeout=max(0.05, valid_until - sent))
        except (ClientError, OSError) as e:
            why = e.detail if isinstance(e, ClientError) else str(e)
            if time.monotonic() >= valid_until or (isinstance(e, ClientError) and e.status < 500):
                print(f"crdtcoord election: lost the lead: {why}", file=sys.stderr)
                return 3
            continue  # (retry while the term lasts)
        if now.get("term") != term:
            print("crdtcoord election: lost the lead (a new term)", file=sys.stderr)
            return 3
        valid_until = sent + term_s


def _primitive(c: Client, args: argparse.Namespace) -> int:
    """Elections, barriers, semaphores and rate limiters: print the JSON answer; exit 3 when
    the primitive says no (a rate limit reached, no permit, a barrier not open)."""
    from urllib.parse import quote, urlencode

    name = quote(args.name, safe="")
    cmd, action = args.command, getattr(args, "action", None)
    wait = (getattr(args, "timeout", None) or 30.0) + 10
    if cmd == "election":
        if action == "campaign":
            if args.keep:
                return _keep_leading(c, name, args)
            body = {"candidate": args.candidate, "ttl": args.ttl, "timeout": args.timeout or 30.0}
            try:
                out = c.call("POST", f"/v1/elections/{name}/campaign", body, timeout=wait)
            except ClientError as e:
                if e.code == "timeout":
                    print(f"crdtcoord election: not leader within {body['timeout']} s",
                          file=sys.stderr)  # fmt: skip
                    return 3
                raise
        elif action == "resign":
            out = c.call("POST", f"/v1/elections/{name}/resign", {"candidate": args.candidate})
        else:
            out = c.call("GET", f"/v1/elections/{name}")
        print(json.dumps(out))
        return 0
    if cmd == "barrier":
        parts = args.participants or ""
        if action == "arrive":
            body = {"who": args.who, "participants": [p for p in parts.split(",") if p]}
            out = c.call("POST", f"/v1/barriers/{name}/arrive", body)
        else:
            q = {"participants": parts}
            if args.wait:
                q["wait"] = str(args.wait)
            out = c.call(
                "GET", f"/v1/barriers/{name}?{urlencode(q)}", timeout=(args.wait or 0) + 10
            )
        print(json.dumps(out))
        return 0 if out.get("open") or action == "arrive" else 3
    if cmd == "semaphore":
        body = {"permits": args.permits, "n": args.n}
        if action == "acquire":
            body["timeout"] = args.timeout or 5.0
        try:
            out = c.call("POST", f"/v1/semaphores/{name}/{action}", body, timeout=wait)
        except ClientError as e:
            if e.code == "unavailable":
                print(f"crdtcoord semaphore: {e.detail}", file=sys.stderr)
                return 3
            raise
        print(json.dumps(out))
        return 0
    out = c.call("POST", f"/v1/ratelimits/{name}", {"limit": args.limit, "window": args.window,
                                                     "n": args.n})  # fmt: skip
    print(json.dumps(out))
    return 0 if out["admitted"] else 3


def _watch(c: Client, args: argparse.Namespace) -> int:
    """Follow the feed; reconnect after the last cursor seen when the stream ends (unless
    --once); a compaction prints the snapshot, then continues from the cursor it gives."""
    since = args.since
    delay = 0.2
    while True:
        try:
            for ch in c.watch(args.prefix, since, idle_timeout=None):
                if ch.get("event") == "compacted":
                    _print_compacted(ch, args.json)
                    since = ch["cursor"]
                    break
                since = ch["cursor"]
                if args.json:
                    print(json.dumps(ch), flush=True)
                else:
                    origin = ch["origin"] or "local"
                    line = f"{ch['cursor']}  {ch['key']} = {_show(ch['value'])}  ({origin})"
                    print(line, flush=True)
                delay = 0.2
        except ClientError as e:
            if e.status != 0 or args.once:
                if e.code == "disconnected" and args.once:
                    return 0
                raise
            print(f"# {e}; reconnecting in {delay:.1f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except KeyboardInterrupt:
            return 0


def _print_compacted(ch: dict[str, Any], as_json: bool) -> None:
    if as_json:  # (one JSON object per line, always)
        print(json.dumps(ch), flush=True)
        return
    print(f"# compacted ({ch['reason']}); snapshot follows, resuming at {ch['cursor']}")
    for k, v in ch["snapshot"].items():
        print(f"{k} = {_show(v)}", flush=True)


def format_status(st: dict[str, Any]) -> str:
    """``/v1/status`` as a readable table."""
    t = st.get("transport", {})
    s = st.get("storage", {})
    sync = st.get("sync", {})
    lines = [
        f"node {st['node']}  incarnation {st['incarnation']}  cluster {st['cluster']!r}"
        f"  uptime {st['uptime_s']:.1f} s",
        f"keys {st['keys']}  members {st['members']}  backlog {st['backlog']}"
        f"  repairs owed {', '.join(st['repairs']) or 'none'}"
        f"  pending requests {st['pending_requests']}",
        f"storage {s.get('kind')} {s.get('path', '')}  durability {s.get('durability', '-')}"
        f"  writes {s.get('writes', '-')}  pending {s.get('pending_writes', 0)}"
        + (
            f"  compactions {s['compactions']}  checkpoints {s.get('checkpoints', 0)}"
            f" (inline {s.get('inline_checkpoints', 0)})"
            if "compactions" in s
            else ""
        ),
        f"transport {t.get('url', '-')}  {'secured' if t.get('secured') else 'protected mode'}"
        f"{'  TLS' if t.get('tls') else ''}  sent {t.get('sent', 0)}  received"
        f" {t.get('received', 0)}  errors {t.get('send_errors', 0)}",
        f"sync: deltas sent {sync.get('sent_DELTA', 0)}, received {sync.get('received_DELTA', 0)};"
        f" retransmits {sync.get('retransmits', 0)};"
        f" anti-entropy rounds {sync.get('ae_rounds', 0)};"
        f" repairs {sync.get('repairs_done', 0)}/{sync.get('repairs_scheduled', 0)};"
        f" rejected {sync.get('rejected', 0)}",
        "",
    ]
    rows = [("PEER", "INCARNATION", "LAST CONTACT", "LAG", "RTT MS", "STATE")]
    for p in st.get("peers", []):
        last = p.get("last_contact_s")
        state = "left" if p.get("left") else ("SUSPECTED" if p.get("suspected") else "up")
        rows.append(
            (
                str(p["node"]),
                str(p.get("incarnation") or "-"),
                "never" if last is None else f"{last:.1f} s ago",
                str(p.get("lag", 0)),
                "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.2f}",
                state,
            )
        )
    if len(rows) == 1:
        lines.append("no peers")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
