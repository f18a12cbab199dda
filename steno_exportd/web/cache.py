"""Rendered downloads cached in the state dir, keyed by session version and renderer version."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


class RenderCache:
    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

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
            for d in self.root.iterdir() if self.root.is_dir() else ():
                for f in d.iterdir():
                    if not f.name.startswith("."):
                        st = f.stat()
                        files.append((st.st_mtime, st.st_size, f))
            total = sum(s for _, s, _ in files)
            for _, size, f in sorted(files):
                if total <= self.max_bytes:
                    break
                f.unlink(missing_ok=True)
                total -= size
