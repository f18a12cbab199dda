"""Running rclone: one child process per call, bounded output, killed on timeout or cancel, and its
failures (exit code, last lines of stderr) told as what a person can act on (RcloneError)."""
from __future__ import annotations

import logging
import os
import re
import stat as stat_mod
import subprocess
import threading
from typing import IO

from steno_exportd.config import Config, RcloneRemote
from steno_exportd.errors import TargetError, TargetFullError

log = logging.getLogger(__name__)

STDERR_KEEP = 16 * 1024             # the tail of rclone's stderr kept for the message
OUTPUT_LIMIT = 64 * 1024 * 1024     # a listing or small file read at most this big

_AUTH = re.compile(r"401|403 forbidden|unauthori[sz]ed|unable to authenticate|authentication failed|"
                   r"permission denied|access denied|invalid_grant|invalid_client|couldn't fetch token|"
                   r"token.{0,40}expired|expired.{0,40}token|login|bad password", re.I)
_EXPIRED = re.compile(r"invalid_grant|expired", re.I)
_QUOTA = re.compile(r"quota|insufficient storage|\b507\b|no space left|storage.{0,20}full|"
                    r"out of space|disk full", re.I)
_NETWORK = re.compile(r"connection refused|no such host|network is unreachable|no route to host|i/o timeout|"
                      r"connection reset|broken pipe|unexpected eof|\beof\b|timeout|dial tcp|"
                      r"connection lost|connection closed|server closed", re.I)
_CONFIG = re.compile(r"didn't find section in config file|config file .{0,40}not found|"
                     r"unknown backend|couldn't find type", re.I)


class RcloneError(TargetError):
    """An rclone push failed; ``permanent`` errors (login, config) are not retried."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def last_line(err: str) -> str:
    """The most telling line of rclone's stderr (its last error, without the timestamp)."""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Failed" in ln or "CRITICAL" in ln] or lines
    text = errors[-1] if errors else ""
    return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+", "", text)[:300]


def explain(code: int, err: str, where: str) -> TargetError:
    """rclone's exit code and stderr as the error a person can act on."""
    line = last_line(err) or f"rclone exited with status {code}"
    if _CONFIG.search(err):
        return RcloneError(f"{where}: the rclone remote is not set up in the rclone config ({line})", True)
    if _AUTH.search(err):
        if _EXPIRED.search(err):
            return RcloneError(f"{where}: the store's login has expired; renew it with 'rclone config reconnect' "
                               f"({line})", True)
        return RcloneError(f"{where}: the store refused the login (wrong user or password in the rclone "
                           f"config) ({line})", True)
    if _QUOTA.search(err):
        return TargetFullError(f"{where}: the store is full (quota reached) ({line})")
    if _NETWORK.search(err) or code == 5:
        return RcloneError(f"{where}: the store cannot be reached (network down or server not answering) "
                           f"({line})")
    if code == 7:
        return RcloneError(f"{where}: the store refused the request for good ({line})", True)
    return RcloneError(f"{where}: {line}", code in (1, 3, 4))


class Runner:
    """How rclone is called for one remote: the program, the config file and the common flags."""

    def __init__(self, cfg: Config, remote: RcloneRemote) -> None:
        self.remote = remote
        self.where = f"rclone:{remote.name}"
        t = f"{max(1, int(remote.timeout))}s"
        self.base = [cfg.rclone.command, "--config", cfg.rclone.config_file, "--contimeout", t, "--timeout", t,
                     "--low-level-retries", "1", "--retries", "1", "--ask-password=false"]
        if remote.bandwidth_limit_kbps:
            self.base += ["--bwlimit", f"{remote.bandwidth_limit_kbps}K"]

    def start(self, args: list[str], *, stdin: bool = False, stdout: bool = False) -> "Call":
        """A running rclone (its stdin/stdout pipes when asked)."""
        return Call(self, args, stdin=stdin, stdout=stdout)

    def run(self, args: list[str], *, timeout: float | None = None, ok: tuple[int, ...] = (0,)) -> tuple[int, bytes]:
        """Run to the end: (exit code, stdout); an exit code outside ``ok`` raises the explained error."""
        call = self.start(args, stdout=True)
        try:
            out = call.read_all(OUTPUT_LIMIT)
            code = call.wait(timeout or max(60.0, self.remote.timeout * 4))
        finally:
            call.kill()
        if code not in ok:
            raise explain(code, call.stderr(), self.where)
        return code, out


class Call:
    """One rclone child: stderr drained by a thread into a bounded tail, killed on kill()."""

    def __init__(self, runner: Runner, args: list[str], *, stdin: bool, stdout: bool) -> None:
        self._runner = runner
        try:
            self.proc = subprocess.Popen(runner.base + args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, close_fds=True, start_new_session=True)
        except OSError as e:
            raise RcloneError(f"{runner.where}: cannot run {runner.base[0]} ({e.strerror}); install Debian's "
                              f"rclone package", True) from e
        self._err = bytearray()
        self._reader = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True,
                                        name="rclone-stderr")
        self._reader.start()

    def _drain(self, f: IO[bytes]) -> None:
        for chunk in iter(lambda: f.read(4096), b""):
            self._err += chunk
            if len(self._err) > STDERR_KEEP:
                del self._err[: len(self._err) - STDERR_KEEP]

    def stderr(self) -> str:
        self._reader.join(2)
        return self._err.decode("utf-8", "replace")

    def read_all(self, limit: int) -> bytes:
        assert self.proc.stdout is not None
        out = bytearray()
        while True:
            b = self.proc.stdout.read(1 << 16)
            if not b:
                return bytes(out)
            out += b
            if len(out) > limit:
                self.kill()
                raise RcloneError(f"{self._runner.where}: rclone's answer is larger than {limit} bytes", True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RcloneError(f"{self._runner.where}: rclone did not finish in {timeout:.0f}s "
                              f"(the store stopped answering)") from None

    def failed(self, code: int) -> TargetError:
        return explain(code, self.stderr(), self._runner.where)

    def kill(self) -> None:
        """End the child (and anything it started) unless it has ended; reap it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._reader.join(2)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def config_problems(cfg: Config) -> list[str]:
    """What is wrong with the rclone config file the remotes need (missing, readable by others)."""
    if not cfg.rclone.remotes:
        return []
    path = cfg.rclone.config_file
    try:
        st = os.stat(path)
    except OSError as e:
        return [f"rclone.config_file: {path}: {e.strerror} (make it with 'rclone --config {path} config')"]
    if st.st_mode & (stat_mod.S_IRWXO):
        return [f"rclone.config_file: {path} holds credentials and other users can read it "
                f"(mode {stat_mod.S_IMODE(st.st_mode):o}); chmod 600 it (owner: the service user)"]
    return []
