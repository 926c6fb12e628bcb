"""One connection to the state file: WAL, short `BEGIN IMMEDIATE` writes, and the schema brought up to date.

The CLI and the daemon are separate processes that open the same file, so the file is in WAL mode (readers
never wait for the writer) and every write is one short `BEGIN IMMEDIATE` transaction: the write lock is
taken up front, so two writers never deadlock trying to upgrade a read lock, and the busy timeout makes the
second one wait instead of failing. Safe to share between the threads of one process. Whether a failure is
the file's fault (damage: StoreDamaged) or one a later try may get past (busy, full: `unavailable`) is also
decided here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mtld.disk import free_bytes, open_private, private_dir
from mtld.store.records import SchemaTooNew, StoreDamaged
from mtld.store.schema import BUSY_TIMEOUT_S, MIGRATIONS, statements

BACKUP_SUFFIX = ".backup"  # the daemon's copy at its start, beside the store: state.db.backup


class Database:
    """The open state file: `write()` is one transaction, `rows()` one read."""

    def __init__(self, path: Path):
        self.path = path
        private_dir(self.path.parent)
        self._create_or_check_not_empty()
        self._lock = threading.RLock()
        self.connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                          check_same_thread=False)
        try:
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA foreign_keys = ON")
            self._check()
            self._enter_wal()
            self._migrate()
        except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
            self.connection.close()
            if isinstance(e, sqlite3.OperationalError) and not _damage(e):
                raise  # locked, full, unreadable: not the file's fault
            raise StoreDamaged(self._damaged(str(e))) from None
        except BaseException:
            self.connection.close()
            raise

    def _create_or_check_not_empty(self) -> None:
        """Create the file private before SQLite does (its -wal and -shm files copy this mode). A file that is
        there and empty is never taken for a new store: a new store gets its header within moments of being
        made (WAL is switched on at once), so an empty one is another process's that is just starting, or
        damage (a copy cut short, a disk that filled up)."""
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            return  # ours: new
        except FileExistsError:
            pass
        deadline = time.monotonic() + 2.0
        while self.path.stat().st_size == 0:
            if time.monotonic() > deadline:
                raise StoreDamaged(self._damaged("the file is empty"))
            time.sleep(0.02)

    def _check(self) -> None:
        """SQLite's own check of the file's pages (`PRAGMA quick_check`: milliseconds at mtld's sizes)."""
        found = [row[0] for row in self.connection.execute("PRAGMA quick_check").fetchall()]
        if found != ["ok"]:
            raise StoreDamaged(self._damaged("; ".join(found[:2])))

    def _damaged(self, detail: str) -> str:
        backup = self.path.with_name(self.path.name + BACKUP_SUFFIX)
        if backup.is_file():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(backup.stat().st_mtime))
            what = (f"the daemon's backup from {when} is {backup}: stop the daemon, move {self.path.name} aside "
                    f"and copy the backup in its place")
        else:
            what = "there is no backup: move it aside to start with an empty queue"
        return f"{self.path}: the job store is damaged ({detail}); {what}"

    def backup(self) -> Path:
        """A consistent copy of the store beside it (SQLite's online backup), user-only; replaced atomically."""
        target = self.path.with_name(self.path.name + BACKUP_SUFFIX)
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        os.close(open_private(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        copy = sqlite3.connect(partial)
        try:
            with self._lock:
                self.connection.backup(copy)
        finally:
            copy.close()
        os.replace(partial, target)
        return target

    def close(self) -> None:
        with self._lock:
            self.connection.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException:
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
                raise

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.connection.execute(sql, tuple(params)).fetchall()

    def _enter_wal(self) -> None:
        """Switch the file to WAL (it stays so). When several processes switch a brand-new
        file together, SQLite answers "database is locked" at once instead of using the busy
        timeout, so wait here the way the timeout would."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if not e.sqlite_errorname.startswith("SQLITE_BUSY") or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self) -> None:
        """Bring the schema to len(MIGRATIONS). Many processes may open a brand-new file at
        once, so the version is read again under the write lock: each migration runs once."""
        target = len(MIGRATIONS)
        if self.rows("PRAGMA user_version")[0][0] == target:
            return
        with self.write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > target:
                raise SchemaTooNew(f"{self.path} has schema version {version}; this mtld knows up to {target}")
            for script in MIGRATIONS[version:]:
                for statement in statements(script):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")


def _damage(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite's error says the file is not a sound database (not: locked, full, read-only)."""
    name = getattr(error, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(error)


def unavailable(error: BaseException, path: Path | None = None) -> str | None:
    """Why a store operation failed when it is not the file's fault and a later one may succeed: "busy"
    (another connection held the write lock past the busy timeout, schema.BUSY_TIMEOUT_S: SQLITE_BUSY,
    "database is locked") or "full" (no room on its disk); None for any other error. The result codes:
    sqlite.org/rescode.html. Room is not always SQLITE_FULL: opening a store in WAL mode maps its -shm file,
    and a disk with no room left fails that as SQLITE_IOERR_SHMSIZE ("disk I/O error"), as it may fail a
    write as SQLITE_IOERR_WRITE; with `path` (the store's), an I/O error with under NO_ROOM_BYTES free on
    its disk is "full" too."""
    if not isinstance(error, sqlite3.OperationalError):
        return None
    name = getattr(error, "sqlite_errorname", "")
    if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
        return "busy"
    if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and path is not None and _no_room(path)):
        return "full"
    return None


NO_ROOM_BYTES = 1 << 20  # less free than this, and an I/O error is the disk's being full (unavailable)


def _no_room(path: Path) -> bool:
    try:
        return free_bytes(path) < NO_ROOM_BYTES
    except OSError:
        return False
