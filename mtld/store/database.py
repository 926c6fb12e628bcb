"""One connection to the state file: WAL, short `BEGIN IMMEDIATE` writes, and the schema brought up to date.

The CLI and the daemon are separate processes that open the same file, so the file is in WAL mode (readers
never wait for the writer) and every write is one short `BEGIN IMMEDIATE` transaction: the write lock is
taken up front, so two writers never deadlock trying to upgrade a read lock, and the busy timeout makes the
second one wait instead of failing. Safe to share between the threads of one process.
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

from mtld.disk import private_dir
from mtld.store.records import SchemaTooNew
from mtld.store.schema import BUSY_TIMEOUT_S, MIGRATIONS, statements


class Database:
    """The open state file: `write()` is one transaction, `rows()` one read."""

    def __init__(self, path: Path):
        self.path = path
        private_dir(self.path.parent)
        # Create the file private before SQLite does; its -wal and -shm files copy this mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.RLock()
        self.connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                          check_same_thread=False)
        try:
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA foreign_keys = ON")
            self._enter_wal()
            self._migrate()
        except BaseException:
            self.connection.close()
            raise

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
