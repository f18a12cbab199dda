"""A benchmark stopped half-way (Ctrl-C to its process group, SIGTERM to bench/run) leaves nothing behind: no
mount, no loop device, no folder in /var/tmp, no cgroup, no process. CI runs on this machine right after.

The export benchmark runs on a tiny layout (BENCH_EXPORT_SCALE) and is stopped once its image is mounted (seen in
/proc/self/mountinfo), in its ext4 round and in its exfat-fuse round; under BENCH_PROFILE=pi4 through bench/run and
bench/profile.py (the benchmark in a CPU cgroup) too.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cleanup
from tests.parts import proc_stat, stop_process, wait_for
from tests.parts.loopfs import require_fs

REPO = Path(__file__).resolve().parents[2]
CGROUPS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu"))
GRACE = 3.0         # seconds for what is on its way out after the benchmark exited (an orphan init has yet to reap)


def work_dirs() -> set[Path]:
    return set(Path("/var/tmp").glob("bench-export-*"))


def cgroups() -> set[Path]:
    return {c for root in CGROUPS for c in root.glob("steno-bench-*")}


def processes(sid: int, work: Path | None) -> list[str]:
    """The processes still in the session the benchmark was started in (its children) or naming its folder (a
    FUSE helper has a session of its own): "pid command line" each."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if os.getsid(int(d.name)) == sid or (work is not None and str(work) in cmd):
                    out.append(f"{d.name} ({proc_stat(int(d.name))[0]}) {cmd[:120]}")
            except OSError:
                continue
    return out


def default_signals() -> None:
    """In the child: Ctrl-C and SIGTERM act as in a terminal's foreground (this pytest may have inherited SIGINT
    ignored from a background job, and the benchmark keeps a signal that was ignored when it started ignored)."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def mounted(work: Path, fstype: str) -> bool:
    point = str(work / f"mnt-{fstype}")
    return any(point == p for p in cleanup.mounts_under(work))


@pytest.mark.parametrize("way, fstype", [
    ("ctrl-c", "ext4"),             # SIGINT to the process group, bench_export.py run directly
    ("ctrl-c", "exfat"),            # the same in the exfat-fuse round (its FUSE helper)
    ("term", "exfat"),              # SIGTERM to bench_export.py alone
    ("profile ctrl-c", "exfat"),    # BENCH_PROFILE=pi4 bench/run export: bench/profile.py and its cgroup
    ("profile term", "exfat"),      # the same, SIGTERM to bench/run alone (what timeout --foreground sends)
])
def test_stopped_export_benchmark_leaves_nothing(way: str, fstype: str) -> None:
    require_fs("ext4")
    require_fs("exfat")
    before_dirs, before_groups = work_dirs(), cgroups()
    env = dict(os.environ, BENCH_EXPORT_SCALE="0.01", BENCH_EXPORT_ROUNDS="1", PY=sys.executable,
               PYTHONPATH=str(REPO))
    if way.startswith("profile"):
        env["BENCH_PROFILE"] = "pi4"
        cmd = [str(REPO / "bench" / "run"), "export"]
    else:
        env.pop("BENCH_PROFILE", None)
        cmd = [sys.executable, str(REPO / "bench" / "bench_export.py")]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=default_signals)
    work: Path | None = None
    try:
        def its_mount() -> Path | None:
            assert proc.poll() is None, f"the benchmark ended before it mounted: {proc.stdout.read().decode()}"
            new = work_dirs() - before_dirs
            return next((w for w in new if mounted(w, fstype)), None)
        work = wait_for(its_mount, 180, interval=0.005, what=f"the benchmark's {fstype} mount")
        if way.endswith("term"):
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the benchmark did not exit within 120 s of being stopped")
        def leftovers() -> dict[str, list[str]]:
            return {"mounts": cleanup.mounts_under(work), "loop devices": cleanup.loops_under(work),
                    "folder": [str(work)] if work.exists() else [],
                    "cgroups": sorted(map(str, cgroups() - before_groups)),
                    "processes": processes(proc.pid, work)}
        deadline = time.monotonic() + GRACE
        while any((left := leftovers()).values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(left.values()), (left, out.decode()[-2000:])
        assert f"export_{fstype}_ours_s" not in out.decode(), "the benchmark went on after it was stopped"
        assert proc.returncode != 0, out.decode()[-2000:]
    finally:                        # what a failed run left (the test cleans up after itself)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_process(proc)
        for pid in (int(x.split()[0]) for x in processes(proc.pid, work)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for w in work_dirs() - before_dirs:
            cleanup.release(w)
            subprocess.run(["rm", "-rf", str(w)], check=False)
        for c in cgroups() - before_groups:
            for pid in (c / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            wait_for(lambda: not (c / "cgroup.procs").read_text().split(), 10, what=f"{c} to empty")
            c.rmdir()
