"""The ``crdtcoord`` command: ``demo`` and ``inspect`` (``serve``, ``sim``, ``bench`` to come)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crdtcoord.codec import decode, digest
from crdtcoord.types import CRDTBase


def _inspect(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    if args.hex:
        raw = bytes.fromhex(raw.decode("ascii").strip())
    x: CRDTBase = decode(raw)
    print(f"type:   {type(x).__name__} (wire tag {x.TYPE_TAG}, version {x.WIRE_VERSION})")
    print(f"bytes:  {len(raw)}")
    print(f"digest: {digest(x).hex()}")
    print(f"stats:  {x.stats()}")
    print(f"value:  {x.value()!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="crdtcoord", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="three replicas converge through a lossy network")
    d.add_argument("--seed", type=int, default=7)
    i = sub.add_parser("inspect", help="decode an encoded CRDT state and show it")
    i.add_argument("file", help="file with the encoded bytes, or - for stdin")
    i.add_argument("--hex", action="store_true", help="the input is hex text")
    args = ap.parse_args(argv)
    if args.command == "demo":
        from crdtcoord.demo import main as demo

        return demo(["--seed", str(args.seed)])
    try:
        return _inspect(args)
    except (OSError, ValueError) as exc:  # CodecError is a ValueError
        print(f"crdtcoord inspect: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
