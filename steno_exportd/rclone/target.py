"""A folder on an rclone remote as an export Target: the engine writes into it as into a folder.

Every call is one rclone child (process.Runner). A file is streamed into ``rclone rcat`` under a
temp name and moved to its final name (``moveto``) only when rclone has stored all of it, so no
partial file ever has a final name. Where the store keeps a hash rclone can read (MD5 or SHA-1:
SFTP, S3, OneDrive, Nextcloud...), the write hashes the bytes it sends and the commit compares the
store's hash of the landed file (``lsjson --hash``): the file is verified without downloading it.
Elsewhere (a WebDAV server without hashes) the engine reads it back (``rclone cat``) and hashes it.
Session folders are built in place (object stores have no atomic folder rename).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import uuid

from steno_exportd.engine.targets import TEMP_PREFIX, EntryStat, check_rel
from steno_exportd.errors import InvalidArgument, TargetError
from steno_exportd.rclone.process import Call, RcloneError, Runner

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024            # writes into rclone's stdin
HASHES = ("md5", "sha1")           # the store hashes a write checks, in this order of preference
NO_FREE_SPACE = 1 << 62            # a store that does not say how much is free: its quota error tells


class RcloneTarget:
    """``<remote.remote>`` (an rclone "NAME:path") through rclone; the engine's Target protocol."""

    max_file_size: int | None = None
    atomic_dir_rename = False           # object stores copy a folder to move it: build in place
    resume_min: int | None = None       # a cut file is sent again whole (rclone's uploads do not resume)

    def __init__(self, runner: Runner, base: str, *, name: str = "") -> None:
        self.run = runner
        self.base = base.rstrip("/") if not base.endswith(":") else base
        self.name = name or runner.where
        self.tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.hash: str | None = None

    def connect(self) -> None:
        """Reach the store once (its features: which hash it keeps); a clear error when it cannot be."""
        _, out = self.run.run(["backend", "features", self.base])
        try:
            kept = [h.lower() for h in json.loads(out).get("Hashes") or []]
        except (ValueError, AttributeError):
            kept = []
        self.hash = next((h for h in HASHES if h in kept), None)
        self.run.run(["mkdir", self.base])
        self.run.run(["lsjson", "--max-depth", "1", "--dirs-only", self.base])   # the login is tried here

    def path(self, rel: str) -> str:
        parts = check_rel(rel)
        if not parts:
            return self.base
        sep = "" if self.base.endswith(":") else "/"
        return f"{self.base}{sep}{'/'.join(parts)}"

    @staticmethod
    def _entry(d: dict) -> EntryStat:
        return EntryStat("dir" if d.get("IsDir") else "file", int(d.get("Size") or 0) if not d.get("IsDir") else 0)

    def lstat(self, rel: str) -> EntryStat | None:
        if not check_rel(rel):
            return EntryStat("dir")
        code, out = self.run.run(["lsjson", "--stat", "--no-mimetype", self.path(rel)], ok=(0, 3, 4))
        if code:
            return None
        return self._entry(json.loads(out))

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    def scandir(self, rel: str) -> dict[str, EntryStat]:
        code, out = self.run.run(["lsjson", "--no-mimetype", "--no-modtime", self.path(rel)], ok=(0, 3))
        if code:
            raise TargetError(f"{self.name}: folder not found: {rel}")
        return {d["Name"]: self._entry(d) for d in json.loads(out) if isinstance(d, dict) and d.get("Name")}

    def listdir(self, rel: str) -> list[str]:
        return sorted(self.scandir(rel))

    def mkdir(self, rel: str) -> None:
        st = self.lstat(rel)
        if st is not None:
            if st.kind != "dir":
                raise TargetError(f"a {st.kind} is in the way of folder {rel}")
            return
        self.run.run(["mkdir", self.path(rel)])

    def own_temp(self, name: str) -> bool:
        """Temp files this host's pushes leave after a drop (another host's are not ours to remove)."""
        return name.startswith(f"{TEMP_PREFIX}{socket.gethostname()}-")

    def open_write(self, rel: str, *, resume: str | None = None) -> "_RcloneWrite":
        return _RcloneWrite(self, rel)

    def open_read(self, rel: str, *, uncached: bool = False) -> "_RcloneRead":
        return _RcloneRead(self, rel)

    def rename(self, src: str, dst: str) -> None:
        if self.lstat(dst) is not None:
            raise TargetError(f"refusing to replace existing {dst}")
        self.run.run(["moveto", self.path(src), self.path(dst)])

    def remove(self, rel: str) -> None:
        st = self.lstat(rel)
        if st is None:
            return
        self.run.run(["rmdir" if st.kind == "dir" else "deletefile", self.path(rel)], ok=(0, 3, 4))

    def remove_tree(self, rel: str) -> None:
        if not check_rel(rel):
            raise InvalidArgument("refusing to remove the remote's root")
        if self.lstat(rel) is not None:
            self.run.run(["purge", self.path(rel)], ok=(0, 3, 4))

    def free_space(self) -> int:
        code, out = self.run.run(["about", "--json", self.base], ok=(0, 1, 2))
        try:
            free = json.loads(out).get("free") if code == 0 else None
        except ValueError:
            free = None
        return int(free) if isinstance(free, (int, float)) else NO_FREE_SPACE

    def fsync_dir(self, rel: str) -> None:
        """Nothing to do: rclone returns once the store has the file."""

    def close(self) -> None:
        """Nothing held open between calls (each is its own rclone)."""


class _RcloneWrite:
    """A file streamed into ``rclone rcat <temp>``; moved over its final name on commit."""

    def __init__(self, t: RcloneTarget, rel: str) -> None:
        self._t, self._rel = t, rel
        head, _, final = rel.rpartition("/")
        self.temp = f"{TEMP_PREFIX}{t.tag}-{final}"[:200]
        self.temp_rel = f"{head}/{self.temp}" if head else self.temp
        self.offset = 0
        self.chunk = CHUNK
        self.verified = False
        self.done = False
        self._size = 0
        self._digest = hashlib.new(t.hash) if t.hash else None
        self._call: Call | None = t.run.start(["rcat", t.path(self.temp_rel)], stdin=True)
        self._stored = False

    def write(self, data: bytes | memoryview) -> None:
        assert self._call is not None and self._call.proc.stdin is not None
        try:
            self._call.proc.stdin.write(data)
        except (BrokenPipeError, ValueError):
            raise self._call.failed(self._call.wait(30)) from None
        if self._digest is not None:
            self._digest.update(data)
        self._size += len(data)

    def sync(self) -> None:
        """Close rclone's input and wait until it has stored the whole temp file."""
        if self._stored or self._call is None:
            return
        call = self._call
        try:
            assert call.proc.stdin is not None
            call.proc.stdin.close()
        except BrokenPipeError:
            pass
        code = call.wait(max(300.0, self._t.run.remote.timeout * 10))
        call.kill()
        if code:
            raise call.failed(code)
        self._stored = True

    def commit(self) -> None:
        """Move the temp file to the final name (replacing an old file); then, where the store keeps a
        hash, compare it with the hash of the bytes sent."""
        t = self._t
        try:
            self.sync()
            t.run.run(["moveto", t.path(self.temp_rel), t.path(self._rel)])
            self.done = True
        finally:
            if not self.done:
                self.abort()
        if self._digest is not None:
            _, out = t.run.run(["lsjson", "--stat", "--hash", "--hash-type", t.hash or "", "--no-mimetype",
                                t.path(self._rel)])
            d = json.loads(out)
            got = (d.get("Hashes") or {}).get(t.hash or "", "")
            if got and int(d.get("Size", -1)) == self._size and got.lower() == self._digest.hexdigest():
                self.verified = True
            else:       # the engine's read-back tells what is wrong (and writes the file again)
                log.warning("%s: %s on the store: %s %s, %d bytes; sent %s, %d bytes", t.name, self._rel, t.hash,
                            got or "(none)", int(d.get("Size", -1)), self._digest.hexdigest(), self._size)

    def abort(self) -> None:
        """Stop rclone and remove the temp file (best effort: the next push removes our leftovers)."""
        if self.done:
            return
        self.done = True
        if self._call is not None:
            self._call.kill()
        try:
            self._t.run.run(["deletefile", self._t.path(self.temp_rel)], ok=(0, 3, 4), timeout=30)
        except (RcloneError, TargetError) as e:
            log.debug("temp file %s not removed: %s", self.temp_rel, e)


class _RcloneRead:
    """A remote file streamed out of ``rclone cat``; a failure at the end is raised, never a short read."""

    def __init__(self, t: RcloneTarget, rel: str) -> None:
        self._t = t
        self._call = t.run.start(["cat", t.path(rel)], stdout=True)
        self._ended = False

    def read(self, n: int = -1) -> bytes:
        if self._ended:
            return b""
        assert self._call.proc.stdout is not None
        data = self._call.proc.stdout.read(n if n > 0 else 1 << 20)
        if not data:
            self._ended = True
            code = self._call.wait(60)
            if code:
                raise self._call.failed(code)
        return data

    def close(self) -> None:
        self._call.kill()

