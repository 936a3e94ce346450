"""The digest index behind anti-entropy: per-key digests, 256 buckets and a root, incrementally.

Each key contributes a 128-bit *leaf* ``H(key, digest(state))``. A bucket's hash is the XOR of
the leaves of the keys that hash into it, and the root is the XOR of every leaf, so a change to
one key updates its bucket and the root in O(1) (after re-digesting that key's state). Digests
are recomputed lazily, only for keys that changed since the last anti-entropy round.

Equal stores have equal roots; a root compare is therefore all that two replicas in sync need to
exchange, whatever the number of keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from crdtcoord.engine.messages import BUCKETS, ROOT_DIGEST, SHORT_DIGEST

__all__ = ["DigestIndex", "bucket_of"]

_MASK64 = (1 << 64) - 1


def bucket_of(key: str) -> int:
    """The bucket of ``key``: the first byte of BLAKE2b(key) (protocol-defined)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()[0]


def _leaf(key: str, digest: bytes) -> int:
    h = hashlib.blake2b(digest_size=ROOT_DIGEST, key=digest)
    h.update(key.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


class DigestIndex:
    """Key digests and the two-level Merkle summary of one store."""

    __slots__ = ("_buckets", "_digest_fn", "_digests", "_dirty", "_keys", "_leaves", "_root")

    def __init__(self, digest_fn: Callable[[str], bytes]) -> None:
        self._digest_fn = digest_fn
        # Sparse: a replica holding few keys (the common case in a 10,000-node simulation)
        # pays for the buckets it uses, not for all 256.
        self._buckets: dict[int, int] = {}
        self._root = 0
        self._leaves: dict[str, int] = {}
        self._digests: dict[str, bytes] = {}
        self._keys: dict[int, dict[str, None]] = {}
        self._dirty: dict[str, None] = {}

    def touch(self, key: str) -> None:
        """``key`` was created or changed: re-digest it before the next comparison."""
        self._dirty[key] = None

    def refresh(self) -> int:
        """Re-digest every changed key; returns how many were recomputed."""
        dirty = self._dirty
        if not dirty:
            return 0
        n = len(dirty)
        for key in dirty:
            digest = self._digest_fn(key)
            new = _leaf(key, digest)
            old = self._leaves.get(key)
            b = bucket_of(key)
            if old is None:
                self._keys.setdefault(b, {})[key] = None
                old = 0
            self._leaves[key] = new
            self._digests[key] = digest
            delta = old ^ new
            self._buckets[b] = self._buckets.get(b, 0) ^ delta
            self._root ^= delta
        self._dirty = {}
        return n

    def root(self) -> bytes:
        self.refresh()
        return self._root.to_bytes(ROOT_DIGEST, "big")

    def bucket_hashes(self) -> bytes:
        """All bucket hashes, truncated to 8 bytes each, in bucket order."""
        self.refresh()
        get = self._buckets.get
        return b"".join((get(b, 0) & _MASK64).to_bytes(SHORT_DIGEST, "big") for b in range(BUCKETS))

    def differing_buckets(self, theirs: bytes) -> list[int]:
        mine = self.bucket_hashes()
        w = SHORT_DIGEST
        return [
            b for b in range(BUCKETS) if mine[b * w : (b + 1) * w] != theirs[b * w : (b + 1) * w]
        ]

    def keys_in(self, bucket: int) -> list[tuple[str, bytes]]:
        """(key, 8-byte digest) of every key in ``bucket``, sorted by key."""
        self.refresh()
        d = self._digests
        return [(k, d[k][:SHORT_DIGEST]) for k in sorted(self._keys.get(bucket, ()))]

    def digest(self, key: str) -> bytes | None:
        self.refresh()
        return self._digests.get(key)

    def __len__(self) -> int:
        return len(self._leaves) + sum(1 for k in self._dirty if k not in self._leaves)
