"""BENCH_PROFILE=pi4|pi5 bench/run NAME: one benchmark, daemon and anchors alike, in a CPU cgroup throttled so
that SHA-256 runs at the Pi's rate per core (PERFORMANCE.md: Pi 4 ~100 MB/s, Pi 5 ~1.5 GB/s).

Calibrated at the start of the run: SHA-256 on every core at once here (as loaded as the machine is now) gives
the CFS quota (a share of every core), then the rate is measured again inside the cgroup and the quota corrected
once, so that all cores together hash at the Pi's rate times the cores here. The quota is the group's, not a
core's: one thread alone may use what two would share (it hashes up to ncpu times the Pi's per-core rate), as
the printed single-thread rate shows. Prints the profile's line, then the benchmark's own lines (the
same ratios: its anchors run in the same cgroup). The cgroup (v2 cpu.max, else v1 cpu.cfs_quota_us) is made for
the run and removed after it. Needs root.
Stopped (Ctrl-C, SIGTERM, SIGHUP: bench/cleanup.py), it passes the signal on to the benchmark and waits for it to
clean up (its unmounts, loop devices, daemons), then stops whatever the benchmark left in the cgroup and removes it.

    usage: profile.py PYTHON BENCHMARK.py
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cleanup  # noqa: E402

RATES = {"pi4": 100e6, "pi5": 1.5e9}      # SHA-256 bytes/s on one core (PERFORMANCE.md)
# The period of the quota. Within it the group runs its quota, then stands still to the period's end. A Pi is slow
# all the time, never still; with the kernel's default of 100 ms (5 % of 2 cores: 10 ms of every 100 ms) every I/O
# that completes while the group stands still waits up to 90 ms for the thread that started it, which a Pi never
# does: our export (direct I/O, waited for in our own threads) took 2.01 x L there, and 1.09 x in 10 ms periods,
# where both were CPU-bound (throttled in 99 % of the periods). 10 ms by default, the same share in shorter
# slices; BENCH_PROFILE_PERIOD_US=100000 gives the kernel's. The period grows where the quota would fall under
# the kernel's 1 ms floor (a much faster machine than this one), so the share stays what was asked.
PERIOD_US = int(os.environ.get("BENCH_PROFILE_PERIOD_US", "10000"))
MIN_QUOTA_US = 1_000                       # the kernel's floor
V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/cpu")


def sha_rate(seconds: float = 1.0, threads: int = 1) -> float:
    """Bytes/s of SHA-256 in ``threads`` threads at once, all together (hashlib drops the GIL; 1 MiB buffers)."""
    buf = os.urandom(1 << 20)
    done = [0] * threads

    def work(i: int) -> None:
        h = hashlib.sha256()
        while time.perf_counter() - t0 < seconds:
            h.update(buf)
            done[i] += len(buf)
    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


class Cgroup:
    """A CPU cgroup of this run: v2 (cpu.max) when the cpu controller is there, else v1 (cfs quota)."""

    def __init__(self, name: str) -> None:
        controllers = V2 / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            self.v2, self.path = True, V2 / name
            (V2 / "cgroup.subtree_control").write_text("+cpu")
        elif (V1 / "cpu.cfs_quota_us").exists():
            self.v2, self.path = False, V1 / name
        else:
            raise SystemExit("bench profile: no cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us)")
        self._home = self._own_cgroup()
        self.path.mkdir()

    def _own_cgroup(self) -> Path:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, ctl, rel = line.split(":", 2)
            if (self.v2 and hid == "0") or (not self.v2 and "cpu" in ctl.split(",")):
                return (V2 if self.v2 else V1) / rel.lstrip("/")
        raise SystemExit("bench profile: this process's cgroup is not known")

    def limit(self, cores: float) -> None:
        """At most ``cores`` CPUs' worth of time per period, for everything in the group."""
        self.period = max(PERIOD_US, int(MIN_QUOTA_US / cores) + 1)
        quota = max(MIN_QUOTA_US, int(cores * self.period))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota} {self.period}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def procs(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self) -> None:
        """Back to where this process was, then the group goes once the benchmark's processes have ended: what it
        left behind (a daemon, a helper) gets 5 s, then is named and killed."""
        (self._home / "cgroup.procs").write_text(str(os.getpid()))
        for attempt in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if attempt == 50:           # 5 s: not a child still exiting
                    for pid in self.procs():
                        try:
                            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                            os.kill(pid, 9)
                        except (OSError, ValueError):
                            continue
                        print(f"bench profile: killed {pid} ({cmd}), left in {self.path}", file=sys.stderr)
                time.sleep(0.1)
        print(f"bench profile: could not remove {self.path}", file=sys.stderr)


def main() -> int:
    profile = os.environ.get("BENCH_PROFILE", "")
    if profile not in RATES or len(sys.argv) != 3:
        print(f"usage: BENCH_PROFILE={'|'.join(RATES)} profile.py PYTHON BENCHMARK.py", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench profile: needs root (a cgroup of its own)", file=sys.stderr)
        return 1
    rate, ncpu = RATES[profile], os.cpu_count() or 1
    target = rate * ncpu                     # every core at the Pi's rate
    here = sha_rate(2.0, ncpu)
    share = min(1.0, target / here)          # of each core
    group = None
    try:
        with cleanup.deferred():             # made and known, or neither
            group = Cgroup(f"steno-bench-{profile}-{os.getpid()}")
        group.limit(share * ncpu)
        group.enter()
        got = sha_rate(3.0, ncpu)
        if share < 1.0:                      # once: the throttling is not exactly proportional
            share = min(1.0, share * target / got)
            group.limit(share * ncpu)
            got = sha_rate(3.0, ncpu)
        one = sha_rate(2.0)
        print(f"bench_profile: {profile} (SHA-256 {rate / 1e6:.0f} MB/s per core): {ncpu} cores here "
              f"{here / 1e6:.0f} MB/s, in the cgroup {got / 1e6:.0f} MB/s (target {target / 1e6:.0f}; one thread "
              f"alone {one / 1e6:.0f}) with {share * 100:.1f}% of each core, in periods of {group.period / 1000:g} ms",
              flush=True)
        with cleanup.forwarding() as child:  # stopped: the benchmark cleans up before the group goes
            return child.popen([sys.argv[1], sys.argv[2]]).wait()
    finally:
        if group is not None:
            group.remove()


if __name__ == "__main__":
    raise SystemExit(cleanup.run(main, "bench profile"))
