"""Grow-only set: elements can be added, never removed; merge is set union.

Guarantees: an element once added is in every replica's set after merging; a stale read shows a
subset of the current set. No metadata beyond the elements themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._wire import Element, Reader, check_element, check_replica, element_key
from crdtcoord.types._base import CRDTBase, Op, UpdateContext, wire_type

__all__ = ["GSet"]


@wire_type(tag=4)
class GSet(CRDTBase):
    """A grow-only set of elements (``None``, ``int``, ``str``, ``bytes``, tuples of those)."""

    __slots__ = ("_s",)

    @dataclass(frozen=True, slots=True)
    class Add(Op):
        """Add ``element``."""

        element: Element
        FIELDS = ("element",)

        def apply(self, state: GSet, ctx: UpdateContext) -> GSet:
            return state.add(ctx.replica, self.element)

    OPS = (Add,)

    def __init__(self) -> None:
        self._s: set[Element] = set()

    def value(self) -> frozenset[Element]:
        return frozenset(self._s)

    def __contains__(self, e: object) -> bool:
        return e in self._s

    def __len__(self) -> int:
        return len(self._s)

    def __iter__(self) -> Iterator[Element]:
        return iter(sorted(self._s, key=element_key))

    def add(self, replica: str, element: Element) -> GSet:
        """Add ``element`` (``replica`` is the actor, kept for the uniform mutator contract)."""
        check_replica(replica)
        e = check_element(element)
        delta = GSet()
        delta._s.add(e)
        self._s.add(e)
        return delta

    def merge(self, other: GSet) -> bool:
        self._check_mergeable(other)
        s = self._s
        before = len(s)
        s.update(other._s)
        return len(s) != before

    def copy(self) -> Self:
        c = type(self)()
        c._s = set(self._s)
        return c

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._s == other._s

    def stats(self) -> dict[str, int]:
        return {"elements": len(self._s), "metadata": 0}

    def to_payload(self) -> Any:
        return sorted(self._s, key=element_key)

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        c = cls()
        c._s = set(reader.sorted_elements(reader.arr(payload, "elements"), "elements"))
        return c
