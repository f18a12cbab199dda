"""Passwords and PINs: scrypt hashes, checked in a small pool of their own (bounded CPU and memory); the password
files of the remotes the daemon logs in to (an SMB NAS, the SMTP server)."""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import os
import stat as stat_mod
from typing import Any

from steno_exportd.errors import Throttled
from steno_exportd.pools import in_pool

N, R, P = 2 ** 14, 8, 1
WORKERS = 2          # scrypt at N=2^14, r=8 needs 16 MiB per running check (PERFORMANCE.md): 32 MiB at most
WAITING = 64         # checks queued behind them (costing no memory); more at once is a flood: "busy"


def read_password_file(path: str) -> str:
    """The password in ``path`` (its first line), for a login to a remote (the SMB NAS, the SMTP server); ValueError
    with a message naming the file when it cannot be used: missing, not a regular file, not UTF-8, or readable by
    other users (group or others: the touchscreen's user, the recorder's), whose password is refused, not used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)     # (a FIFO: no wait for a writer)
    except OSError as e:
        raise ValueError(f"password file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)                       # (the file opened: no swap between the look and the read)
        if not stat_mod.S_ISREG(st.st_mode):
            raise ValueError(f"password file {path} is not a regular file")
        if st.st_mode & (stat_mod.S_IRWXG | stat_mod.S_IRWXO):
            raise ValueError(f"password file {path} is readable by others (chmod 600 it)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            line = f.readline(64 * 1024)
    except OSError as e:
        raise ValueError(f"password file {path} cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"password file {path} cannot be read: not UTF-8 text") from None


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt$N$r$p$salt$hash (base64)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${N}${R}${P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a hash made by hash_password; False for anything malformed."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def valid_hash(stored: str) -> bool:
    parts = stored.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(x.isdigit() for x in parts[1:4])


def fingerprint(stored: str) -> str:
    """A short tag of a stored hash: a login made under one password hash does not outlive it."""
    return hashlib.sha256(b"steno-login:" + stored.encode()).hexdigest()[:32]


class PasswordChecker:
    """Runs verify_password in WORKERS threads of its own; more than WORKERS + WAITING at once is Throttled."""

    def __init__(self, workers: int = WORKERS, waiting: int = WAITING) -> None:
        self.workers, self.waiting = workers, waiting
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending = 0          # touched on the event loop only

    async def verify(self, password: str, stored: str) -> bool:
        return await self._run(verify_password, password, stored)

    async def hash(self, secret: str) -> str:
        """hash_password in the pool (a PIN for a new share link)."""
        return await self._run(hash_password, secret)

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._pending >= self.workers + self.waiting:
            raise Throttled("too many password checks at once; try again in a moment", 1.0)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="steno-scrypt")
        self._pending += 1
        try:
            return await in_pool(self._pool, fn, *args)
        finally:
            self._pending -= 1

    def close(self) -> None:
        """Stop the threads (a check still running finishes, queued ones are dropped; blocking: call from a
        thread); safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
