"""A benchmark stopped half-way cleans up all the same: CI runs on this machine right after it.

Stopped means Ctrl-C (SIGINT to the whole process group), SIGTERM (timeout(1), bench/run passing it on) or SIGHUP.

- ``run(main)``: the first of those signals raises KeyboardInterrupt where the benchmark is, so its ``finally``
  blocks and context managers run in order (children stopped, daemons stopped, unmount, then losetup -d); from
  then on the three are ignored, in this process and in what it starts during the clean-up (umount, losetup), so
  a second Ctrl-C cannot cut the clean-up short. The benchmark then exits with 128 + the signal's number.
- ``workdir(prefix)``: a folder of the run's own, swept on the way out however the run ended: whatever is still
  mounted under it is unmounted (deepest first), the loop devices backed by files in it are detached and waited
  for (a FUSE helper keeps its device open until it has exited), then it is removed. What a finally block missed
  (a signal between `losetup -f --show` and the try that would detach it) goes there.
- ``release(folder)``: the same sweep without removing the folder (a round's clean-up before the next round).
- ``deferred()``: a block the signals wait for (a thing made and its name kept, or neither).
- ``forwarding()``: while it lasts, the signals are passed on to the child started by its ``popen`` instead
  (bench/profile.py waits for its benchmark to clean up instead of killing it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_got: list[int] = []            # the signals received, first first


def stopped_by() -> int | None:
    """The first signal that stopped this run, if one did."""
    return _got[0] if _got else None


def _ignore() -> None:
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _interrupt(signum: int, frame: object) -> None:
    _got.append(signum)
    _ignore()                   # from now on: the clean-up runs to its end
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def install() -> None:
    """The first SIGINT, SIGTERM or SIGHUP raises KeyboardInterrupt; the next ones are ignored. One ignored already
    (SIGHUP under nohup) stays ignored."""
    for s in SIGNALS:
        if signal.getsignal(s) != signal.SIG_IGN:
            signal.signal(s, _interrupt)


def run(main: Callable[[], int | None], name: str = "") -> int:
    """main() with install()ed signals: its return code, or 128 + the signal's number when one stopped it (after
    its clean-up ran)."""
    install()
    name = name or Path(sys.argv[0]).stem
    try:
        return main() or 0
    except KeyboardInterrupt:
        sig = stopped_by() or signal.SIGINT
        _ignore()
        reap()
        print(f"{name}: stopped by {signal.Signals(sig).name}; cleaned up", file=sys.stderr, flush=True)
        return 128 + sig


def reap(seconds: float = 10) -> None:
    """Wait for this process's children that are still there: subprocess.run kills its child on KeyboardInterrupt
    but leaves it unreaped (a zombie that init inherits when we exit)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                print("bench cleanup: children still running at the end", file=sys.stderr, flush=True)
                return
            time.sleep(0.05)


class Forwarder:
    """The child whose signals are passed on: start it with ``popen``."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        self.proc = subprocess.Popen(cmd, **kw)
        if _got:                # a signal came while it started: it has not had it yet
            self._send(_got[-1])
        return self.proc

    def _send(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def handler(self, signum: int, frame: object) -> None:
        _got.append(signum)
        self._send(signum)


@contextlib.contextmanager
def forwarding() -> Iterator[Forwarder]:
    """Pass SIGINT, SIGTERM and SIGHUP on to the child (``yield``-ed Forwarder's popen) while it runs; a wait
    for it goes on. Afterwards, if one came, they are ignored (this process only cleans up from then on), else
    they act as before."""
    fw = Forwarder()
    old = {s: signal.signal(s, fw.handler) for s in SIGNALS}
    try:
        yield fw
    finally:
        if _got:
            _ignore()
        else:
            for s, h in old.items():
                signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """The signals held back until the block's end, then acted on as they would have been. (Handlers swapped, not
    a signal mask: Python runs handlers in the main thread whichever thread the kernel picked.)"""
    noted: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if noted:
            h = old[noted[0]]
            if callable(h):
                h(noted[0], None)
            elif h == signal.SIG_DFL:
                signal.raise_signal(noted[0])


def _unescape(field: str) -> str:
    """A mount point as /proc/self/mountinfo writes it (\\040 for a space, ...)."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def _under(path: str, root: Path) -> bool:
    r = str(root)
    return path == r or path.startswith(r.rstrip("/") + "/")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or under root, deepest (and latest) first."""
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split()[4]) for line in f]
    return sorted((p for p in reversed(points) if _under(p, root)), key=lambda p: -p.count("/"))


def loops_under(root: Path) -> list[str]:
    """Loop devices (/dev/loopN) whose backing file is at or under root (deleted or not)."""
    out = []
    for b in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            f = b.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            continue            # detached meanwhile
        if _under(f, root):
            out.append(f"/dev/{b.parent.parent.name}")
    return out


def _wait(what: Callable[[], list[str]], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := what()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def release(root: Path, busy_wait: float = 10) -> None:
    """Unmount everything at or under root (deepest first; a busy one is retried for ``busy_wait`` s, as a child
    stopped a moment ago may still hold it, then detached lazily), detach the loop devices backed by files under
    it (partitions first) and wait until they are gone: the FUSE helper of an unmounted exfat/vfat image holds the
    device until it has exited. Warns on stderr about what is still there."""
    deadline = time.monotonic() + busy_wait
    for _ in range(100):        # stacked mounts: each round takes the top ones
        points = mounts_under(root)
        if not points:
            break
        for p in points:
            r = subprocess.run(["umount", p], capture_output=True)
            if r.returncode != 0 and time.monotonic() > deadline:
                subprocess.run(["umount", "-l", p], capture_output=True)
        if mounts_under(root):
            time.sleep(0.1)
    for dev in loops_under(root):
        subprocess.run(["partx", "-d", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    for what, left in (("mounted", mounts_under(root)), ("loop devices", _wait(lambda: loops_under(root), 30))):
        if left:
            print(f"bench cleanup: still {what} under {root}: {' '.join(left)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(prefix: str, parent: str | None = "/var/tmp", mode: int | None = None) -> Iterator[Path]:
    """A fresh folder (in ``parent``; None: the system's temp folder), released (see ``release``) and removed
    however the block ends."""
    d: Path | None = None
    try:
        with deferred():                    # made and known, or neither
            d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            if mode is not None:
                os.chmod(d, mode)
        yield d
    finally:
        if d is not None:
            release(d)
            shutil.rmtree(d, ignore_errors=True)
