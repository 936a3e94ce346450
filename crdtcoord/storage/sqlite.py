"""SqliteStorage: a node's durable state in one SQLite file (stdlib ``sqlite3``, WAL mode).

Layout (schema 2):

* ``meta(k, v)``: schema version, node id, incarnation, driver counters;
* ``states(key, state, size)``: the last compacted state of each key (the codec's bytes);
* ``deltas(id, key, delta, replace)``: what was persisted since, in order;
* ``versions(key, vv)``: version vectors of critical keys;
* ``op_ids(seq, op_id)``: the window of operation ids applied.

Every :meth:`write` is **one transaction** (the host calls it once per group of effects, before
any message that depends on them leaves the node). Opening replays each key's deltas over its
state. A key is compacted (its deltas folded into its state, in a transaction of its own) once
its deltas outweigh both its state and twice its largest delta, so compaction work stays
proportional to the bytes written and a restart reads at most about three times the store. (A
single large delta, such as a big paste into a document, is not rewritten at once: folding it
alone would only copy it, stalling the writer for nothing.)

**Durability.** ``durability="process"`` (the default) is WAL with ``synchronous=NORMAL``: a
committed write survives the process being killed (``kill -9``) but not a power loss or an OS
crash, which can roll back the last transactions. ``durability="power"`` is ``synchronous=FULL``:
every commit is synced to the disk before the host sends anything, surviving power loss, at the
cost of an fsync per write (disk-dependent, measured 7.4k commits/s vs 61k here).

**Checkpoints off the writer's path.** SQLite's automatic WAL checkpoint runs inside the commit
that crosses its threshold and syncs the database file there: on the node's event loop, a stall
of 10-50 ms every few thousand writes (it was the largest part of the HTTP benchmark's
propagation p99). The writer's connection has automatic checkpoints off; a background thread,
with its own connection, runs a passive checkpoint (which never blocks a writer) once at least
``checkpoint_pages`` rows were written (a row takes about two WAL pages), or ``checkpoint_every``
seconds after a write.
The WAL restarts from its beginning only once every frame was copied, which a checkpoint running
beside a writer that never pauses cannot achieve: if the WAL file reaches eight times
``checkpoint_pages`` pages after a write (its compactions included), the writer checkpoints and
truncates it itself (``inline_checkpoints`` counts them; only sustained write load gets there),
waiting at most 50 ms for a reader (the thread stands down during that attempt): with another
process's
read snapshot open, it tries again a second later and the WAL grows meanwhile, as it would with
SQLite's own checkpoints. Durability is the
same either way: a commit is durable in the WAL before it returns.

A data dir is locked by the process that opened it (a second opener gets :class:`StorageError`),
because two processes writing one node's state would reuse its dots.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgpack

from crdtcoord._exceptions import CodecError, CrdtcoordError
from crdtcoord._wire import Reader, pack, unpack
from crdtcoord.clocks.vv import VersionVector
from crdtcoord.codec import decode, encode, fold_encoded
from crdtcoord.engine.effects import Persist
from crdtcoord.host.storage import Snapshot, StorageError
from crdtcoord.types import CRDTBase

__all__ = ["SCHEMA", "SqliteStorage"]

#: The schema this build writes. Older ones are migrated on open; newer ones are refused.
SCHEMA = 2

_DDL_V2 = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY, state BLOB NOT NULL,
                                   size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deltas (id INTEGER PRIMARY KEY, key TEXT NOT NULL,
                                   delta BLOB NOT NULL, replace INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deltas_key ON deltas (key, id);
CREATE TABLE IF NOT EXISTS versions (key TEXT PRIMARY KEY, vv BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS op_ids (seq INTEGER PRIMARY KEY, op_id TEXT NOT NULL UNIQUE);
"""

#: Schema 1 (crdtcoord 0.1 development builds): op ids were one msgpack list in ``meta``. Kept
#: to migrate such data dirs (and to test the migration).
DDL_V1 = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY, state BLOB NOT NULL,
                                   size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deltas (id INTEGER PRIMARY KEY, key TEXT NOT NULL,
                                   delta BLOB NOT NULL, replace INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (key TEXT PRIMARY KEY, vv BLOB NOT NULL) WITHOUT ROWID;
"""

_FIXED = ("schema", "node_id", "incarnation")


def _ddl(db: sqlite3.Connection, script: str) -> None:
    """Run DDL statements inside the caller's transaction (executescript would commit it)."""
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


class SqliteStorage:
    """A node's durable state in SQLite (see the module documentation)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["process", "power"] = "process",
        op_window: int = 10_000,
        compact_min_bytes: int = 64 * 1024,
        checkpoint_pages: int = 1000,
        checkpoint_every: float = 1.0,
    ) -> None:
        if durability not in ("process", "power"):
            raise StorageError(f"durability is 'process' or 'power', not {durability!r}")
        if type(checkpoint_pages) is not int or checkpoint_pages < 1:
            raise StorageError("checkpoint_pages is a positive int")
        if type(checkpoint_every) not in (int, float) or not 0 < checkpoint_every < float("inf"):
            raise StorageError("checkpoint_every is a positive number of seconds")
        self._ckpt_pages = checkpoint_pages
        self._ckpt_every = float(checkpoint_every)
        self._ckpt: _Checkpointer | None = None
        self.path = Path(path)
        self.durability = durability
        self._window = op_window
        self._compact_min = compact_min_bytes
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._node: str | None = None
        #: per key: bytes of the compacted state, bytes of the deltas since
        self._state_size: dict[str, int] = {}
        self._delta_size: dict[str, int] = {}
        self._delta_max: dict[str, int] = {}
        #: counters for status and metrics
        self.writes = 0
        self.compactions = 0
        #: checkpoints the writer had to run itself (the WAL outgrew what the thread kept up with)
        self.inline_checkpoints = 0
        self._inline_after = 0.0  # (monotonic time before which no inline checkpoint is tried)
        self._due: dict[str, None] = {}  # keys to compact, oldest first (see _compact_heavy)
        self._wal = str(self.path) + "-wal"
        self.last_write_s = 0.0

    # ------------------------------------------------------------------ connection

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StorageError(
                f"cannot use {self.path.parent} as a data dir: {e.strerror or e}"
            ) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            raise StorageError(
                f"{self.path} is in use by another process (one process per data dir)"
            ) from None
        self._lock = lock
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            sync = "NORMAL" if self.durability == "process" else "FULL"
            db.execute(f"PRAGMA synchronous={sync}")
            db.execute("PRAGMA wal_autocheckpoint=0")  # (the checkpointer thread does them)
        except sqlite3.DatabaseError as exc:
            self._unlock()
            raise StorageError(f"{self.path} is not a usable SQLite database: {exc}") from None
        self._db = db
        self._ckpt = _Checkpointer(self.path, sync, self._ckpt_pages, self._ckpt_every)
        # (a storage dropped without close() does not leave its thread behind)
        weakref.finalize(self, self._ckpt.stop, False)
        return db

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def close(self) -> None:
        """Close the database and release the data dir."""
        if self._ckpt is not None:
            self._ckpt.stop()
            self._ckpt = None
        if self._db is not None:
            self._db.close()
            self._db = None
        self._unlock()

    @property
    def checkpoints(self) -> int:
        """WAL checkpoints run by the background thread (for status and tests)."""
        return self._ckpt.runs if self._ckpt is not None else 0

    def _bound_wal(self) -> None:
        """If the WAL outgrew 8 x ``checkpoint_pages`` (writes never paused long enough for a
        background checkpoint to copy every frame, which the WAL needs to restart from its
        beginning), checkpoint and truncate it here, between two transactions of the only
        writer. Waits at most 50 ms for a reader (another process's open snapshot): then it is
        tried again a second later, and the WAL grows meanwhile, as it would with SQLite's own
        checkpoints."""
        assert self._db is not None
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return
        if size < 8 * self._ckpt_pages * 4096:
            return
        assert self._ckpt is not None
        self._ckpt.paused = True  # (its passive copies would only compete with this one)
        db = self._db
        busy = 1
        try:
            db.execute("PRAGMA busy_timeout=50")  # (the thread's copy ends; a reader's won't)
            try:
                busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]
            finally:
                db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            _log.warning("inline WAL checkpoint of %s failed (retried): %s", self.path, exc)
        self._ckpt.paused = False  # (done or not: the thread goes on with its own checkpoints)
        if busy:  # (the thread's last copy still running: at the next write; a reader: 1 s)
            if not self._ckpt.running:
                self._inline_after = time.monotonic() + 1.0
            return
        self.inline_checkpoints += 1

    def __enter__(self) -> SqliteStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    def _tables(self, db: sqlite3.Connection) -> set[str]:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _meta(self, db: sqlite3.Connection) -> dict[str, Any]:
        return dict(db.execute("SELECT k, v FROM meta").fetchall())

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Bring an older schema to :data:`SCHEMA`, one step at a time, in one transaction."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:
                _ddl(db, _DDL_V2)
                row = db.execute("SELECT v FROM meta WHERE k = 'op_ids'").fetchone()
                ids = msgpack.unpackb(row[0]) if row is not None else []
                rows = [(i,) for i in ids]
                db.executemany("INSERT OR IGNORE INTO op_ids(op_id) VALUES (?)", rows)
                db.execute("DELETE FROM meta WHERE k = 'op_ids'")
                db.execute("UPDATE meta SET v = 2 WHERE k = 'schema'")
                version = 2
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ Storage protocol

    def open(self, node_id: str) -> Snapshot | None:
        try:
            return self._open(node_id)
        except StorageError:
            self.close()  # a refused data dir is left as it was, and unlocked
            raise
        except sqlite3.Error as exc:  # (a damaged file: tables missing, say)
            self.close()
            raise StorageError(f"{self.path} is not a usable data dir: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _open(self, node_id: str) -> Snapshot | None:
        db = self._connect()
        if "meta" not in self._tables(db):
            return None
        meta = self._meta(db)
        if "node_id" not in meta:
            return None  # created but never initialised: as good as new
        version = meta.get("schema")
        if type(version) is not int or version < 1:
            raise StorageError(f"{self.path}: unknown schema version {version!r}")
        if version > SCHEMA:
            raise StorageError(
                f"{self.path} was written with schema {version}, newer than this crdtcoord "
                f"reads ({SCHEMA}): upgrade crdtcoord, or use another data dir"
            )
        if meta["node_id"] != node_id:
            raise StorageError(f"{self.path} holds node {meta['node_id']!r}, not {node_id!r}")
        if version < SCHEMA:
            self._migrate(db, version)
            meta = self._meta(db)
        self._node = node_id
        try:
            return self._load(db, node_id, meta)
        except (CodecError, CrdtcoordError, msgpack.exceptions.UnpackException) as exc:
            raise StorageError(f"{self.path} holds a state that does not decode: {exc}") from None

    def _load(self, db: sqlite3.Connection, node_id: str, meta: dict[str, Any]) -> Snapshot:
        states: dict[str, CRDTBase] = {}
        for key, blob, size in db.execute("SELECT key, state, size FROM states"):
            states[key] = decode(blob)
            self._state_size[key] = size
        for key, blob, replace in db.execute("SELECT key, delta, replace FROM deltas ORDER BY id"):
            d = decode(blob)
            cur = states.get(key)
            if cur is None or replace:
                states[key] = d
            else:
                cur.merge(d)
            self._delta_size[key] = self._delta_size.get(key, 0) + len(blob)
            self._delta_max[key] = max(self._delta_max.get(key, 0), len(blob))
        versions = {
            key: VersionVector.from_wire(unpack(blob), Reader())
            for key, blob in db.execute("SELECT key, vv FROM versions")
        }
        op_ids = [r[0] for r in db.execute("SELECT op_id FROM op_ids ORDER BY seq")]
        counters = {k: v for k, v in meta.items() if k not in _FIXED and type(v) is int}
        return Snapshot(node_id, int(meta["incarnation"]), states, versions, op_ids, counters)

    def create(self, node_id: str, incarnation: int) -> None:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            _ddl(db, _DDL_V2)
            for table in ("meta", "states", "deltas", "versions", "op_ids"):
                db.execute(f"DELETE FROM {table}")
            db.executemany(
                "INSERT INTO meta(k, v) VALUES (?, ?)",
                [("schema", SCHEMA), ("node_id", node_id), ("incarnation", incarnation)],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.close()
            raise
        self._node = node_id
        self._state_size.clear()
        self._delta_size.clear()

    def write(self, batch: Sequence[Persist], meta: dict[str, int] | None = None) -> None:
        if self._db is None or self._node is None:
            raise StorageError("write before open/create")
        db = self._db
        t0 = time.perf_counter()
        gone = {p.key for p in batch if p.delete}  # (an expired key is never written again)
        deletes = [(k,) for k in gone]
        rows = [(p.key, encode(p.delta), int(p.replace)) for p in batch if p.key not in gone]
        versions = [
            (p.key, pack(p.vv.to_wire())) for p in batch if p.vv is not None and p.key not in gone
        ]
        op_ids = [(p.op_id,) for p in batch if p.op_id is not None]
        try:
            db.execute("BEGIN IMMEDIATE")
            if deletes:
                db.executemany("DELETE FROM deltas WHERE key = ?", deletes)
                db.executemany("DELETE FROM states WHERE key = ?", deletes)
                db.executemany("DELETE FROM versions WHERE key = ?", deletes)
            if rows:
                db.executemany("INSERT INTO deltas(key, delta, replace) VALUES (?, ?, ?)", rows)
            if versions:
                db.executemany("INSERT OR REPLACE INTO versions(key, vv) VALUES (?, ?)", versions)
            if op_ids:
                db.executemany("INSERT OR IGNORE INTO op_ids(op_id) VALUES (?)", op_ids)
                db.execute(
                    "DELETE FROM op_ids WHERE seq <= (SELECT MAX(seq) FROM op_ids) - ?",
                    (self._window,),
                )
            if meta:
                bad = [k for k in meta if k in _FIXED]
                if bad:
                    raise StorageError(f"meta keys {bad} are the storage's own")
                db.executemany("INSERT OR REPLACE INTO meta(k, v) VALUES (?, ?)", meta.items())
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StorageError(f"write to {self.path} failed: {exc}") from exc
        self.writes += 1
        ckpt = self._ckpt
        if ckpt is not None:
            if not ckpt.alive:  # (it could not run: checkpoints go back inline)
                db.execute("PRAGMA wal_autocheckpoint=1000")
                self._ckpt = None
            else:
                ckpt.wrote(db.total_changes)
        for (key,) in deletes:
            self._state_size.pop(key, None)
            self._delta_size.pop(key, None)
            self._delta_max.pop(key, None)
        for key, blob, replace in rows:
            if replace:
                self._compact(key)
            else:
                self._delta_size[key] = self._delta_size.get(key, 0) + len(blob)
                self._delta_max[key] = max(self._delta_max.get(key, 0), len(blob))
        self._compact_heavy(k for k, _, _ in rows)
        if self._ckpt is not None and time.monotonic() >= self._inline_after:
            self._bound_wal()
        self.last_write_s = time.perf_counter() - t0

    # ------------------------------------------------------------------ compaction

    def _compact_heavy(self, keys: Iterable[str]) -> None:
        """Compact the keys whose deltas outweigh their state, at most ``_COMPACT_PER_WRITE``
        per write (the others wait for the next writes: many keys coming due at once must not
        stall one write for seconds), keeping the WAL bounded between two compactions."""
        due = self._due
        for key in keys:
            if self._heavy(key):
                due[key] = None
        n = 0
        while due and n < _COMPACT_PER_WRITE:
            key = next(iter(due))
            del due[key]
            if self._heavy(key):  # (still: it may have been deleted or compacted meanwhile)
                self._compact(key)
                n += 1
                if self._ckpt is not None and time.monotonic() >= self._inline_after:
                    self._bound_wal()

    def _heavy(self, key: str) -> bool:
        pending = self._delta_size.get(key, 0)
        floor = max(self._compact_min, self._state_size.get(key, 0))
        return pending > floor and pending > 2 * self._delta_max.get(key, 0)

    def _compact(self, key: str) -> None:
        """Fold ``key``'s deltas into its state (one transaction)."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT state FROM states WHERE key = ?", (key,)).fetchone()
            blobs: list[bytes] = [row[0]] if row is not None else []
            last = 0
            for id_, blob, replace in db.execute(
                "SELECT id, delta, replace FROM deltas WHERE key = ? ORDER BY id", (key,)
            ):
                blobs = [blob] if replace else [*blobs, blob]
                last = id_
            if blobs:
                # (types that fold their payloads byte-wise skip decoding: a document's
                # updates are merged without being read again)
                blob = fold_encoded(blobs) or encode(_join_blobs(blobs))
                db.execute(
                    "INSERT OR REPLACE INTO states(key, state, size) VALUES (?, ?, ?)",
                    (key, blob, len(blob)),
                )
                db.execute("DELETE FROM deltas WHERE key = ? AND id <= ?", (key, last))
                self._state_size[key] = len(blob)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._delta_size[key] = 0
        self._delta_max[key] = 0
        self.compactions += 1

    def compact_all(self) -> None:
        """Fold every key's deltas into its state (e.g. before a backup)."""
        for key in list(self._delta_size):
            if self._delta_size[key]:
                self._compact(key)

    def __repr__(self) -> str:
        return f"SqliteStorage({str(self.path)!r}, durability={self.durability!r})"


def _join_blobs(blobs: list[bytes]) -> CRDTBase:
    """Decode a stored state and the deltas after it, and join them."""
    state: CRDTBase = decode(blobs[0])
    for b in blobs[1:]:
        state.merge(decode(b))
    return state


_log = logging.getLogger("crdtcoord.storage")

#: Compactions one write runs at most (each its own transaction); the rest wait for later writes.
_COMPACT_PER_WRITE = 8


class _Checkpointer:
    """Runs passive WAL checkpoints in a thread of its own, with its own connection, so that
    the writer (the node's event loop) never syncs the database file inside a commit.

    The writer reports its writes (a cheap counter); the thread checkpoints once the WAL has
    grown by about ``pages`` pages, or ``every`` seconds after the first write since the last
    checkpoint. A failed checkpoint is logged and retried at the next period: the WAL only grows
    meanwhile, nothing is lost (a commit is durable in the WAL).
    """

    def __init__(self, path: Path, sync: str, pages: int, every: float) -> None:
        self._path = path
        self._sync = sync
        self._pages = pages
        self._every = every
        self._wake = threading.Event()
        self._stop = False
        self._dirty = False
        self._changes_at_last = 0
        self.runs = 0
        #: the writer is truncating an oversized WAL itself: stand down until it has
        self.paused = False
        self.running = False  # (a checkpoint is copying now)
        self._thread = threading.Thread(
            target=self._run, name=f"crdtcoord-checkpoint:{path.name}", daemon=True
        )
        self._thread.start()

    def wrote(self, total_changes: int) -> None:
        """The writer committed (``total_changes``: the connection's row-change counter)."""
        self._dirty = True
        # (rows are a cheap proxy for WAL pages: about two pages per row, measured)
        if total_changes - self._changes_at_last >= self._pages:
            self._changes_at_last = total_changes
            self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop

    def stop(self, wait: bool = True) -> None:
        self._stop = True
        self._wake.set()
        if wait:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(str(self._path), isolation_level=None, timeout=30)
            db.execute(f"PRAGMA synchronous={self._sync}")
            while True:
                self._wake.wait(self._every)
                self._wake.clear()
                if not self._dirty or self.paused:
                    if self._stop:
                        return
                    continue
                self._dirty = False
                self.running = True
                try:
                    # (fetched to its end: a statement left open would hold a read snapshot)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:
                    self._dirty = True
                    _log.warning("WAL checkpoint of %s failed (retried): %s", self._path, exc)
                finally:
                    self.running = False
                if self._stop:
                    return
        except sqlite3.Error as exc:
            _log.error("WAL checkpointer of %s stopped: %s", self._path, exc)
        finally:
            if db is not None:
                db.close()
