"""A strict reader of Yjs **v1** updates and state vectors (lib0 encoding), in pure Python.

pycrdt accepts a v1 update followed by junk, silently ignores a v2 update, and can half-apply a
decodable but inconsistent one (``reference/pycrdt.md`` §1.9). Before an update touches a
document, :func:`parse_update` reads every byte of it against the v1 grammar (Yjs
``readClientsStructRefs`` + ``readDeleteSet``): the struct and content kinds, the ids, the
strings (valid UTF-8), the JSON and ``Any`` values, and that nothing follows the delete set.
What it returns — per-client clock ranges, the delete set and the root types it saw — is what the
document needs to tell an integrated update from a pending one and to name its root types.

Numbers are bounded: lib0 var-uints above 2**53 - 1 (JavaScript's safe integers) are refused, so
are nested ``Any`` values deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Any

from crdtcoord._exceptions import CodecError

__all__ = [
    "MAX_DEPTH",
    "ParsedUpdate",
    "encode_delete_set",
    "encode_state_vector",
    "parse_state_vector",
    "parse_update",
    "write_var_uint",
]

#: Deepest nesting of ``Any`` values (objects in arrays in objects ...) accepted.
MAX_DEPTH = 64
_SAFE = (1 << 53) - 1

# content refs (info & 0x1f)
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
# type refs of ContentType
_XML_ELEMENT, _XML_HOOK = 3, 5
_TYPE_KINDS = {0: "array", 1: "map", 2: "text", 3: "xml", 4: "xml", 5: "xml", 6: "xml"}


class UpdateError(CodecError):
    """Bytes that are not a well-formed Yjs v1 update (or state vector)."""


@dataclass(slots=True)
class ParsedUpdate:
    """What a v1 update holds, without its contents.

    ``structs`` maps a client id to its ``(first clock, end clock)`` (end exclusive, Skips
    excluded); ``deletes`` maps a client id to its ``(clock, length)`` ranges; ``roots`` names the
    root types that items of the update place content in directly, with the kind the content
    shows (``text``, ``map``, ``array`` or ``xml``; None when it cannot tell).
    """

    structs: dict[int, tuple[int, int]] = field(default_factory=dict)
    deletes: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    roots: dict[str, str | None] = field(default_factory=dict)
    #: where the delete set starts in the update's bytes
    ds_offset: int = 0
    #: per client, the clock ranges ``[start, end)`` its structs cover (Skips excluded): equal
    #: for two encodings of the same structs
    ranges: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.structs and not any(self.deletes.values())


class _Reader:
    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def fail(self, what: str) -> UpdateError:
        return UpdateError(f"{what} (at byte {self.pos} of {self.end})")

    def byte(self) -> int:
        if self.pos >= self.end:
            raise self.fail("truncated update")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def uint(self) -> int:
        buf, pos, end = self.buf, self.pos, self.end
        if pos < end:
            b = buf[pos]
            if b < 0x80:  # (most var-uints are one byte)
                self.pos = pos + 1
                return b
        n = shift = 0
        while True:
            if pos >= end:
                self.pos = pos
                raise self.fail("truncated variable-length integer")
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 56:
                self.pos = pos
                raise self.fail("variable-length integer too long")
        self.pos = pos
        if n > _SAFE:
            raise self.fail(f"integer {n} beyond 2**53 - 1")
        return n

    def sint(self) -> int:
        b = self.byte()
        n = b & 0x3F
        negative = bool(b & 0x40)
        shift = 6
        while b & 0x80:
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if shift > 62:
                raise self.fail("variable-length integer too long")
        if n > _SAFE:
            raise self.fail(f"integer {n} beyond 2**53 - 1")
        return -n if negative else n

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise self.fail(f"truncated update (a {n}-byte field)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def string(self) -> str:
        n = self.uint()
        pos = self.pos
        if n > self.end - pos:
            raise self.fail(f"truncated update (a {n}-byte string)")
        self.pos = pos + n
        try:
            return self.buf[pos : pos + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8") from None

    def json(self) -> None:
        s = self.string()
        if s == "undefined":
            return
        try:
            json.loads(s)
        except (ValueError, RecursionError):
            raise self.fail("invalid JSON content") from None

    def any(self, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise self.fail("values nest too deeply")
        tag = self.byte()
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:
            self.sint()
        elif tag == 124:
            self.take(4)
        elif tag == 123 or tag == 122:
            self.take(8)
        elif tag == 119:
            self.string()
        elif tag == 118:
            for _ in range(self.uint()):
                self.string()
                self.any(depth + 1)
        elif tag == 117:
            for _ in range(self.uint()):
                self.any(depth + 1)
        elif tag == 116:
            self.take(self.uint())
        else:
            raise self.fail(f"unknown value tag {tag}")


def _utf16_len(s: str) -> int:
    """Length of ``s`` in UTF-16 code units (Yjs counts string items so)."""
    n = len(s)
    return n + sum(1 for c in s if ord(c) > 0xFFFF) if not s.isascii() else n


def _content(r: _Reader, ref: int) -> tuple[int, str | None]:
    """Read one item's content: its length in clock ticks, and the root kind it implies."""
    kind: str | None = None
    if ref == _DELETED:
        n = r.uint()
    elif ref == _JSON:
        n = r.uint()
        for _ in range(n):
            r.json()
        kind = "array"
    elif ref == _BINARY:
        r.take(r.uint())
        n, kind = 1, "array"
    elif ref == _STRING:
        # (yrs can write an empty string item after splitting a surrogate pair: length 0)
        n, kind = _utf16_len(r.string()), "text"
    elif ref == _EMBED:
        r.json()
        n, kind = 1, "text"
    elif ref == _FORMAT:
        r.string()
        r.json()
        n, kind = 1, "text"
    elif ref == _TYPE:
        tref = r.uint()
        if tref not in _TYPE_KINDS:
            raise r.fail(f"unknown type ref {tref}")
        if tref in (_XML_ELEMENT, _XML_HOOK):
            r.string()
        n = 1
        kind = "xml" if _TYPE_KINDS[tref] == "xml" else "array"
    elif ref == _ANY:
        n = r.uint()
        for _ in range(n):
            r.any()
        kind = "array"
    elif ref == _DOC:
        r.string()
        r.any()
        n, kind = 1, "array"
    else:
        raise r.fail(f"unknown content ref {ref}")
    if n == 0 and ref != _STRING:
        raise r.fail(f"empty item (content {ref})")
    return n, kind


def _cover(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    if ranges and ranges[-1][1] == start:
        ranges[-1] = (ranges[-1][0], end)
    else:
        ranges.append((start, end))


def _learn(roots: dict[str, str | None], root: str, kind: str | None) -> None:
    prev = roots.get(root)
    if kind is not None and (prev is None or (prev == "array" and kind == "xml")):
        roots[root] = kind
    else:
        roots.setdefault(root, None)


# An item's parent, as the update gives it: ("root", name, sub) for an item that names a root
# type, ("nested", None, None) for one inside a nested type, or ("left"/"right", client, clock)
# for one that inherits its parent (and map key) from its origin.
_Link = tuple[Any, ...]


def _resolve_roots(
    items: dict[int, tuple[list[int], list[int], list[_Link]]],
    orphans: list[tuple[_Link, str | None]],
    roots: dict[str, str | None],
) -> None:
    """Root kinds of items that inherit their parent from an origin (a text whose first
    characters were deleted names its root only on a deleted item): follow the origins."""
    for link, kind in orphans:
        hops = 0
        while link[0] in ("left", "right") and hops < 100_000:
            got = items.get(link[1])
            if got is None:
                break
            starts, ends, links = got
            i = bisect.bisect_right(starts, link[2]) - 1
            if i < 0 or link[2] >= ends[i]:
                break
            link = links[i]
            hops += 1
        if link[0] == "root":
            _learn(roots, link[1], "map" if link[2] else kind)


#: The last few updates read, by identity: one update on its way through validation, the op
#: that carries it and the document is read once (a 1 MB map update takes ~0.1 s to read).
_RECENT: list[tuple[bytes, ParsedUpdate]] = []


def parse_update(data: bytes | bytearray | memoryview) -> ParsedUpdate:
    """Read a whole v1 update strictly; :class:`UpdateError` on anything else (v2, junk, ...).
    The result is shared with later callers passing the same bytes object: do not mutate it."""
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise UpdateError(f"an update is bytes, got {type(data).__name__}")
        data = bytes(data)
    for seen, parsed in _RECENT:
        if seen is data:
            return parsed
    r = _Reader(data)
    out = ParsedUpdate()
    try:
        _parse(r, out)
    except UpdateError as exc:
        if data[:1] == b"\x00" and len(data) > 2:
            raise UpdateError(
                f"not a v1 update (Yjs v2 updates are not supported): {exc}"
            ) from None
        raise
    _RECENT.append((data, out))
    del _RECENT[:-4]
    return out


def _parse(r: _Reader, out: ParsedUpdate) -> None:
    structs, roots = out.structs, out.roots
    items: dict[int, tuple[list[int], list[int], list[_Link]]] = {}
    orphans: list[tuple[_Link, str | None]] = []
    for _ in range(r.uint()):
        n_structs = r.uint()
        client = r.uint()
        clock = r.uint()
        if client in structs:
            raise r.fail(f"client {client} appears twice")
        first = clock
        last = clock
        starts: list[int] = []
        ends: list[int] = []
        links: list[_Link] = []
        items[client] = (starts, ends, links)
        covered: list[tuple[int, int]] = []
        for _ in range(n_structs):
            info = r.byte()
            ref = info & 0x1F
            if ref in (_GC, _SKIP):
                n = r.uint()
                if n == 0:
                    raise r.fail("empty struct")
                if ref == _GC:
                    _cover(covered, clock, clock + n)
                    last = clock + n
                clock += n
                continue
            has_origin, has_right = info & 0x80, info & 0x40
            link: _Link
            if has_origin:
                link = ("left", r.uint(), r.uint())
            if has_right:
                right = ("right", r.uint(), r.uint())
                if not has_origin:
                    link = right
            if not has_origin and not has_right:
                flag = r.uint()
                if flag == 1:
                    link = ("root", r.string(), False)
                elif flag == 0:
                    r.uint()
                    r.uint()
                    link = ("nested", None, None)
                else:
                    raise r.fail(f"bad parent flag {flag}")
                if info & 0x20:
                    r.string()
                    if link[0] == "root":
                        link = ("root", link[1], True)
            n, kind = _content(r, ref)
            if link[0] == "root":
                _learn(roots, link[1], "map" if link[2] else kind)
            elif link[0] != "nested" and kind is not None:
                orphans.append((link, kind))
            starts.append(clock)
            ends.append(clock + n)
            links.append(link)
            if n:
                _cover(covered, clock, clock + n)
            clock += n
            last = clock
        if clock > _SAFE:
            raise r.fail("clock beyond 2**53 - 1")
        if n_structs and last > first:
            structs[client] = (first, last)
        if covered:
            out.ranges[client] = covered
    deletes = out.deletes
    out.ds_offset = r.pos
    for _ in range(r.uint()):
        client = r.uint()
        ranges = deletes.setdefault(client, [])
        for _ in range(r.uint()):
            clock = r.uint()
            n = r.uint()
            if clock + n > _SAFE:
                raise r.fail("delete range beyond 2**53 - 1")
            if n:
                ranges.append((clock, n))
    if r.pos != r.end:
        raise r.fail(f"{r.end - r.pos} bytes after the end of the update")
    if orphans:
        _resolve_roots(items, orphans, roots)


def parse_state_vector(data: bytes | bytearray | memoryview) -> dict[int, int]:
    """Read a v1 state vector strictly: ``{client: clock}``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UpdateError(f"a state vector is bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    out: dict[int, int] = {}
    for _ in range(r.uint()):
        client = r.uint()
        clock = r.uint()
        if client in out:
            raise r.fail(f"client {client} appears twice in the state vector")
        out[client] = clock
    if r.pos != r.end:
        raise r.fail(f"{r.end - r.pos} bytes after the end of the state vector")
    return out


def encode_state_vector(sv: dict[int, int]) -> bytes:
    """The v1 encoding of ``{client: clock}`` (clients in descending order, as Yjs writes)."""
    out = bytearray(write_var_uint(len(sv)))
    for client in sorted(sv, reverse=True):
        out += write_var_uint(client)
        out += write_var_uint(sv[client])
    return bytes(out)


def encode_delete_set(ds: dict[int, list[tuple[int, int]]]) -> bytes:
    """The v1 encoding of a delete set ``{client: [(clock, length), ...]}``."""
    out = bytearray(write_var_uint(len(ds)))
    for client in sorted(ds, reverse=True):
        ranges = ds[client]
        out += write_var_uint(client)
        out += write_var_uint(len(ranges))
        for clock, n in ranges:
            out += write_var_uint(clock)
            out += write_var_uint(n)
    return bytes(out)


def write_var_uint(n: int) -> bytes:
    """lib0 var-uint (LEB128, 7 bits per byte, least significant first)."""
    if n < 0:
        raise ValueError("var-uints are non-negative")
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)
