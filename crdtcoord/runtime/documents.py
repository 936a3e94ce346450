"""``node.document(name)``: a replicated Yjs document on a running node.

The handle gives the node's live pycrdt ``Doc`` and its root types. Edits can be made three ways,
all replicated the same way (as the update of their transaction):

* ``await notes.edit(fn)`` runs ``fn(doc)`` in one transaction and commits it, at any
  consistency level, with an optional op id;
* the helpers (``insert_text``, ``delete_text``, ``set``, ``delete``) are ops as data, which
  validate their values first (ints beyond 2**53 are refused);
* edits made directly on ``notes.doc`` or its roots (``text += "x"``) are captured by the
  document's observer and committed by the node on its loop right after (LOCAL consistency);
  ``await notes.commit()`` commits them now.

Changes from elsewhere (peers, Yjs clients) are applied under the origin
:data:`~crdtcoord.documents.REMOTE`, so pycrdt observers on the roots see them with
``event.transaction.origin == REMOTE`` and can tell them from local edits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crdtcoord._exceptions import InvalidArgument
from crdtcoord.documents import Document, InvalidUpdate
from crdtcoord.engine import LOCAL, MAJORITY, Consistency
from crdtcoord.types import CRDTBase, UpdateContext

if TYPE_CHECKING:
    from pycrdt import Array, Doc, Map, Text, XmlFragment

    from crdtcoord.runtime.node import Node

__all__ = ["DocumentHandle"]


def _take_local(state: CRDTBase, ctx: UpdateContext) -> CRDTBase:
    assert isinstance(state, Document)
    return state.take_local()


class DocumentHandle:
    """A Yjs document replicated by a node (see the module documentation)."""

    def __init__(self, node: Node, key: str) -> None:
        self.node = node
        self.key = key

    # ------------------------------------------------------------------ the live document

    def live(self) -> Document:
        """The node's live :class:`~crdtcoord.documents.Document` (created empty if absent)."""
        n = self.node
        state = n.engine.live(self.key)
        if state is None:
            n.apply_local(self.key, Document, _take_local)  # (creates the key, empty)
            state = n.engine.live(self.key)
        if not isinstance(state, Document):
            raise InvalidArgument(f"key {self.key!r} holds {type(state).__name__}, not a Document")
        n.attach_document(self.key, state)
        return state

    def peek(self) -> Document | None:
        """The live document if the key exists (None: it does not; nothing is created)."""
        state = self.node.engine.live(self.key)
        if state is None:
            return None
        if not isinstance(state, Document):
            raise InvalidArgument(f"key {self.key!r} holds {type(state).__name__}, not a Document")
        self.node.attach_document(self.key, state)
        return state

    @property
    def doc(self) -> Doc[Any]:
        """The live pycrdt ``Doc``. Root types taken from it stay valid unless the document
        switches client ids after a collision (see :attr:`collisions`): take them again then."""
        return self.live().doc

    @property
    def client_id(self) -> int:
        return self.live().client_id

    @property
    def collisions(self) -> int:
        """How often this replica switched client ids because another writer used its id."""
        return self.live().collisions

    def text(self, name: str) -> Text:
        """The root text ``name`` (indices of pycrdt's ``Text`` count UTF-8 bytes)."""
        return self.live().root(name, "text")  # type: ignore[no-any-return]

    def map(self, name: str) -> Map[Any]:
        return self.live().root(name, "map")  # type: ignore[no-any-return]

    def array(self, name: str) -> Array[Any]:
        return self.live().root(name, "array")  # type: ignore[no-any-return]

    def xml(self, name: str) -> XmlFragment:
        return self.live().root(name, "xml")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ reading

    def value(self) -> dict[str, Any]:
        """``{root: content}`` as this node has it now (see :meth:`Document.value`)."""
        state = self.node.engine.live(self.key)
        return state.value() if isinstance(state, Document) else {}

    async def read(
        self, consistency: Consistency = MAJORITY, timeout: float | None = None
    ) -> dict[str, Any]:
        """The content after joining the replies of ``consistency`` replicas."""
        v = await self.node.read(self.key, consistency=consistency, timeout=timeout)
        return {} if v is None else dict(v)

    def state_vector(self) -> bytes:
        """This replica's Yjs state vector (v1)."""
        return self.live().causal_summary()

    def get_update(self, state_vector: bytes | None = None) -> bytes:
        """A v1 update with what a replica at ``state_vector`` lacks (everything if None)."""
        return self.live().update_since(state_vector)

    # ------------------------------------------------------------------ writing

    async def edit(
        self,
        fn: Callable[[Doc[Any]], Any],
        *,
        consistency: Consistency = LOCAL,
        op_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Run ``fn(doc)`` in one transaction and commit it (with any direct edits pending)."""
        self.live()

        def update(state: CRDTBase, ctx: UpdateContext) -> CRDTBase:
            assert isinstance(state, Document)
            return state.edit(fn)

        await self.node.apply(
            self.key, update, Document, consistency=consistency, op_id=op_id, timeout=timeout
        )

    async def commit(
        self, *, consistency: Consistency = LOCAL, timeout: float | None = None
    ) -> None:
        """Commit the direct edits made on :attr:`doc` now (the node does it by itself on its
        loop); at a higher consistency, wait until that many replicas hold them."""
        self.live()
        await self.node.apply(
            self.key, _take_local, Document, consistency=consistency, timeout=timeout
        )

    async def insert_text(self, root: str, index: int, text: str, **kw: Any) -> None:
        """Insert ``text`` at character ``index`` of the text root ``root``."""
        await self._op(Document.InsertText(root, index, text), **kw)

    async def delete_text(self, root: str, index: int, length: int, **kw: Any) -> None:
        """Delete ``length`` characters from character ``index`` of the text root ``root``."""
        await self._op(Document.DeleteText(root, index, length), **kw)

    async def set(self, root: str, key: str, value: Any, **kw: Any) -> None:
        """Set ``key`` of the map root ``root`` (ints beyond 2**53 are refused)."""
        await self._op(Document.SetKey(root, key, value), **kw)

    async def delete(self, root: str, key: str, **kw: Any) -> None:
        """Delete ``key`` from the map root ``root``."""
        await self._op(Document.DeleteKey(root, key), **kw)

    async def apply_update(self, update: bytes, **kw: Any) -> None:
        """Apply a v1 update made elsewhere (validated first: :class:`InvalidUpdate`)."""
        try:
            op = Document.Apply(update)
        except InvalidArgument as exc:
            raise InvalidUpdate(str(exc)) from None
        await self._op(op, **kw)

    def apply_client_update(self, update: bytes) -> None:
        """Apply a Yjs client's update now, at LOCAL consistency (the y-protocols room's
        entry point): :class:`InvalidUpdate` if it is malformed or does not integrate."""
        try:
            op = Document.Apply(update)
        except InvalidArgument as exc:
            raise InvalidUpdate(str(exc)) from None
        if self.live().covers(update):
            return  # (nothing new, e.g. a provider echoing back what it was sent: no delta)
        self.node.apply_local(self.key, Document, op)

    async def _op(self, op: Any, **kw: Any) -> None:
        self.live()
        await self.node.apply(self.key, op, Document, **kw)

    def __repr__(self) -> str:
        return f"DocumentHandle({self.key!r})"
