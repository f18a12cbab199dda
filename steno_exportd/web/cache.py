"""Rendered downloads cached in the state dir, keyed by session version and renderer version."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

STALE_TEMP = 3600.0     # seconds after which a temp file is a leftover of a crash, not a write in progress


class RenderCache:
    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._evict()           # a smaller cache_max_mb (or 0: off) applies at once, not at the next put

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()

    def get(self, key: str) -> Path | None:
        p = self.root / key[:2] / key
        try:
            os.utime(p)                 # least recently used goes first
        except FileNotFoundError:
            return None
        return p

    def size(self, key: str) -> int | None:
        """Bytes of a cached item (its use time untouched), None when it is not cached."""
        try:
            return (self.root / key[:2] / key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> Path | None:
        """Store atomically (temp name, rename); None when caching is off or the item is too big."""
        if self.max_bytes <= 0 or len(data) > self.max_bytes:
            return None
        d = self.root / key[:2]
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        final = d / key
        os.replace(tmp, final)
        self._evict()
        return final

    def _evict(self) -> None:
        with self._lock:
            files = []
            old = time.time() - STALE_TEMP
            for d in self.root.iterdir() if self.root.is_dir() else ():
                for f in d.iterdir():
                    try:
                        st = f.stat()
                    except FileNotFoundError:       # evicted or renamed by another thread meanwhile
                        continue
                    if not f.name.startswith("."):
                        files.append((st.st_mtime, st.st_size, f))
                    elif st.st_mtime < old:         # a put() cut short by a crash: never counted, never read
                        f.unlink(missing_ok=True)
            total = sum(s for _, s, _ in files)
            for _, size, f in sorted(files):
                if total <= self.max_bytes:
                    break
                f.unlink(missing_ok=True)
                total -= size
