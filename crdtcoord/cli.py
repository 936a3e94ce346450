"""The ``crdtcoord`` command: ``demo`` and ``inspect`` (``serve``, ``sim``, ``bench`` to come).

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
Three replicas of the real replication engine, driven by the deterministic simulator, update
concurrently over a bad network (messages lost, duplicated, reordered; clocks skewed) and
converge. The demo prints each replica's values and store digest along the way: equal digests
mean identical replicas. The same seed gives the same run.
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
        prog="crdtcoord", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw
    )
    ap.add_argument("--version", action="version", version=f"crdtcoord {__version__}")
    sub = ap.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser(
        "demo",
        help="three replicas converge through a lossy network",
        description=_DEMO_DESCRIPTION,
        formatter_class=raw,
    )
    d.add_argument("--seed", type=int, default=7, help="seed of the network's misbehaviour")
    i = sub.add_parser(
        "inspect",
        help="decode an encoded CRDT state and show it",
        description=_INSPECT_DESCRIPTION,
        epilog=_INSPECT_EPILOG,
        formatter_class=raw,
    )
    i.add_argument("file", help="file with the encoded bytes, or - for stdin")
    i.add_argument("--hex", action="store_true", help="the input is hex text (whitespace ignored)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        from crdtcoord.demo import main as demo

        return demo(["--seed", str(args.seed)])
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
