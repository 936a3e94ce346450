"""The ``crdtcoord`` command: ``serve`` a node, talk to one (``get``, ``inc``, ``dec``, ``add``,
``remove``, ``set``, ``status``, ``watch``), run the ``demo``, ``inspect`` an encoded state.

The help texts below are plain text on purpose: argparse prints them as they are, so they carry
no reST markup (this docstring is for the API docs, not for ``--help``).
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

from crdtcoord import __version__
from crdtcoord.codec import decode, digest
from crdtcoord.types import CRDTBase

_DESCRIPTION = "Distributed coordination state in CRDTs, replicated peer to peer."
_EPILOG = "Run 'crdtcoord COMMAND --help' for the options of a command."

_DEMO_DESCRIPTION = """\
Three real nodes ('crdtcoord serve' processes on loopback, each with its own SQLite data dir)
update counters and a set concurrently over HTTP; a live table shows their values converging.
Then one node is killed with SIGKILL mid-load and restarted from its data dir, and the cluster
converges again. Exits 0 with a summary of what was shown.

--sim runs the simulated variant instead: three replicas of the same engine in the
deterministic simulator, over a network that loses, duplicates and reorders messages.
"""

_SERVE_DESCRIPTION = """\
Run one node: it serves the replication protocol and the client API over HTTP and replicates
with its peers by deltas and anti-entropy.

Without a cluster secret the node runs in protected mode: it listens on loopback only and
accepts loopback peers and clients only. Give every node the same secret (--secret-file) to
listen on other addresses; clients then need a token from --token-file.
"""

_SERVE_EPILOG = """\
examples:
  crdtcoord serve --id n1 --listen 127.0.0.1:7001 --data-dir data/n1
  crdtcoord serve --id n2 --listen 127.0.0.1:7002 --peer http://127.0.0.1:7001 --data-dir data/n2
  crdtcoord serve --id n1 --listen 0.0.0.0:7001 --advertise http://10.0.0.1:7001 \\
      --secret-file /etc/crdtcoord/secret --token-file /etc/crdtcoord/tokens --data-dir /var/lib/n1

SIGTERM or Ctrl-C: graceful shutdown (pending deltas acknowledged, LEAVE announced).
See docs/operations.md.
"""

_CLIENT_EPILOG = """\
The node is --node URL, else $CRDTCOORD_NODE, else http://127.0.0.1:7000. A token comes from
--token-file (its first token) or $CRDTCOORD_TOKEN. An https node under mutual TLS needs
--tls-ca, --tls-cert and --tls-key (or $CRDTCOORD_TLS_CA/_CERT/_KEY). Exit status: 0 done,
1 refused or unreachable (the reason on stderr), 2 bad usage.
"""

_INSPECT_DESCRIPTION = """\
Decode one encoded CRDT state (the bytes crdtcoord.encode returns) and print its type, wire
version, size, digest, statistics and value. The input is binary unless --hex is given.
"""

_INSPECT_EPILOG = """\
examples:
  crdtcoord inspect state.bin
  crdtcoord inspect --hex state.hex
  some-command | crdtcoord inspect --hex -

exit status: 0 if the state decoded, 2 if the file is missing or does not decode.
"""

_SPACE = frozenset(string.whitespace.encode())
_HEX_TEXT = frozenset(string.hexdigits.encode()) | _SPACE


class InputError(ValueError):
    """The input cannot be read as asked (e.g. hex text without --hex): a message for the user."""


def _looks_like_hex(raw: bytes) -> bool:
    """Hex text: at least one hex digit and nothing but hex digits and whitespace."""
    return any(b not in _SPACE for b in raw) and all(b in _HEX_TEXT for b in raw)


def _read(file: str, as_hex: bool) -> bytes:
    raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    name = "stdin" if file == "-" else file
    if not as_hex:
        return raw
    try:
        return bytes.fromhex(raw.decode("ascii"))
    except ValueError:  # UnicodeDecodeError is a ValueError too
        raise InputError(f"{name} is not hex text; drop --hex to read it as binary") from None


def _inspect(args: argparse.Namespace) -> int:
    raw = _read(args.file, args.hex)
    try:
        x: CRDTBase = decode(raw)
    except ValueError:  # CodecError is a ValueError
        if not args.hex and _looks_like_hex(raw):
            # a valid binary encoding is tried first, so this hint never refuses a real state
            name = "stdin" if args.file == "-" else args.file
            raise InputError(f"{name}: this looks like hex text; pass --hex") from None
        raise
    print(f"type:   {type(x).__name__} (wire tag {x.TYPE_TAG}, version {x.WIRE_VERSION})")
    print(f"bytes:  {len(raw)}")
    print(f"digest: {digest(x).hex()}")
    print(f"stats:  {x.stats()}")
    print(f"value:  {x.value()!r}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``crdtcoord`` command (plain-text help, one per subcommand)."""
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(
        prog="crdtcoord",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    ap.add_argument("--version", action="version", version=f"crdtcoord {__version__}")
    sub = ap.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    sv = sub.add_parser(
        "serve",
        help="run a node",
        description=_SERVE_DESCRIPTION,
        epilog=_SERVE_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    sv.add_argument("--id", required=True, help="this node's id (unique in the cluster)")
    sv.add_argument(
        "--listen", required=True, metavar="HOST:PORT", help="address to bind (port 0: any free)"
    )
    sv.add_argument(
        "--peer",
        action="append",
        metavar="URL",
        help="a peer's URL (http://HOST:PORT or ID=http://HOST:PORT); repeat for more",
    )
    sv.add_argument("--secret-file", metavar="F", help="the cluster secret (same on every node)")
    sv.add_argument("--token-file", metavar="F", help="client bearer tokens, one per line")
    sv.add_argument("--data-dir", metavar="D", help="where the node keeps its state (SQLite)")
    sv.add_argument(
        "--durability",
        choices=("process", "power"),
        default="process",
        help="survive a process crash (default) or also a power loss (slower writes)",
    )
    sv.add_argument(
        "--advertise", metavar="URL", help="the URL peers should use to reach this node"
    )
    sv.add_argument(
        "--cluster", default="default", help="cluster id (nodes of other clusters are refused)"
    )
    sv.add_argument("--tls-cert", metavar="F", help="TLS certificate (PEM) of this node")
    sv.add_argument("--tls-key", metavar="F", help="its private key (PEM)")
    sv.add_argument(
        "--tls-ca", metavar="F", help="CA bundle to verify peers; with --tls-cert: mutual TLS"
    )
    sv.add_argument(
        "--failure-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds of silence after which a peer is shown as suspected (default 5)",
    )
    sv.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    sv.add_argument(
        "--consensus",
        metavar="KIND",
        help="local (one node), raft (embedded among the nodes) or etcd://HOST:PORT[,...]:"
        " decides conflicts and grants strong leases (default: none)",
    )
    sv.add_argument(
        "--raft-listen", metavar="HOST:PORT", help="Raft address (default: HTTP port + 1000)"
    )
    sv.add_argument(
        "--raft-peer",
        action="append",
        metavar="HOST:PORT",
        help="a peer's Raft address (default: from --peer, port + 1000); repeat",
    )

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=_CLIENT_EPILOG,
            formatter_class=raw,
            allow_abbrev=False,
        )
        p.add_argument("--node", metavar="URL", help="the node to ask")
        p.add_argument("--token-file", metavar="F", help="file holding a client token")
        p.add_argument(
            "--tls-ca", metavar="F", help="CA to verify an https node ($CRDTCOORD_TLS_CA)"
        )
        p.add_argument(
            "--tls-cert", metavar="F", help="client certificate, mutual TLS ($CRDTCOORD_TLS_CERT)"
        )
        p.add_argument("--tls-key", metavar="F", help="its private key ($CRDTCOORD_TLS_KEY)")
        return p

    def mutation(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--consistency",
            default="local",
            help="local (default), majority, all, or a number of replicas",
        )
        p.add_argument(
            "--op-id",
            metavar="ID",
            help="make retries idempotent (default: a fresh id, reused by this command's retries)",
        )
        p.add_argument("--timeout", type=float, metavar="S", help="wait at most S seconds")

    g = client("get", "print a key's value")
    g.add_argument("key")
    g.add_argument("--consistency", help="read from this many replicas first (e.g. majority)")
    g.add_argument("--timeout", type=float, metavar="S", help="wait at most S seconds")
    k = client("keys", "list the keys (under a prefix)")
    k.add_argument("prefix", nargs="?", default="", help="key prefix (default: every key)")
    for name, what in (("inc", "increment"), ("dec", "decrement")):
        p = client(name, f"{what} a counter (a PN-counter is created if the key is missing)")
        p.add_argument("key")
        p.add_argument("n", nargs="?", type=int, default=1, help="amount (default 1)")
        mutation(p)
    for name, what in (("add", "add an element to"), ("remove", "remove an element from")):
        p = client(name, f"{what} a set (an OR-set is created if the key is missing)")
        p.add_argument("key")
        p.add_argument("element", help="the element (JSON if it parses, else a string)")
        mutation(p)
    p = client("set", "set a register (an LWW register is created if the key is missing)")
    p.add_argument("key")
    p.add_argument("value", help="the value (JSON if it parses, else a string)")
    mutation(p)
    st = client("status", "show a node's peers, lag, keys and repairs")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    ls = client("lease", "acquire, release or show a lease (fencing tokens)")
    ls.add_argument("action", choices=("acquire", "release", "show"))
    ls.add_argument("name", help="the lease's name")
    ls.add_argument("--holder", help="who holds it (acquire, release)")
    ls.add_argument("--ttl", type=float, default=10.0, metavar="SECONDS", help="term (default 10)")
    ls.add_argument(
        "--mode",
        choices=("strong", "optimistic"),
        help="strong: consensus first (default with --consensus); optimistic: local claim",
    )
    el = client("election", "campaign for, resign or show a leader election")
    el.add_argument("action", choices=("campaign", "resign", "show"))
    el.add_argument("name")
    el.add_argument("--candidate", help="who campaigns or resigns")
    el.add_argument("--ttl", type=float, default=5.0, metavar="S", help="leader lease (default 5)")
    el.add_argument("--timeout", type=float, metavar="S", help="campaign at most S seconds")
    el.add_argument(
        "--keep",
        action="store_true",
        help="campaign: stay leader until interrupted (checks in every ttl/3; without it the"
        " lead lapses one ttl after the answer); exit 3 when the lead is lost",
    )
    br = client("barrier", "arrive at or show a barrier (exit 3: not open yet)")
    br.add_argument("action", choices=("arrive", "show"))
    br.add_argument("name")
    br.add_argument("--who", help="who arrives")
    br.add_argument("--participants", metavar="A,B,...", help="the participant names")
    br.add_argument("--wait", type=float, metavar="S", help="show: wait up to S s for it to open")
    sm = client("semaphore", "acquire or release permits (exit 3: none available)")
    sm.add_argument("action", choices=("acquire", "release"))
    sm.add_argument("name")
    sm.add_argument("--permits", type=int, help="the semaphore's size (its first use)")
    sm.add_argument("--n", type=int, default=1, help="how many (default 1)")
    sm.add_argument("--timeout", type=float, metavar="S", help="acquire: wait at most S s")
    rl = client("ratelimit", "admit an event under a cluster-wide rate limit (exit 3: limited)")
    rl.add_argument("name")
    rl.add_argument("--limit", type=int, required=True, help="events per window")
    rl.add_argument("--window", type=float, default=1.0, metavar="S", help="window (default 1 s)")
    rl.add_argument("--n", type=int, default=1, help="events (default 1)")
    w = client("watch", "follow the change feed of keys under a prefix")
    w.add_argument("prefix", nargs="?", default="", help="key prefix (default: every key)")
    w.add_argument("--since", metavar="CURSOR", help="resume after this cursor")
    w.add_argument("--json", action="store_true", help="one JSON object per change")
    w.add_argument("--once", action="store_true", help="do not reconnect when the node goes away")
    d = sub.add_parser(
        "demo",
        help="three real nodes converge; one is killed and restarted",
        description=_DEMO_DESCRIPTION,
        formatter_class=raw,
        allow_abbrev=False,
    )
    d.add_argument("--sim", action="store_true", help="the simulated variant (no processes)")
    d.add_argument("--seed", type=int, default=7, help="seed (updates; the simulated network)")
    d.add_argument("--quick", action="store_true", help="a shorter run")
    i = sub.add_parser(
        "inspect",
        help="decode an encoded CRDT state and show it",
        description=_INSPECT_DESCRIPTION,
        epilog=_INSPECT_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    i.add_argument("file", help="file with the encoded bytes, or - for stdin")
    i.add_argument("--hex", action="store_true", help="the input is hex text (whitespace ignored)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        if args.sim:
            from crdtcoord.demo import main as demo

            return demo(["--seed", str(args.seed)])
        from crdtcoord_http.demo import main as live_demo

        return live_demo(seed=args.seed, quick=args.quick)
    if args.command != "inspect":
        from crdtcoord_http.cli import run

        return run(args)
    try:
        return _inspect(args)
    except OSError as exc:
        what = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else exc
        print(f"crdtcoord inspect: {what}", file=sys.stderr)
        return 2
    except ValueError as exc:  # CodecError and InputError are ValueErrors
        print(f"crdtcoord inspect: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
