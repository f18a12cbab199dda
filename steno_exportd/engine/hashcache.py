"""CRC-32 and SHA-256 of recordings, remembered by (device, inode, size, mtime) in the state dir.

Recordings do not change once a session is complete, so a ZIP of them can name its checksums up
front and send the bytes with sendfile instead of reading them through Python again, and an export
(a stick, a NAS) sends them without hashing them again: the read-back is checked against the
remembered CRC-32 (the SHA-256 when a row has none) and SHA256SUMS names the remembered SHA-256. An export that hashed
a recording remembers both.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from steno_exportd.recordings import SourceRef


class HashCache:
    """At most max_entries rows: the oldest written go first (a miss only costs hashing the file again)."""

    def __init__(self, path: str | Path, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, "
                         "size INTEGER, mtime_ns INTEGER, crc32 INTEGER, sha256 TEXT)")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:  # a thread may still be hashing: closing under it would crash sqlite
            self._db.close()

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int, int, int]:
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def get(self, path: str | Path, source: SourceRef | None = None) -> tuple[int, str] | None:
        """(crc32, sha256) when known for the file as it is now (or as ``source`` pinned it); None otherwise."""
        if source is not None:
            key = (source.dev, source.ino, source.size, source.mtime_ns)
        else:
            try:
                key = self._key(os.stat(path))
            except OSError:
                return None
        with self._lock:
            row = self._db.execute("SELECT dev, ino, size, mtime_ns, crc32, sha256 FROM hashes WHERE path = ?",
                                   (str(path),)).fetchone()
        if row is None or tuple(row[:4]) != key or row[4] is None:
            return None
        return row[4], row[5]

    def sha256_crc32(self, path: str | Path) -> tuple[str, int | None] | None:
        """(SHA-256, CRC-32 or None when only the SHA-256 is known) for the file as it is now; None otherwise."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        with self._lock:
            row = self._db.execute("SELECT dev, ino, size, mtime_ns, sha256, crc32 FROM hashes WHERE path = ?",
                                   (str(path),)).fetchone()
        return (row[4], row[5]) if row is not None and tuple(row[:4]) == self._key(st) else None

    def put_sha256(self, path: str | Path, sha256: str, st: os.stat_result) -> None:
        """Remember a SHA-256 (a CRC-32 known for the same file as it is stays)."""
        with self._lock:
            self._db.execute("INSERT INTO hashes VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT(path) DO UPDATE SET "
                             "crc32 = CASE WHEN (dev, ino, size, mtime_ns, sha256) = (excluded.dev, excluded.ino, "
                             "excluded.size, excluded.mtime_ns, excluded.sha256) THEN crc32 END, dev = excluded.dev, "
                             "ino = excluded.ino, size = excluded.size, mtime_ns = excluded.mtime_ns, "
                             "sha256 = excluded.sha256", (str(path), *self._key(st), sha256))

    def forget(self, path: str | Path) -> None:
        """Drop what is remembered of a file (its bytes did not match)."""
        with self._lock:
            self._db.execute("DELETE FROM hashes WHERE path = ?", (str(path),))

    def put(self, path: str | Path, crc32: int, sha256: str, st: os.stat_result | None = None,
            source: SourceRef | None = None) -> None:
        """Remember the checksums of the file at path (as ``source`` pinned it, when given: what was read)."""
        key = (source.dev, source.ino, source.size, source.mtime_ns) if source is not None \
            else self._key(st or os.stat(path))
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (str(path), *key, crc32, sha256))
            # a replaced row gets a new rowid, so rowid order is write order
            self._db.execute("DELETE FROM hashes WHERE rowid <= (SELECT MAX(rowid) FROM hashes) - ?",
                             (self.max_entries,))
