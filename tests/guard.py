"""The per-test guard: what a test must not do to the process it shares with every other test.

A test fails when it blocked an event loop for more than ``BLOCK_LIMIT`` (any loop, in any thread:
one slow callback or task step; time in the garbage collector, and time the loop's thread was ready
but waited for a CPU another process held, do not count) or when it left
behind a thread, a mount, a loop device or a child process that was not there before its
function-scoped fixtures were set up. Resources of fixtures with a wider scope (udevd, the system
bus, udisksd, a browser) exist before that point, so they are never counted against the test that
happened to start them. Blocking work in other threads is what asyncio.to_thread is for: only a
loop's own thread is watched.
"""
from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import gc
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import psutil
import pytest

from tests.parts import proc_stat

BLOCK_LIMIT = 0.5       # seconds one loop callback may run (wall time: on a busy 2-core runner a step of
                        # 100-400 ms is often just daemon subprocesses or a first import competing for the CPU)
BACKSTOP = 4           # a callback longer than this many limits by the clock is reported, waits for a CPU or not
GRACE = 3.0             # seconds leftovers get to go away (executor workers, a reaped child, a lazy unmount)
UDISKS_MOUNTS = ("/media", "/run/media")      # where udisks mounts sticks (besides the tests' temp folders)


# -- the plugin (registered by tests/conftest.py) -------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    MONITOR.install()
    BACKSTOP_KILL.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    MONITOR.uninstall()
    BACKSTOP_KILL.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    try:
        limit = float(item.config.getini("timeout") or 0)
    except ValueError:          # (pytest-timeout not installed: no such ini key)
        limit = 0.0
    BACKSTOP_KILL.arm(2 * limit if limit > 0 else None, item.nodeid)
    try:
        yield
    finally:
        BACKSTOP_KILL.arm(None, "")


class HangBackstop:
    """The backstop of the ini's per-test ``timeout``: pytest-timeout fails a hung test from a signal, which a test
    that hangs again while it is torn down outlives. Past twice the timeout, every thread's stack goes to the run's
    stderr and the run ends (exit 1): CI gets a result and the stack, not its own limit's kill of a silent run. (A
    thread of its own: faulthandler's timer is cancelled by pytest as soon as a test fails.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._what = ""
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._stderr = None

    def start(self) -> None:
        # the real stderr: pytest suspends its capture between hooks, so this is not a test's captured one
        self._stderr = open(os.dup(sys.stderr.fileno()), "w")
        self._stopped = False
        self._thread = threading.Thread(target=self._watch, name="test-guard-backstop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        if self._stderr is not None:
            self._stderr.close()

    def arm(self, seconds: float | None, what: str) -> None:
        with self._cond:
            self._deadline = None if seconds is None else time.monotonic() + seconds
            self._what = what
            self._cond.notify()

    def _watch(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                elif (left := self._deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                else:
                    self._stderr.write(f"\n+++ test guard: {self._what} still runs past twice its timeout "
                                       "(it hung again after pytest-timeout failed it): every thread's stack, "
                                       "and the run ends +++\n")
                    self._stderr.flush()
                    faulthandler.dump_traceback(file=self._stderr, all_threads=True)
                    self._stderr.flush()
                    os._exit(1)


BACKSTOP_KILL = HangBackstop()


@pytest.fixture(autouse=True)
def _guard(tmp_path_factory):
    """Fail the test that blocked an event loop > BLOCK_LIMIT or left a thread, mount, loop device or child.

    Function-scoped and autouse from the root conftest: pytest sets it up after every fixture of a
    wider scope (their daemons are not this test's) and before the test's own fixtures, and tears
    it down after them; what those leave behind is the test's."""
    before = Snapshot.take((str(tmp_path_factory.getbasetemp()), *UDISKS_MOUNTS))
    mark = MONITOR.mark()
    yield
    found = MONITOR.take(mark) + leaks(before)
    if found:
        pytest.fail("test guard:\n" + "\n".join(found), pytrace=False)


# -- a blocked event loop ----------------------------------------------------------------------

@dataclasses.dataclass
class _Running:
    start: float
    handle: asyncio.Handle
    native: int                # the loop thread's id in /proc
    where: str = ""            # the loop thread's stack, sampled once it ran past the limit
    queued: float | None = None    # its seconds waiting for a CPU so far, first read by the watchdog


def cpu_wait(native: int) -> float | None:
    """Seconds the thread has been ready to run but waited for a CPU (the kernel's run queue: another process
    or thread had it), from /proc/self/task/<tid>/schedstat; None where the kernel keeps no such count.
    Waiting for I/O, a lock, the GIL or a sleep is not in it."""
    try:
        with open(f"/proc/self/task/{native}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class LoopMonitor:
    """Times every event loop callback (asyncio.Handle._run); a watchdog thread samples the stack
    of a loop thread that runs one callback past the limit, so the report names the blocking line.

    asyncio's debug mode would time callbacks too, but it also records a traceback at every
    call_soon, which slows the whole suite down."""

    def __init__(self, limit: float = BLOCK_LIMIT) -> None:
        self.limit = limit
        self.blocked: list[str] = []
        self._running: dict[int, _Running] = {}
        self._original = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._gc_time = [0.0]          # seconds spent in the garbage collector so far
        self._gc_start = 0.0

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = asyncio.Handle._run
        running, limit, blocked, gc_time = self._running, self.limit, self.blocked, self._gc_time

        def _run(handle: asyncio.Handle) -> None:
            greenlet = sys.modules.get("greenlet")
            if greenlet is not None and greenlet.getcurrent().parent is not None:
                # Playwright's sync API runs its loop in a greenlet and switches to the test from a
                # callback: the "callback" then lasts as long as the test's own code.
                return original(handle)
            tid = threading.get_ident()
            outer = running.get(tid)
            entry = running[tid] = _Running(time.monotonic(), handle, threading.get_native_id())
            collected = gc_time[0]
            try:
                original(handle)
            finally:
                took = time.monotonic() - entry.start - (gc_time[0] - collected)
                if outer is None:
                    running.pop(tid, None)
                else:
                    running[tid] = outer
                if took > limit:
                    # A busy runner's other processes (a render worker starting, smbd, a browser) can keep the
                    # loop's thread off every CPU: that is not the code blocking the loop. The wait counted from
                    # the watchdog's first look on (it looks twice per limit), so some may be left in ``took``.
                    now = cpu_wait(entry.native) if entry.queued is not None else None
                    starved = now - entry.queued if now is not None else 0.0
                    # (a callback that spins on the clock gets less CPU when others want it: whatever the wait,
                    # one past BACKSTOP by the clock is reported)
                    if took - starved > limit or took > BACKSTOP * limit:
                        blocked.append(f"blocked an event loop for {took * 1000:.0f} ms"
                                       + (f" ({starved * 1000:.0f} ms of it waiting for a CPU)" if starved >= 0.001 else "")
                                       + f" in {describe(handle)}"
                                       + (f"\n  at (sampled):\n{entry.where}" if entry.where else ""))

        asyncio.Handle._run = _run
        gc.callbacks.append(self._on_gc)
        self._watchdog = threading.Thread(target=self._watch, name="test-guard-watchdog", daemon=True)
        self._watchdog.start()

    def uninstall(self) -> None:
        if self._original is None:
            return
        asyncio.Handle._run = self._original
        self._original = None
        gc.callbacks.remove(self._on_gc)
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()

    def _on_gc(self, phase: str, info: dict) -> None:
        """A collection of a big heap pauses every thread; that is not code blocking the loop."""
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self._gc_time[0] += time.monotonic() - self._gc_start

    def _watch(self) -> None:
        while not self._stop.wait(self.limit / 2):
            now = time.monotonic()
            frames = None
            for tid, entry in list(self._running.items()):
                if entry.queued is None:
                    entry.queued = cpu_wait(entry.native)
                if entry.where or now - entry.start <= self.limit:
                    continue
                frames = frames if frames is not None else sys._current_frames()
                frame = frames.get(tid)
                if frame is not None and self._running.get(tid) is entry:
                    entry.where = _inside_callback(frame)

    def mark(self) -> int:
        return len(self.blocked)

    def take(self, mark: int) -> list[str]:
        """The reports since ``mark``, forgotten once taken."""
        found = self.blocked[mark:]
        del self.blocked[mark:]
        return found


MONITOR = LoopMonitor()


def _inside_callback(frame) -> str:
    """The sampled stack from the callback inwards (the loop's own frames say nothing)."""
    stack = traceback.extract_stack(frame)
    mine = [i for i, f in enumerate(stack) if f.filename == __file__]
    return "".join(traceback.format_list(stack[mine[-1] + 2 if mine else 0:][-10:]))


def describe(handle: asyncio.Handle) -> str:
    """The task a callback stepped (where it waits now), else the callback itself."""
    task = getattr(handle._callback, "__self__", None)
    return repr(task) if isinstance(task, asyncio.Task) else repr(handle)


# -- leftovers ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the process holds that a test could leave behind. Mounts and loop devices are the whole
    machine's: only those in ``roots`` (this run's temp folders, where udisks mounts) are counted,
    so another program's mount elsewhere is not this test's leak."""

    roots: tuple[str, ...]
    threads: frozenset[threading.Thread]
    mounts: frozenset[str]
    loops: frozenset[str]
    children: dict[tuple[int, int], str]        # (pid, start time) -> what it is

    @classmethod
    def take(cls, roots: tuple[str, ...]) -> "Snapshot":
        return cls(roots, frozenset(t for t in threading.enumerate() if t.is_alive()), mounts(roots),
                   loop_devices(roots), children())

    def leaks(self, now: "Snapshot") -> list[str]:
        """What ``now`` holds that this snapshot did not, one line each."""
        out = [f"leaked a thread: {t.name}" for t in now.threads - self.threads
               if t.is_alive() and not _process_wide(t)]
        out += [f"leaked a mount: {m}" for m in sorted(now.mounts - self.mounts)]
        out += [f"leaked a loop device: {x}" for x in sorted(now.loops - self.loops)]
        out += [f"leaked a child process: {now.children[k]}"
                for k in sorted(now.children.keys() - self.children.keys())]
        return out


def leaks(before: Snapshot, grace: float = GRACE) -> list[str]:
    """Leftovers since ``before``, given ``grace`` seconds to go away."""
    deadline = time.monotonic() + grace
    while True:
        now = Snapshot.take(before.roots)
        found = before.leaks(now)
        if not found or time.monotonic() > deadline:
            return found
        for t in now.threads - before.threads:         # an executor worker finishing its last item
            t.join(max(0.0, min(0.05, deadline - time.monotonic())))
        time.sleep(0.05)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def mounts(roots: tuple[str, ...]) -> frozenset[str]:
    """Mounts under ``roots``, one string each (mount id last: a remount is a new mount)."""
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].replace("\\040", " ")
            if _under(point, roots):
                out.add(f"{point} ({fields[sep + 1]} from {fields[sep + 2]}, id {fields[0]})")
    return frozenset(out)


def loop_devices(roots: tuple[str, ...]) -> frozenset[str]:
    """Attached loop devices whose backing file is under ``roots``."""
    out = set()
    for d in Path("/sys/block").glob("loop*"):
        try:
            backing = (d / "loop" / "backing_file").read_text().strip()
        except OSError:                     # not attached (or detached just now)
            continue
        if _under(backing, roots):
            out.add(f"/dev/{d.name} ({backing})")
    return frozenset(out)


def children() -> dict[tuple[int, int], str]:
    """This process's direct children (a session daemon's own children are that daemon's business)."""
    out = {}
    for p in psutil.Process().children():
        try:
            if _helper_of_multiprocessing(p.pid):
                continue
            key = (p.pid, _started(p.pid))
            try:
                out[key] = f"pid {p.pid} {' '.join(p.cmdline())[:160] or p.name()}"
            except psutil.ZombieProcess:
                out[key] = f"pid {p.pid} {p.name()} (exited, never waited for)"
        except psutil.NoSuchProcess:
            continue
    return out


def _started(pid: int) -> int:
    """When a process started, in clock ticks since boot (/proc/<pid>/stat): fixed for its life. psutil's
    create_time() adds the boot time, which this VM reports a second apart as its clock is corrected: the same
    session daemons (udevd, dbus-daemon, udisksd) were counted as new children of three tests."""
    try:
        return int(proc_stat(pid)[19])
    except (OSError, IndexError, ValueError):
        raise psutil.NoSuchProcess(pid) from None


def _helper_of_multiprocessing(pid: int) -> bool:
    """multiprocessing's forkserver and resource tracker live as long as the process, by design, and so
    does the render worker (a spawned child, started on first use as in the daemon; Core.stop ends it)."""
    from multiprocessing import forkserver, resource_tracker
    from steno_exportd import render
    pool = render._pool
    workers = {p.pid for p in (pool._processes or {}).values()} if pool is not None else set()
    return pid in workers or pid in (getattr(forkserver._forkserver, "_forkserver_pid", None),
                                     getattr(resource_tracker._resource_tracker, "_pid", None))


def _process_wide(thread: threading.Thread) -> bool:
    """The render worker pool lives as long as the process (started on first use, as in the daemon):
    its manager thread and its call queue's feeder thread. So does the thread that starts rclone
    (rclone.process.popen_dying_with_parent: a child's death signal follows the thread that started it)."""
    from steno_exportd import render
    from steno_exportd.rclone import process as rclone_process
    if thread in rclone_process._SPAWNER._threads:
        return True
    pool = render._pool
    return pool is not None and thread in (pool._executor_manager_thread, pool._call_queue._thread)
