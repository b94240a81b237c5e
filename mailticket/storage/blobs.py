"""Content-addressed blobs (raw messages, attachments): files under the data directory, or rows
in PostgreSQL (`[service] blob_store = "postgres"`) so that daemons on several hosts read them.

The name is the sha256 of the bytes: writing the same bytes twice is free,
and no sender-supplied filename ever becomes a path component. Both stores have one interface
(`put`, `put_async`, `get`, `head`, `where`); a blob that is not there raises FileNotFoundError
from either.

Layout (storage/blobfiles.py): `<root>/ab/<sha256>`, 256 folders made once each (a folder made
per blob cost more than writing the blob); blobs of earlier builds, `<root>/ab/cd/<sha256>`,
are still found.

A write that the file system refuses (disk full, read-only, no permission) raises
`DiskUnavailable`, one the database refuses `DatabaseUnavailable`: the environment's fault,
which pauses intake instead of failing the message.

A blob is stored before the transaction that names it commits (`PendingBlobs.settle`): the
folder store writes it on a helper thread meanwhile, so a rolled-back message can leave an
unnamed file behind, never a row naming a missing one; the database store inserts it in that
very transaction, so the row and its blob commit together.
"""

from __future__ import annotations

import errno
import hashlib
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, Table, func, select

from mailticket.storage.blobfiles import blob_path, legacy_path, write_blob
from mailticket.storage.prepared import inserter
from mailticket.storage.tables import Blob

BLOBS: Table = Blob.__table__  # type: ignore[attr-defined]


class Blobs(ABC):
    """What both stores share: the naming, and writes on helper threads."""

    def __init__(self) -> None:
        self._writer: ThreadPoolExecutor | None = None
        self._writer_lock = threading.Lock()

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the blobs are, for messages to an admin."""

    @property
    def local_root(self) -> Path | None:
        """The folder of a folder store, which parser workers write raw mail into; else None."""
        return None

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self._write(digest, data)
        return digest

    def put_async(self, data: bytes) -> tuple[str, Future[str]]:
        """Name the bytes now and write them on a helper thread.

        Creating a file is a journal operation that can block for a millisecond while the
        database syncs (and a database blob is a round trip); meanwhile the caller parses and
        stores. It must wait for the future (which raises what the write raised) before
        committing a row that names the blob.
        """
        digest = hashlib.sha256(data).hexdigest()
        with self._writer_lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="blob-writer")
        return digest, self._writer.submit(self._write, digest, data)

    def pending(self) -> PendingBlobs:
        """The blobs of one transaction: written on helper threads, waited for before it commits."""
        return _Written(self)

    @abstractmethod
    def _write(self, digest: str, data: bytes) -> str:
        """Store the bytes under `digest` (nothing to do when they are there)."""

    @abstractmethod
    def get(self, sha256: str) -> bytes:
        """The blob's bytes; FileNotFoundError when it is not stored."""

    @abstractmethod
    def head(self, sha256: str, size: int) -> bytes:
        """The first `size` bytes: enough for a header block without reading a big message whole."""


class PendingBlobs(ABC):
    """The blobs one transaction names (`Batch`): `put` names each at once, `settle` stores the
    rest on the transaction's connection just before its commit; what it raises fails the
    transaction (DiskUnavailable, DatabaseUnavailable: the environment's fault)."""

    @abstractmethod
    def put(self, data: bytes) -> str:
        """The sha256 that names `data`; storing it may still be under way."""

    @abstractmethod
    def settle(self, conn: Connection) -> None:
        """Every blob put is stored, or this raises."""


class _Written(PendingBlobs):
    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs
        self.writes: list[Future[str]] = []

    def put(self, data: bytes) -> str:
        digest, written = self.blobs.put_async(data)
        self.writes.append(written)
        return digest

    def settle(self, conn: Connection) -> None:
        for written in self.writes:
            written.result()


class _Inserted(PendingBlobs):
    """Rows of the database store, inserted in the transaction that names them, in one
    executemany sorted by name: two transactions naming the same attachments lock them in the
    same order, so they can wait for each other but never deadlock."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.rows[digest] = data
        return digest

    def settle(self, conn: Connection) -> None:
        if self.rows:
            rows = [{"sha256": digest, "data": self.rows[digest]} for digest in sorted(self.rows)]
            inserter(BLOBS, conn.dialect).insert_many(conn, rows, once=True)
            self.rows.clear()


class BlobStore(Blobs):
    """Files under `root` (the default: `<data_dir>/blobs`)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self._folders: set[str] = set()  # folders known to exist: no mkdir call per blob

    @property
    def where(self) -> str:
        return str(self.root)

    @property
    def local_root(self) -> Path:
        return self.root

    def path(self, sha256: str) -> Path:
        """Where the blob is (or, for a blob not stored yet, where it goes)."""
        path = blob_path(self.root, sha256)
        legacy = legacy_path(self.root, sha256)
        return legacy if not path.exists() and legacy.exists() else path

    def _write(self, digest: str, data: bytes) -> str:
        write_blob(self.root, digest, data, self._folders)
        return digest

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def head(self, sha256: str, size: int) -> bytes:
        with self.path(sha256).open("rb") as fh:
            return fh.read(size)


class DatabaseBlobStore(Blobs):
    """Rows of the `blobs` table (bytea) in the PostgreSQL database every daemon already shares."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    @property
    def where(self) -> str:
        return "the database's blobs table"

    def pending(self) -> PendingBlobs:
        """Inserted in the transaction that names them: no commit, connection or thread of their own
        (a blob of its own transaction was about a fifth of PostgreSQL's statements per message)."""
        return _Inserted()

    def _write(self, digest: str, data: bytes) -> str:
        """Committed without waiting for the WAL flush: the commit of the row that names the blob
        comes later and flushes the WAL up to itself, the blob's record included, so no
        committed row names a blob a crash could lose, and a blob costs no fsync of its own."""
        from sqlalchemy.dialects.postgresql import insert  # only this store needs PostgreSQL's dialect

        with self.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            conn.execute(insert(BLOBS).values(sha256=digest, data=data).on_conflict_do_nothing())
        return digest

    def get(self, sha256: str) -> bytes:
        return self._read(select(BLOBS.c.data), sha256)

    def head(self, sha256: str, size: int) -> bytes:
        return self._read(select(func.substring(BLOBS.c.data, 1, size)), sha256)

    def _read(self, query: Select[Any], sha256: str) -> bytes:
        with self.engine.connect() as conn:
            data = conn.execute(query.where(BLOBS.c.sha256 == sha256)).scalar_one_or_none()
        if data is None:
            raise FileNotFoundError(errno.ENOENT, "blob not in the database", sha256)
        return bytes(data)
