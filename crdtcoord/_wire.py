"""Low-level wire helpers shared by the types and the codec (internal).

Two value domains cross the wire:

* **Element** — what an OR-set holds and what keys an OR-map: ``None``, ``int`` (64-bit range),
  ``str``, ``bytes`` and tuples of elements. Elements are hashable and have a total order
  (:func:`element_key`) so that sets encode canonically. ``bool`` and ``float`` are excluded on
  purpose: ``True == 1`` and ``1.0 == 1`` in Python, which would make two different encodings
  compare equal and break "equal states give equal bytes".
* **Value** — what a register holds: an element-like JSON-ish tree of ``None``, ``bool``, ``int``,
  finite ``float``, ``str``, ``bytes``, ``list`` and ``dict`` with ``str`` keys. Tuples are
  normalized to lists. Registers keep a value as its canonical msgpack bytes, so equality is by
  bytes (``True`` and ``1`` differ) and a reader can never mutate the replica's state.

:class:`Reader` turns raw msgpack objects into validated Python values and raises only
:class:`~crdtcoord.CodecError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import msgpack

from crdtcoord._exceptions import CodecError, InvalidArgument

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "UINT_MAX",
    "Element",
    "Limits",
    "Reader",
    "Value",
    "check_amount",
    "check_element",
    "check_replica",
    "element_key",
    "normalize_value",
    "pack",
    "pack_value",
    "unpack",
    "unpack_value",
]

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
UINT_MAX = 2**64 - 1
MAX_REPLICA_ID_BYTES = 255
MAX_NESTING = 32

Element: TypeAlias = "int | str | bytes | tuple[Element, ...] | None"
Value: TypeAlias = "bool | int | float | str | bytes | list[Value] | dict[str, Value] | None"


@dataclass(frozen=True, slots=True)
class Limits:
    """Strict decoding limits. Anything beyond them is a :class:`CodecError`, never a crash.

    The defaults are generous for a replication message and small enough that a hostile peer
    cannot make a node allocate without bound: a message is at most ``max_bytes`` long, no
    container is longer than ``max_container``, no string/bytes longer than ``max_str``/``max_bin``
    and nothing nests deeper than ``max_depth`` (CRDTs inside maps, tuples inside elements, lists
    inside values).
    """

    max_bytes: int = 64 * 1024 * 1024
    max_container: int = 4_000_000
    max_str: int = 1024 * 1024
    max_bin: int = 16 * 1024 * 1024
    max_depth: int = MAX_NESTING


DEFAULT_LIMITS = Limits()


class _Pairs(list[tuple[Any, Any]]):
    """A msgpack map as decoded: its (key, value) pairs in wire order, duplicates kept."""


def pack(obj: Any) -> bytes:
    """Pack an already-canonical Python structure (dicts must be in canonical key order)."""
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False, datetime=False)


def unpack(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Unpack msgpack bytes under ``limits``; maps come back as :class:`_Pairs`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if len(data) == 0:
        raise CodecError("empty message")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            object_pairs_hook=_Pairs,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bin,
            max_array_len=limits.max_container,
            max_map_len=limits.max_container,
            max_ext_len=0,
            timestamp=0,
        )
    except Exception as exc:  # msgpack raises ValueError, StackError, UnicodeDecodeError, ...
        raise CodecError(f"not valid msgpack: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- argument checks


#: Replica ids already found valid (a replica updates under a handful of ids, many times: the
#: check is a set lookup after the first). Bounded: emptied when it grows past the limit.
_VALID_REPLICAS: set[str] = set()
_VALID_REPLICAS_MAX = 4096


def check_replica(replica: object) -> str:
    """Validate a replica id: a non-empty ``str`` of at most 255 UTF-8 bytes."""
    if type(replica) is str and replica in _VALID_REPLICAS:
        return replica
    if type(replica) is not str:
        raise InvalidArgument(f"replica id must be a str, got {type(replica).__name__}")
    if not replica or len(replica.encode("utf-8", "surrogatepass")) > MAX_REPLICA_ID_BYTES:
        raise InvalidArgument(f"replica id must be 1..{MAX_REPLICA_ID_BYTES} bytes: {replica!r}")
    try:
        replica.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"replica id is not valid unicode: {replica!r}") from None
    if len(_VALID_REPLICAS) >= _VALID_REPLICAS_MAX:
        _VALID_REPLICAS.clear()
    _VALID_REPLICAS.add(replica)
    return replica


def check_amount(n: object, what: str = "amount", *, allow_zero: bool = True) -> int:
    """Validate a non-negative integer amount that fits the wire (``0 <= n <= 2**63-1``)."""
    if type(n) is not int:
        raise InvalidArgument(f"{what} must be an int, got {type(n).__name__}")
    if n < (0 if allow_zero else 1) or n > INT_MAX:
        low = 0 if allow_zero else 1
        raise InvalidArgument(f"{what} must be in [{low}, 2**63-1], got {n}")
    return n


def check_element(e: object, _depth: int = 0) -> Element:
    """Validate and normalize an element (see module doc); raises :class:`InvalidArgument`."""
    if e is None:
        return None
    t = type(e)
    if t is str:
        assert isinstance(e, str)
        try:
            e.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"element is not valid unicode: {e!r}") from None
        return e
    if t is int:
        assert isinstance(e, int)
        if not INT_MIN <= e <= UINT_MAX:
            raise InvalidArgument(f"integer element out of the 64-bit range: {e}")
        return e
    if t is bytes:
        assert isinstance(e, bytes)
        return e
    if t is tuple:
        assert isinstance(e, tuple)
        if _depth >= MAX_NESTING:
            raise InvalidArgument("element nests too deeply")
        return tuple(check_element(x, _depth + 1) for x in e)
    if isinstance(e, bool | float):
        raise InvalidArgument(
            f"{type(e).__name__} is not an element type (use an int or str; True == 1 in Python)"
        )
    if isinstance(e, str):
        return check_element(str.__str__(e), _depth)
    if isinstance(e, int):
        return check_element(int(e), _depth)
    if isinstance(e, bytes | bytearray | memoryview):
        return bytes(e)
    raise InvalidArgument(f"{type(e).__name__} is not an element type")


def element_key(e: Element) -> tuple[Any, ...]:
    """Total order on elements, used for canonical encoding: None < int < str < bytes < tuple."""
    if e is None:
        return (0,)
    t = type(e)
    if t is int:
        return (1, e)
    if t is str:
        return (2, e)
    if t is bytes:
        return (3, e)
    assert isinstance(e, tuple)
    return (4, tuple(element_key(x) for x in e))


def normalize_value(v: object, _depth: int = 0) -> Value:
    """Validate a register value and return its canonical form (sorted dicts, lists for tuples).

    Containers may nest ``MAX_NESTING`` deep, exactly what :meth:`Reader.value` accepts."""
    if v is None or v is True or v is False:
        return v
    t = type(v)
    if t is str:
        assert isinstance(v, str)
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"string is not valid unicode: {v!r}") from None
        return v
    if t is int:
        assert isinstance(v, int)
        if not INT_MIN <= v <= UINT_MAX:
            raise InvalidArgument(f"integer value out of the 64-bit range: {v}")
        return v
    if t is float:
        assert isinstance(v, float)
        if not math.isfinite(v):
            raise InvalidArgument(f"non-finite float is not a value: {v}")
        return v + 0.0  # folds -0.0 into 0.0 so equal values encode equally
    if t is bytes:
        assert isinstance(v, bytes)
        return v
    if (t is list or t is tuple or t is dict) and _depth >= MAX_NESTING:
        raise InvalidArgument("value nests too deeply")
    if t is list or t is tuple:
        assert isinstance(v, list | tuple)
        return [normalize_value(x, _depth + 1) for x in v]
    if t is dict:
        assert isinstance(v, dict)
        out: dict[str, Value] = {}
        for k in sorted(v, key=_dict_key_order):
            out[k] = normalize_value(v[k], _depth + 1)
        return out
    # Subclasses (IntEnum, StrEnum, OrderedDict, ...): normalize through the base type.
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return normalize_value(int(v), _depth)
    if isinstance(v, float):
        return normalize_value(float(v), _depth)
    if isinstance(v, str):
        return normalize_value(str.__str__(v), _depth)
    if isinstance(v, bytes):
        return bytes(v)
    if isinstance(v, list | tuple):
        return normalize_value(list(v), _depth)
    if isinstance(v, dict):
        return normalize_value(dict(v), _depth)
    raise InvalidArgument(f"{type(v).__name__} is not a value type")


def _dict_key_order(k: object) -> str:
    if type(k) is not str:
        raise InvalidArgument(f"dict keys in values must be str, got {type(k).__name__}")
    assert isinstance(k, str)
    return k


def pack_value(v: object) -> bytes:
    """Canonical msgpack bytes of a register value (validates and normalizes it first)."""
    return pack(normalize_value(v))


def unpack_value(blob: bytes) -> Value:
    """A fresh copy of a value stored as canonical bytes (trusted: we packed it)."""
    return msgpack.unpackb(blob, raw=False, use_list=True, strict_map_key=False)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- strict reader


class Reader:
    """Strict conversion of unpacked msgpack into validated values; failures are CodecError."""

    __slots__ = ("limits", "path")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.path: list[str] = []

    def fail(self, msg: str) -> NoReturn:
        where = "/".join(self.path)
        raise CodecError(f"{where}: {msg}" if where else msg)

    def arr(self, x: Any, what: str, length: int | None = None) -> list[Any]:
        if type(x) is not list:
            self.fail(f"{what}: expected an array, got {_kind(x)}")
        if length is not None and len(x) != length:
            self.fail(f"{what}: expected {length} items, got {len(x)}")
        return x

    def integer(self, x: Any, what: str, lo: int = 0, hi: int = INT_MAX) -> int:
        if type(x) is not int:
            self.fail(f"{what}: expected an int, got {_kind(x)}")
        if not lo <= x <= hi:
            self.fail(f"{what}: {x} outside [{lo}, {hi}]")
        return x

    def boolean(self, x: Any, what: str) -> bool:
        if type(x) is not bool:
            self.fail(f"{what}: expected a bool, got {_kind(x)}")
        return x

    def string(self, x: Any, what: str) -> str:
        if type(x) is not str:
            self.fail(f"{what}: expected a str, got {_kind(x)}")
        return x

    def binary(self, x: Any, what: str, length: int | None = None) -> bytes:
        if type(x) is not bytes:
            self.fail(f"{what}: expected bytes, got {_kind(x)}")
        if length is not None and len(x) != length:
            self.fail(f"{what}: expected {length} bytes, got {len(x)}")
        return x

    def replica(self, x: Any, what: str = "replica") -> str:
        s = self.string(x, what)
        if not s or len(s.encode("utf-8")) > MAX_REPLICA_ID_BYTES:
            self.fail(f"{what}: replica id must be 1..{MAX_REPLICA_ID_BYTES} bytes")
        return s

    def element(self, x: Any, depth: int = 0) -> Element:
        t = type(x)
        if x is None or t is str or t is bytes:
            return x  # type: ignore[no-any-return]
        if t is int:
            return x  # type: ignore[no-any-return]  # msgpack ints are always in 64-bit range
        if t is list:
            if depth >= self.limits.max_depth:
                self.fail("element nests too deeply")
            return tuple(self.element(y, depth + 1) for y in x)
        self.fail(f"{_kind(x)} is not an element type")

    def value(self, x: Any, depth: int = 0) -> Value:
        t = type(x)
        if x is None or t is bool or t is int or t is str or t is bytes:
            return x  # type: ignore[no-any-return]
        if t is float:
            if not math.isfinite(x):
                self.fail("non-finite float in a value")
            if x == 0.0 and math.copysign(1.0, x) < 0:
                self.fail("-0.0 is not canonical (use 0.0)")
            return x  # type: ignore[no-any-return]
        if depth >= self.limits.max_depth:
            self.fail("value nests too deeply")
        if t is list:
            return [self.value(y, depth + 1) for y in x]
        if t is _Pairs:
            out: dict[str, Value] = {}
            prev: str | None = None
            for k, v in x:
                if type(k) is not str:
                    self.fail(f"value dict key must be a str, got {_kind(k)}")
                if k in out:
                    self.fail(f"duplicate dict key {k!r} in a value")
                if prev is not None and not prev < k:
                    self.fail("value dict keys not in canonical (sorted) order")
                prev = k
                out[k] = self.value(v, depth + 1)
            return out
        self.fail(f"{_kind(x)} is not a value type")

    def value_blob(self, x: Any) -> bytes:
        """Read a value and return its canonical bytes (what registers store)."""
        try:
            return pack_value(self.value(x))
        except InvalidArgument as exc:
            self.fail(str(exc))

    def timestamp_parts(self, x: Any, what: str) -> tuple[int, int]:
        wall, logical = self.arr(x, what, 2)
        return self.integer(wall, f"{what} wall"), self.integer(logical, f"{what} logical")

    def increasing(self, keys: Iterable[Any], what: str) -> None:
        """Require strictly increasing keys: canonical order and no duplicates."""
        prev: Any = _NOTHING
        for k in keys:
            if prev is not _NOTHING and not prev < k:
                self.fail(f"{what}: not in canonical order or duplicated")
            prev = k

    def sorted_elements(
        self, xs: list[Any], what: str, conv: Callable[[Any], Element] | None = None
    ) -> list[Element]:
        """Read a canonical (strictly increasing by :func:`element_key`) list of elements."""
        out = [self.element(x) for x in xs] if conv is None else [conv(x) for x in xs]
        self.increasing((element_key(e) for e in out), what)
        return out


_NOTHING = object()


def _kind(x: object) -> str:
    if type(x) is _Pairs:
        return "map"
    if type(x) is list:
        return "array"
    return type(x).__name__
