"""bench export: ~2 GiB of audio exported with verification to ext4 and exfat-fuse loop images.

Anchors in the same run, on the same targets, caches dropped between steps:
  A: sha256sum of the sources, cp -r, sync, drop caches, sha256sum -c of the copies
  L: cp -r, sync, drop caches, cat of the copies > /dev/null
L, ours and ours-hashed-ahead run in BENCH_EXPORT_ROUNDS interleaved rounds (default 3; the order alternates):
the ratios printed are the medians of the rounds' ratios, each round's beside them.
Prints wall times, ours/A, ours/L, our peak RSS and the incremental rerun over 1,000 sessions; and ours/L once
the recordings were hashed ahead (the daemon's background hasher, export.hash_ahead: each copy is then not hashed
again, only its read-back is: one SHA-256 pass instead of two). Each export runs in a Python process of its own:
the *_without_start_over_L lines leave its start and imports out (the daemon has them done).
Needs root (loop devices, drop_caches). Cleans up after itself, also when stopped (Ctrl-C, SIGTERM: bench/cleanup.py):
its export child is stopped, the image unmounted, its loop device detached and its folder in /var/tmp removed.
Under BENCH_PROFILE (pi4, pi5: bench/profile.py throttles the CPU to the Pi's SHA-256 rate) anchor A and the
1,000-session rerun are left out: coreutils' sha256sum has no SHA-NI here while OpenSSL has (on a Pi 4 neither
has SHA instructions), so A would compare unlike hashers; the ratio to L is the one that matters there.
BENCH_EXPORT_FS=ext4 or exfat runs that filesystem alone (default both: "ext4,exfat"), e.g. for a profile run that
must fit a time limit. The project's bytecode is compiled before any timing (as the .deb's postinst does), and the
export child imports what the daemon's export runs, not the tests' fakes (see OURS).
BENCH_EXPORT_SCALE (default 1) scales the layout and the loop images: 0.01 makes ~20 MiB of sources in 128 MiB images
(a quick run, e.g. for the tests that stop it half-way; its figures mean little).
"""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cleanup  # noqa: E402
from tests.parts import stop_process  # noqa: E402
from tests.parts.loopfs import MKFS, mount  # noqa: E402

MiB = 1024 * 1024
PROFILE = os.environ.get("BENCH_PROFILE", "")
ROUNDS = int(os.environ.get("BENCH_EXPORT_ROUNDS", "3"))
SCALE = float(os.environ.get("BENCH_EXPORT_SCALE", "1"))
LAYOUT = [max(4096, int(size * SCALE)) for size in [200 * MiB] * 8 + [11 * MiB] * 40 + [64 * 1024] * 20]
IMAGE = max(128 * MiB, int(6 * 1024 * MiB * SCALE))
FILESYSTEMS = [x for x in os.environ.get("BENCH_EXPORT_FS", "ext4,exfat").replace(",", " ").split()]
if not FILESYSTEMS or set(FILESYSTEMS) - {"ext4", "exfat"}:
    raise SystemExit(f"bench export: BENCH_EXPORT_FS={os.environ.get('BENCH_EXPORT_FS')!r}: ext4, exfat or both")


def compile_ahead() -> None:
    """The project's bytecode written before any timing, as the .deb's postinst does (compileall): with
    PYTHONDONTWRITEBYTECODE=1 (set in some environments) each export child compiled every module it imported."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "steno_exportd")], check=True,
                   stdout=subprocess.DEVNULL)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def make_sources(d: Path) -> list[Path]:
    block = os.urandom(16 * MiB)
    out = []
    for i, size in enumerate(LAYOUT, 1):
        p = d / f"s{i}.wav"
        with open(p, "wb") as f:
            left = size
            off = i * 4099
            while left:
                n = min(left, len(block) - off % len(block))
                f.write(block[off % len(block): off % len(block) + n])
                left -= n
                off += n
        out.append(p)
    return out


# The export child imports what the daemon's export runs (the engine, the model), not tests.fakes (which imports the
# whole Core: web, mail, SMB... ~0.1 CPU-s more here, ten times that under BENCH_PROFILE=pi4, that a daemon has long
# done); its library is the Library API the engine uses (get_session, list_sessions, data_dir) over these sessions.
OURS = """
import sys, time, resource, datetime as dt
sys.path.insert(0, {root!r})
from pathlib import Path
from steno_exportd import config
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from steno_exportd.model import FileRef, Session, SessionSummary
srcs = {srcs!r}
T0 = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.timezone.utc)
def session(i, audio):
    t, size = T0 + dt.timedelta(days=i), audio.stat().st_size
    summ = SessionSummary(id=i, uuid=f"{{i:08x}}-0000-4000-8000-{{i:012d}}", title=f"Meeting {{i}}", status="completed",
                          start_time=t, end_time=t + dt.timedelta(hours=1), duration_seconds=3600, updated_at=t,
                          created_at=t, location="Room 1", participant_count=2, audio_format="wav", audio_size=size)
    return Session(summ, None, None, (), (), "summary", (), (), FileRef(audio.name, audio, "audio", "wav", size), ())
class Lib:
    def __init__(self, sessions):
        self.sessions = {{s.id: s for s in sessions}}
        self.data_dir = Path(srcs[0]).parent
    def get_session(self, key):
        return self.sessions[key]
    def list_sessions(self, exportable_only=False):
        return [s.summary for s in self.sessions.values()]
lib = Lib([session(i, Path(p)) for i, p in enumerate(srcs, 1)])
cfg = config.from_dict({{"recorder": {{"db_path": "/nonexistent/db.sqlite"}}}})
hashes = None
if {cache!r}:
    from steno_exportd.engine.hashcache import HashCache
    hashes = HashCache({cache!r})
t = time.monotonic()
res = run_export(lib, SimpleSpec({dst!r}, tuple(range(1, len(srcs) + 1)), ("txt", "audio"), ExportOptions()),
                 cfg, hashes=hashes)
assert all(r.ok for r in res), [r.error for r in res if not r.ok]
print(time.monotonic() - t)
"""


def cpu_group_stat() -> dict[str, int]:
    """The CPU cgroup's cpu.stat of this process (nr_periods, nr_throttled, throttled_time...), {} without one:
    under BENCH_PROFILE, whether a step used up its quota (CPU-bound) or waited on something else."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if path == "/" or not ("cpu" in ctrls.split(",") or ctrls == ""):
            continue
        for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")):
            f = root / path.lstrip("/") / "cpu.stat"
            if f.exists():
                return {k: int(v) for k, v in (x.split() for x in f.read_text().splitlines())}
    return {}


class CpuUse:
    """CPU-s of the children a step ran (user + system; the kernel's own threads not counted) and, in a CPU cgroup,
    the share of its periods in which the group was throttled."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}
        self.throttled: dict[str, list[float]] = {}

    def step(self, name: str):
        use = self

        class _Step:
            def __enter__(self):
                self.ru, self.st = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_group_stat()

            def __exit__(self, *exc):
                ru, st = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_group_stat()
                use.cpu.setdefault(name, []).append(ru.ru_utime + ru.ru_stime - self.ru.ru_utime - self.ru.ru_stime)
                periods = st.get("nr_periods", 0) - self.st.get("nr_periods", 0)
                if periods:
                    throttled = st.get("nr_throttled", 0) - self.st.get("nr_throttled", 0)
                    use.throttled.setdefault(name, []).append(throttled / periods)
        return _Step()

    def report(self, fstype: str) -> None:
        for name, cpus in self.cpu.items():
            line = f"export_{fstype}_{name}_cpu_s: {statistics.median(cpus):.2f}  (its processes' user + system"
            if name in self.throttled:
                line += (f"; throttled in {statistics.median(self.throttled[name]) * 100:.0f}% of the periods: near "
                         f"100% is CPU-bound, less is waiting with CPU to spare")
            print(line + ")")


def timed(cmd: str, cwd: Path | None = None) -> float:
    t = time.monotonic()
    subprocess.run(["bash", "-c", cmd], check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def hash_ahead(srcs: list[Path], cache: Path) -> None:
    """What the daemon's background hasher (export.hash_ahead, on by default) leaves in the hash cache when the
    recordings were there before the export: each one's CRC-32 and SHA-256 (done here, outside the timing)."""
    import hashlib

    from isal.isal_zlib import crc32

    from steno_exportd.engine.hashcache import HashCache
    hc = HashCache(cache)
    try:
        for p in srcs:
            digest, crc = hashlib.sha256(), 0
            with open(p, "rb") as f:        # in chunks: the benchmark process stays small
                while b := f.read(4 * MiB):
                    digest.update(b)
                    crc = crc32(b, crc)
            hc.put(p, crc, digest.hexdigest(), p.stat())
    finally:
        hc.close()


def run_ours(srcs: list[Path], dst: Path, cache: Path | None = None) -> tuple[float, int, float]:
    """(wall from the process's start, peak RSS, the export's own time: without the interpreter's start and
    imports, which the daemon does once, not for each export)."""
    code = OURS.format(root=str(ROOT), srcs=[str(p) for p in srcs], dst=str(dst), cache=str(cache or ""))
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        _, status, ru = os.wait4(p.pid, 0)
    except BaseException:       # stopped: the export stops writing to the image before it is unmounted
        stop_process(p)
        raise
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("our export failed")
    assert p.stdout is not None
    inner = float(p.stdout.read().split()[-1])
    p.stdout.close()
    return wall, ru.ru_maxrss * 1024, inner


def bench_fs(fstype: str, work: Path, srcs: list[Path], src_dir: Path) -> None:
    img = work / f"{fstype}.img"
    mnt = work / f"mnt-{fstype}"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(IMAGE)
    try:
        dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True,
                             text=True).stdout.strip()
        subprocess.run(MKFS[fstype](dev, "BENCHX"), check=True, capture_output=True)
        mount(dev, mnt, fstype)
        # anchor A
        a = float("nan")
        drop_caches()
        if not PROFILE:
            t = time.monotonic()
            subprocess.run(f"sha256sum * > {work}/src.sums", shell=True, check=True, cwd=src_dir)
            subprocess.run(["cp", "-r", str(src_dir), str(mnt / "A")], check=True)
            subprocess.run(["sync"], check=True)
            drop_caches()
            subprocess.run(["sha256sum", "-c", "--quiet", f"{work}/src.sums"], check=True, cwd=mnt / "A")
            a = time.monotonic() - t
            shutil.rmtree(mnt / "A")
        cache = work / f"hashes-{fstype}.sqlite"
        hash_ahead(srcs, cache)
        lims, ourss, aheads, rsss, oks, drops = [], [], [], [], [], []
        use = CpuUse()
        inner: dict[str, list[float]] = {"ours": [], "ahead": []}
        for r in range(ROUNDS):     # interleaved: the VM's writeback swings between runs, less within a round
            steps = [("L", None), ("ours", None), ("ahead", cache)]
            for name, c in (steps if r % 2 == 0 else steps[::-1]):
                drop_caches()
                if name == "L":
                    with use.step("anchor_L"):
                        t = time.monotonic()
                        subprocess.run(["cp", "-r", str(src_dir), str(mnt / "L")], check=True)
                        subprocess.run(["sync"], check=True)
                        d = time.monotonic()
                        drop_caches()
                        drops.append(time.monotonic() - d)
                        subprocess.run("cat * > /dev/null", shell=True, check=True, cwd=mnt / "L")
                        lims.append(time.monotonic() - t)
                    shutil.rmtree(mnt / "L")
                else:
                    (mnt / name).mkdir()
                    with use.step("ours" if c is None else "ours_hashed_ahead"):
                        wall, rss, alone = run_ours(srcs, mnt / name, c)
                    (ourss if c is None else aheads).append(wall)
                    inner[name].append(alone)
                    rsss.append(rss)
                    oks.append(subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"],
                                              cwd=mnt / name / "SilentSteno", capture_output=True).returncode == 0)
                    shutil.rmtree(mnt / name)
                subprocess.run(["sync"], check=True)
        lim, ours, ahead = (statistics.median(x) for x in (lims, ourss, aheads))
        per = [o / li for o, li in zip(ourss, lims)]
        per_ahead = [o / li for o, li in zip(aheads, lims)]
        if not PROFILE:
            print(f"export_{fstype}_anchor_A_s: {a:.2f}")
        print(f"export_{fstype}_anchor_L_s: {lim:.2f}  (median; rounds {' '.join(f'{x:.2f}' for x in lims)})")
        print(f"export_{fstype}_ours_s: {ours:.2f}  (median; rounds {' '.join(f'{x:.2f}' for x in ourss)})")
        if not PROFILE:
            print(f"export_{fstype}_ours_over_A: {ours / a:.2f}  (target <= 0.8)")
        print(f"export_{fstype}_ours_over_L: {statistics.median(per):.2f}  (target <= 1.05; median of the "
              f"rounds' ratios {' '.join(f'{x:.2f}' for x in per)})")
        # L's drop of the page cache (before its cat) frees every cached page of the machine: its CPU is the
        # cgroup's under BENCH_PROFILE, so there it weighs on L as the Pi's would not. The ratios to L without it:
        less = [o / (li - dr) for o, li, dr in zip(ourss, lims, drops)]
        less_ahead = [o / (li - dr) for o, li, dr in zip(aheads, lims, drops)]
        print(f"export_{fstype}_anchor_L_drop_caches_s: {statistics.median(drops):.2f}  (within L; rounds "
              f"{' '.join(f'{x:.2f}' for x in drops)}); ours / (L without it): {statistics.median(less):.2f}, "
              f"hashed ahead {statistics.median(less_ahead):.2f}")
        print(f"export_{fstype}_peak_rss_mb: {max(rsss) / MiB:.1f}  (target <= 100)")
        print(f"export_{fstype}_sha256sum_c_ok: {all(oks)}")
        print(f"export_{fstype}_ours_hashed_ahead_s: {ahead:.2f}  (recordings hashed by the background hasher)")
        print(f"export_{fstype}_ours_hashed_ahead_over_L: {statistics.median(per_ahead):.2f}  (target <= 1.05; "
              f"rounds {' '.join(f'{x:.2f}' for x in per_ahead)})")
        for name, what in (("ours", "ours"), ("ahead", "ours_hashed_ahead")):
            alone = [x / li for x, li in zip(inner[name], lims)]
            print(f"export_{fstype}_{what}_without_start_over_L: {statistics.median(alone):.2f}  (the export alone, "
                  f"as the daemon runs it: the interpreter's start and imports left out; rounds "
                  f"{' '.join(f'{x:.2f}' for x in alone)})")
        use.report(fstype)
    finally:                    # unmounted, then the loop device detached (and its FUSE helper gone)
        cleanup.release(work)
        img.unlink(missing_ok=True)


def bench_incremental(work: Path) -> None:
    from steno_exportd import config
    from steno_exportd.engine.export import SimpleSpec, run_export
    from steno_exportd.engine.options import ExportOptions
    from tests.fakes import FakeLibrary, make_session

    src = work / "inc-src"
    src.mkdir()
    sessions = []
    for i in range(1, 1001):
        p = src / f"a{i}.wav"
        p.write_bytes(i.to_bytes(4, "little") * 256)
        sessions.append(make_session(i, p))
    lib = FakeLibrary(sessions)
    dst = work / "inc-dst"
    dst.mkdir()
    cfg = config.from_dict({"recorder": {"db_path": "/nonexistent/db.sqlite"}})
    spec = SimpleSpec(str(dst), tuple(range(1, 1001)), ("txt", "json", "audio"), ExportOptions())
    t = time.monotonic()
    run_export(lib, spec, cfg)
    first = time.monotonic() - t
    t = time.monotonic()
    res = run_export(lib, spec, cfg)
    again = time.monotonic() - t
    assert all(r.skipped for r in res)
    print(f"export_1000_sessions_first_s: {first:.2f}")
    print(f"export_incremental_nothing_new_1000_sessions_s: {again:.3f}  (target <= 1)")


def main() -> int:
    if os.geteuid() != 0:
        print("bench export: needs root (loop devices, drop_caches)", file=sys.stderr)
        return 1
    with cleanup.workdir("bench-export-") as work:
        src_dir = work / "src"
        src_dir.mkdir()
        srcs = make_sources(src_dir)
        print(f"export_source_gib: {sum(p.stat().st_size for p in srcs) / 1024 ** 3:.2f}")
        compile_ahead()
        for fstype in FILESYSTEMS:
            bench_fs(fstype, work, srcs, src_dir)
        if not PROFILE:
            bench_incremental(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(cleanup.run(main))
