"""Canonical, versioned msgpack wire format for CRDT states and deltas.

Every value is ``[type_tag, version, payload]`` (tags in :data:`TYPE_TAGS`, never reused). The
payload is canonical — sorted sets and maps, replica tables in sorted order, integers as integers —
so **equal states give equal bytes** and :func:`digest` can compare replicas.

Decoding is strict: size, depth, length and type limits (:class:`Limits`); canonical order is
checked, not assumed; causal invariants (every dot inside its context, non-negative escrow
rights, ...) are verified. Everything is decoded into fresh objects before anyone can merge them,
so bad input never half-applies. Any malformed input raises :class:`CodecError` and nothing else.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from crdtcoord._exceptions import CodecError, CrdtcoordError
from crdtcoord._wire import DEFAULT_LIMITS, Limits, Reader, pack, unpack
from crdtcoord.types import ALL_TYPES, CRDTBase, registered_types
from crdtcoord.types._base import Op, read_crdt, read_op

__all__ = [
    "DIGEST_SIZE",
    "TYPE_TAGS",
    "Limits",
    "decode",
    "decode_op",
    "digest",
    "encode",
    "encode_op",
    "fold_encoded",
    "op_from_wire",
]

#: Bytes in a :func:`digest`.
DIGEST_SIZE = 16

#: Wire tag of each built-in type.
TYPE_TAGS: dict[str, int] = {t.__name__: t.TYPE_TAG for t in ALL_TYPES}

T = TypeVar("T", bound=CRDTBase)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building or reading a big message.

    Encoding and decoding allocate many short-lived lists; on CPython 3.11 that triggers repeated
    full collections that scan the whole (large) live heap, which measured at ~40% of the time for
    a 100k-element set. The previous GC state is restored afterwards, even on error.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def to_wire(x: CRDTBase) -> list[Any]:
    """The unpacked envelope ``[tag, version, payload]`` (for embedding in larger messages)."""
    if not isinstance(x, CRDTBase) or registered_types().get(type(x).TYPE_TAG) is not type(x):
        raise TypeError(
            f"not a registered crdtcoord type: {type(x).__name__} (register it with"
            " @register_type(tag); a subclass of a registered type needs a tag of its own)"
        )
    return [x.TYPE_TAG, x.WIRE_VERSION, x.to_payload()]


def encode(x: CRDTBase) -> bytes:
    """Canonical bytes of a CRDT state or delta."""
    with _gc_paused():
        return pack(to_wire(x))


def from_wire(obj: Any, *, limits: Limits = DEFAULT_LIMITS, expect: type[T] | None = None) -> Any:
    """Build a CRDT from an already-unpacked envelope (see :func:`decode`)."""
    reader = Reader(limits)
    try:
        x = read_crdt(obj, reader)
    except CodecError:
        raise
    except CrdtcoordError as exc:  # a type's own check refused the state
        raise CodecError(f"invalid state: {exc}") from None
    except RecursionError:
        raise CodecError("structure nests too deeply") from None
    except Exception as exc:  # last line of defence: the contract is CodecError, always
        raise CodecError(f"internal decoder error: {type(exc).__name__}: {exc}") from None
    if expect is not None and type(x) is not expect:
        raise CodecError(f"expected a {expect.__name__}, got a {type(x).__name__}")
    return x


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expect: type[T] | None = None,
) -> Any:
    """Decode bytes from :func:`encode` into a fresh CRDT; :class:`CodecError` on any problem.

    ``expect`` additionally requires a given type.
    """
    with _gc_paused():
        return from_wire(unpack(data, limits), limits=limits, expect=expect)


def digest(x: CRDTBase) -> bytes:
    """A 16-byte BLAKE2b digest of the canonical encoding: equal states, equal digests.

    A type may define ``content_digest()`` (16 bytes) instead, when its encoding is not canonical
    or too large to hash on every change (documents: state vector + delete set)."""
    own = getattr(x, "content_digest", None)
    if own is not None:
        return own()  # type: ignore[no-any-return]
    return hashlib.blake2b(encode(x), digest_size=DIGEST_SIZE).digest()


def fold_encoded(blobs: list[bytes]) -> bytes | None:
    """The encoding of the join of encoded states/deltas of one type, without building them,
    when the type can fold its payloads (``fold_payloads``: documents merge their updates
    byte-wise); None otherwise. For storage compaction of blobs it wrote itself."""
    envelopes = [unpack(b, DEFAULT_LIMITS) for b in blobs]
    if not envelopes or any(type(e) is not list or len(e) != 3 for e in envelopes):
        return None
    tag, version = envelopes[0][0], envelopes[0][1]
    if any(e[0] != tag or e[1] != version for e in envelopes):
        return None
    cls = registered_types().get(tag) if type(tag) is int else None
    fold = getattr(cls, "fold_payloads", None)
    if fold is None or cls is None or version != cls.WIRE_VERSION:
        return None
    with _gc_paused():
        return pack([tag, version, fold([e[2] for e in envelopes])])


def encode_op(op: Op) -> bytes:
    """Canonical bytes of an op: ``[type_tag, op_code, [args...]]`` (nested ops inline)."""
    if not isinstance(op, Op):
        raise TypeError(f"not an op: {type(op).__name__}")
    return pack(op.to_wire())


def op_from_wire(obj: Any, *, limits: Limits = DEFAULT_LIMITS) -> Op:
    """Build an op from its unpacked wire form; :class:`CodecError` on any problem."""
    reader = Reader(limits)
    try:
        return read_op(obj, reader)
    except CodecError:
        raise
    except CrdtcoordError as exc:
        raise CodecError(f"invalid op: {exc}") from None
    except RecursionError:
        raise CodecError("op nests too deeply") from None
    except Exception as exc:  # the contract is CodecError, always
        raise CodecError(f"internal decoder error: {type(exc).__name__}: {exc}") from None


def decode_op(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> Op:
    """Decode bytes from :func:`encode_op` into a validated op; :class:`CodecError` otherwise."""
    return op_from_wire(unpack(data, limits), limits=limits)
