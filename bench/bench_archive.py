"""bench archive: an archive export (the ArchiveKind: `meetings.tar.gz` / `meetings.zip` on a stick) of ~256 MiB of
recordings vs what an admin would run by hand on the same files, same run.

  tar.gz: ours (every recording SHA-256'd for SHA256SUMS, compressed, written under a temp name, read back and
          checked, renamed) vs `sha256sum` of the recordings + `tar -czf` (GNU tar through gzip -6) + `cat` of the
          archive (its read-back).
  zip:    ours (the same, recordings stored) vs `sha256sum` + `zip -0 -r` + `cat` of the archive.
Both read the recordings from the page cache and write to a tmpfs (this VM's disk writeback swings either way by
3x; the stick is not what is measured). Prints the medians of BENCH_ARCHIVE_ROUNDS interleaved rounds (default 3),
MiB/s of each and the ratio (higher: ours faster), our CPU seconds beside the anchor's. BENCH_ARCHIVE_MIB sets the
size (default 256). Needs root (the tmpfs). Stopped (Ctrl-C, SIGTERM: bench/cleanup.py), it unmounts the tmpfs and
removes its folder.
"""
from __future__ import annotations

import os
import pathlib
import resource
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from bench.anchor import alternate, report  # noqa: E402
from bench.bench_rclone import make_recorder  # noqa: E402
from steno_exportd import config  # noqa: E402
from steno_exportd.engine.export import SimpleSpec, run_export  # noqa: E402
from steno_exportd.engine.options import ExportOptions  # noqa: E402
from steno_exportd.library import Library  # noqa: E402

TOTAL_MIB = int(os.environ.get("BENCH_ARCHIVE_MIB", "256"))
ROUNDS = int(os.environ.get("BENCH_ARCHIVE_ROUNDS", "3"))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    with cleanup.workdir("steno-bench-archive-", parent=None) as tmp:     # its tmpfs unmounted too
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TOTAL_MIB * 4 + 64}m", "steno-bench-archive",
                        str(tmp)], check=True)
        db, audio = make_recorder(tmp / "rec", TOTAL_MIB)      # 12 sessions: 4 large, 8 medium
        files = sorted(audio.iterdir())
        out = tmp / "out"
        out.mkdir()
        cfg = config.from_dict({"recorder": {"db_path": str(db.path)},
                                "state": {"dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")}})
        lib = Library.from_config(cfg)
        ids = tuple(s.id for s in lib.list_sessions(exportable_only=True))
        print(f"archive_size_mib: {TOTAL_MIB}")
        print(f"archive_sessions: {len(ids)}")
        cpu: dict[str, list[float]] = {}

        def timed(name: str, fn) -> float:
            c0, k0, t0 = _own_cpu(), _children_cpu(), time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            cpu.setdefault(name, []).append(_own_cpu() - c0 + _children_cpu() - k0)
            return t

        def ours(fmt: str):
            def run(r: int) -> float:
                dest = out / f"ours-{r}.{fmt}"

                def go() -> None:
                    res = run_export(lib, SimpleSpec(str(dest), ids, ("audio",), ExportOptions()), cfg)
                    assert all(x.ok for x in res), [x.error for x in res if not x.ok]
                t = timed(f"ours_{fmt}", go)
                dest.unlink()
                return t
            return run

        def anchor(fmt: str):
            def run(r: int) -> float:
                dest = out / f"theirs-{r}.{fmt}"
                names = [f.name for f in files]

                def go() -> None:
                    with open(out / "SHA256SUMS", "wb") as sums:
                        subprocess.run(["sha256sum", *names], cwd=files[0].parent, stdout=sums, check=True)
                    cmd = (["tar", "-czf", str(dest), *names] if fmt == "tar.gz" else
                           ["zip", "-q", "-0", str(dest), *names])
                    subprocess.run(cmd, cwd=files[0].parent, check=True)
                    subprocess.run(["cat", str(dest)], stdout=subprocess.DEVNULL, check=True)
                t = timed(f"anchor_{fmt}", go)
                dest.unlink()
                return t
            return run

        try:
            for fmt, anchor_name in (("tar.gz", "sha256sum_tar_czf_cat"), ("zip", "sha256sum_zip0_cat")):
                prefix = "archive_" + fmt.replace(".", "_")
                theirs, (mine,) = alternate(ROUNDS, anchor(fmt), ours(fmt))
                report(prefix, TOTAL_MIB, anchor_name, theirs, [("ours", mine)], label=fmt)
                for name in (f"ours_{fmt}", f"anchor_{fmt}"):
                    xs = sorted(cpu[name])
                    print(f"{prefix}_cpu_{name.split('_')[0]}_s: {xs[len(xs) // 2]:.2f}")
        finally:
            lib.close()
    return 0


if __name__ == "__main__":
    sys.exit(cleanup.run(main))
