"""The digest tree behind anti-entropy: per-key digests in a 16-ary Merkle tree over key hashes.

Every key has a 64-bit *key hash* (BLAKE2b of the key) and a *leaf* ``H(key, digest(state))``.
The tree's node at ``(level, prefix)`` covers the keys whose key hash starts with the
``4 * level`` bits ``prefix``; its hash is the XOR of the (64-bit truncated) leaves under it, and
the root is the XOR of the full 128-bit leaves. XOR makes every update O(levels): a key whose
state changed flips its leaf in each node above it.

Levels 1-3 (16, 256 and 4,096 nodes) are maintained incrementally with their key counts; deeper
nodes are computed on demand from the keys of their level-3 ancestor (a few keys each up to
millions of keys), which keeps memory proportional to the number of keys. Digests are recomputed
lazily, only for keys that changed since the last anti-entropy exchange.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FANOUT",
    "LEAF_MAX",
    "LEVEL_BITS",
    "MAX_LEVEL",
    "ROOT_DIGEST",
    "SHORT_DIGEST",
    "DigestIndex",
    "TreeItem",
    "key_hash",
    "owns",
]

#: The digest tree (protocol constants, both sides must agree): every level splits a node on the
#: next LEVEL_BITS bits of the 64-bit key hash into FANOUT children, down to MAX_LEVEL.
LEVEL_BITS = 4
FANOUT = 1 << LEVEL_BITS
MAX_LEVEL = 8
#: A side lists a node's keys instead of its children once the node holds at most this many.
LEAF_MAX = 12
#: Bytes of a node hash / key digest on the wire during anti-entropy.
SHORT_DIGEST = 8
#: Bytes of the root digest.
ROOT_DIGEST = 16

_MASK64 = (1 << 64) - 1
_COUNT = 1 << 64  # node values pack (count << 64) | hash64
_MAINTAINED = 3


def key_hash(key: str) -> int:
    """The key's 64-bit position in the tree (protocol-defined: BLAKE2b-64 of the UTF-8 key)."""
    return int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


def prefix_of(h: int, level: int) -> int:
    return h >> (64 - LEVEL_BITS * level) if level else 0


def owns(level: int, prefix: int, key: str) -> bool:
    """Does ``key`` hash under node (level, prefix)? (A peer's leaf list is checked with it.)"""
    return level == 0 or key_hash(key) >> (64 - LEVEL_BITS * level) == prefix


@dataclass(frozen=True, slots=True)
class TreeItem:
    """One side's view of one tree node during an exchange: its 16 child hashes (a branch), or
    the keys under it with their 8-byte state digests, sorted by key (a leaf list)."""

    level: int
    prefix: int
    children: bytes | None = None
    keys: tuple[tuple[str, bytes], ...] = ()

    @property
    def is_branch(self) -> bool:
        return self.children is not None

    def wire_size(self) -> int:
        """Rough encoded size (for the per-step byte budget)."""
        if self.children is not None:
            return 140
        return 16 + sum(12 + len(k) for k, _ in self.keys)


def _leaf(key: str, digest: bytes) -> int:
    h = hashlib.blake2b(digest_size=ROOT_DIGEST, key=digest)
    h.update(key.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


class DigestIndex:
    """Key digests and the Merkle tree of one store."""

    __slots__ = (
        "_digest_fn",
        "_digests",
        "_groups",
        "_hashes",
        "_leaves",
        "_nodes",
        "_root",
        "dirty",
    )

    def __init__(self, digest_fn: Callable[[str], bytes | None]) -> None:
        self._digest_fn = digest_fn
        self._root = 0
        self._leaves: dict[str, int] = {}
        self._digests: dict[str, bytes] = {}
        self._hashes: dict[str, int] = {}
        # levels 1..3: prefix -> (count << 64) | hash64 (sparse)
        self._nodes: list[dict[int, int]] = [{} for _ in range(_MAINTAINED + 1)]
        # level-3 prefix -> keys under it
        self._groups: dict[int, dict[str, None]] = {}
        #: keys changed since the last refresh (a caller may add to it directly: it is touch())
        self.dirty: dict[str, None] = {}

    def touch(self, key: str) -> None:
        """``key`` was created or changed: re-digest it before the next comparison."""
        self.dirty[key] = None

    def remove(self, key: str) -> None:
        """``key`` is gone from the store (it expired): take it out of the tree."""
        self.dirty.pop(key, None)
        old = self._leaves.pop(key, None)
        if old is None:
            return
        h = self._hashes.pop(key)
        self._digests.pop(key, None)
        g = prefix_of(h, _MAINTAINED)
        group = self._groups.get(g)
        if group is not None:
            group.pop(key, None)
            if not group:
                del self._groups[g]
        self._root ^= old
        d64 = old & _MASK64
        nodes = self._nodes
        for level in range(1, _MAINTAINED + 1):
            p = prefix_of(h, level)
            v = (nodes[level].get(p, 0) - _COUNT) ^ d64
            if v:
                nodes[level][p] = v
            else:
                nodes[level].pop(p, None)

    def refresh(self) -> int:
        """Re-digest every changed key; returns how many were recomputed."""
        dirty = self.dirty
        if not dirty:
            return 0
        n = len(dirty)
        nodes = self._nodes
        gone: list[str] = []
        for key in dirty:
            digest = self._digest_fn(key)
            if digest is None:  # (the key went away after it was touched)
                gone.append(key)
                continue
            new = _leaf(key, digest)
            old = self._leaves.get(key)
            h = self._hashes.get(key)
            add = 0
            if h is None:
                h = self._hashes[key] = key_hash(key)
                g = prefix_of(h, _MAINTAINED)
                self._groups.setdefault(g, {})[key] = None
                old = 0
                add = _COUNT
            assert old is not None
            delta = old ^ new
            self._leaves[key] = new
            self._digests[key] = digest
            self._root ^= delta
            d64 = delta & _MASK64
            for level in range(1, _MAINTAINED + 1):
                p = prefix_of(h, level)
                nodes[level][p] = (nodes[level].get(p, 0) ^ d64) + add
        dirty.clear()
        for key in gone:
            self.remove(key)
        return n

    # ------------------------------------------------------------------ queries

    def root(self) -> bytes:
        self.refresh()
        return self._root.to_bytes(ROOT_DIGEST, "big")

    def __len__(self) -> int:
        self.refresh()
        return len(self._leaves)

    def digest(self, key: str) -> bytes | None:
        self.refresh()
        return self._digests.get(key)

    def _group_keys(self, level: int, prefix: int) -> list[str]:
        """Keys under a node at level >= 3 (from its level-3 ancestor's group)."""
        g = self._groups.get(prefix >> (LEVEL_BITS * (level - _MAINTAINED)))
        if not g:
            return []
        if level == _MAINTAINED:
            return list(g)
        hashes = self._hashes
        return [k for k in g if prefix_of(hashes[k], level) == prefix]

    def count(self, level: int, prefix: int) -> int:
        """Number of keys under a node."""
        self.refresh()
        if level == 0:
            return len(self._leaves)
        if level <= _MAINTAINED:
            return self._nodes[level].get(prefix, 0) >> 64
        return len(self._group_keys(level, prefix))

    def children(self, level: int, prefix: int) -> bytes:
        """The 16 child hashes of a node, 8 bytes each, in child order."""
        self.refresh()
        child = level + 1
        hashes = [0] * FANOUT
        if child <= _MAINTAINED:
            table = self._nodes[child]
            base = prefix << LEVEL_BITS
            for c in range(FANOUT):
                hashes[c] = table.get(base + c, 0) & _MASK64
        else:  # below the maintained levels: fold the keys of the level-3 group
            leaves, kh = self._leaves, self._hashes
            for k in self._group_keys(level, prefix):
                hashes[prefix_of(kh[k], child) & (FANOUT - 1)] ^= leaves[k] & _MASK64
        return b"".join(x.to_bytes(SHORT_DIGEST, "big") for x in hashes)

    def item(self, level: int, prefix: int) -> TreeItem:
        """This side's description of a node: its keys if few (a leaf list), else its children."""
        if level >= MAX_LEVEL or self.count(level, prefix) <= LEAF_MAX:
            return TreeItem(level, prefix, None, tuple(self.keys_under(level, prefix)))
        return TreeItem(level, prefix, self.children(level, prefix))

    def keys_under(self, level: int, prefix: int) -> list[tuple[str, bytes]]:
        """(key, 8-byte digest) of every key under a node, sorted by key."""
        self.refresh()
        if level >= _MAINTAINED:
            keys = self._group_keys(level, prefix)
        else:
            keys = []
            span = LEVEL_BITS * (_MAINTAINED - level)
            lo = prefix << span
            occupied = self._nodes[_MAINTAINED]
            if len(occupied) < (1 << span):
                for g in occupied:
                    if g >> span == prefix:
                        keys.extend(self._groups.get(g, ()))
            else:
                for g in range(lo, lo + (1 << span)):
                    keys.extend(self._groups.get(g, ()))
        d = self._digests
        return [(k, d[k][:SHORT_DIGEST]) for k in sorted(keys)]
