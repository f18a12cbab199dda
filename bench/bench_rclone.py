"""rclone push throughput to stores rclone serves on loopback: ours (a push job: the engine into
rclone:<remote>, verified) vs a bare `rclone copy` + `rclone check` of the same recordings, same run.

Prints `name: value` lines per store. SFTP keeps MD5: ours checks the store's hash of each landed file,
`rclone check` compares MD5s. The WebDAV server keeps no hash: ours reads each file back and hashes
it, `rclone check --download` does the same. Ours is the whole job (claim, plan, temp names, moves,
manifest.json, SHA256SUMS, the office index); files come from the page cache; the served folder is
a tmpfs. ours_hashed_ahead: the same push when the daemon's background hasher (export.hash_ahead, on by default)
has hashed the recordings before (bench_export.hash_ahead fills a hash cache outside the timing): each copy is then
not hashed while sent, only read back and hashed. BENCH_RCLONE_MIB sets the size (default 256), BENCH_RCLONE_ROUNDS the rounds (default 3).

Two anchors, timed in the same rounds: copy_check copies the recordings as they lie on the recorder, all in one
folder; copy_check_same_layout copies the same files laid out as a push lays them out on the store, one folder per
meeting (DESIGN: a person browsing the share finds a meeting by its folder), so that rclone too makes, looks up and
lists a folder per meeting. Both ratios are printed; the difference between the two anchors is what the layout
costs rclone itself (measured at 20 ms: 1.04 s flat, 1.23 s same layout for the 12 sessions; nothing new among 200
sessions 0.17 s flat, 2.3 s same layout, where rclone lists each meeting's folder with 8 checkers).

webdav_distant: the same 12 sessions, smaller (BENCH_RCLONE_DISTANT_MIB, default 48), pushed to the WebDAV store
through a relay that holds every byte for half of BENCH_RCLONE_RTT_MS (default 20: a store across a city) each way
(tests/parts/delay.py; this kernel has no netem), ours and the anchor alike: where round trips, not bytes or CPU,
decide the time. Then on that store, a push that finds nothing new among BENCH_RCLONE_INCREMENTAL_SESSIONS
(default 200) sessions already there vs `rclone copy` with nothing to send (flat and in the same layout).
Where that push's time goes (the relay's exchanges, tests/parts/delay.py depth(), rclone 1.60.1): 32-34 round trips in
a row, 1.1-1.2 s (42 and 1.3 s when its save named one file after the other and 4 sessions were in flight); the
anchor's ~22 (copy 16-17, check 5-6) and two rclone start-ups (0.11 s each). A first push's claim 7 (the remote's
folder listed; its folder made by the claim's upload, rclone's look-up after the PUT, then the move: rclone looks a
move's source up before it and its destination after it), the sessions ~14 (12 in flight, of 64 MiB together but one:
the folder made by the first upload, PUT, rclone's look-up, the read-back's look-up and GET; the four large
recordings' bytes through the relay), the run's end 11 (SHA256SUMS and manifest.json uploaded and named together, 3 +
3; the folders' moves 2; the office index's move 3). rclone 1.60's rc has no check or hashsum call, so the read-back
is a GET streamed through this process; `rclone copy` writes each file under its final name (no temp name and move),
which a push never does.

webdav_store_own_cpu: the WebDAV rounds again with the store on a CPU of its own (every thread of `rclone serve`
on one CPU; this process, its rclone rcd and the anchor's rclone commands on the other), the same for both. On the
device the store is another machine; on loopback it shares the 2 cores with the pushes, and it is the busiest
process there (its local backend hashes every upload with MD5: about half its CPU). Both figures are printed;
BENCH_RCLONE_PIN=0 skips this one.
Stopped (Ctrl-C, SIGTERM: bench/cleanup.py), it stops the relay and rclone's server, unmounts the tmpfs and removes
its folder.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from bench.anchor import alternate, report, rounds_line  # noqa: E402
from bench.bench_export import hash_ahead  # noqa: E402
from steno_exportd import config  # noqa: E402
from steno_exportd.engine.export import SimpleSpec, run_export  # noqa: E402
from steno_exportd.engine.hashcache import HashCache  # noqa: E402
from steno_exportd.engine.options import ExportOptions  # noqa: E402
from steno_exportd.engine.registry import local  # noqa: E402
from steno_exportd.library import Library  # noqa: E402
from steno_exportd.rclone.kind import RcloneKind  # noqa: E402
from tests.parts.delay import DelayRelay  # noqa: E402
from tests.parts.rclone import RcloneServer  # noqa: E402
from tests.recorder_db import RecorderDB  # noqa: E402

TOTAL_MIB = int(os.environ.get("BENCH_RCLONE_MIB", "256"))
DISTANT_MIB = int(os.environ.get("BENCH_RCLONE_DISTANT_MIB", "48"))
RTT_MS = float(os.environ.get("BENCH_RCLONE_RTT_MS", "20"))
ROUNDS = int(os.environ.get("BENCH_RCLONE_ROUNDS", "3"))
INCREMENTAL_SESSIONS = int(os.environ.get("BENCH_RCLONE_INCREMENTAL_SESSIONS", "200"))
PIN = os.environ.get("BENCH_RCLONE_PIN", "1") != "0" and len(os.sched_getaffinity(0)) >= 2
ALL_CPUS = os.sched_getaffinity(0)


def pin(pid: int | str, cpus: set[int]) -> None:
    """Every thread of process ``pid`` on ``cpus`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass              # a thread that just ended


def make_recorder(root: pathlib.Path, total_mib: int = TOTAL_MIB) -> tuple[RecorderDB, pathlib.Path]:
    """~total_mib of recordings: 4 large (80%) and 8 medium ones, one per session."""
    big = total_mib * 8 // 10 // 4
    med = max(1, (total_mib - big * 4) // 8)
    db = RecorderDB(root)
    block = os.urandom(1024 * 1024)
    for i, mib in enumerate([big] * 4 + [med] * 8):
        p = root / "audio" / f"meeting-{i:02d}.flac"
        with open(p, "wb") as f:
            for k in range(mib):
                f.write(block[k % 97:] + block[: k % 97])
        db.session(title=f"Meeting {i:02d}", audio_format="flac", audio_size_bytes=mib << 20,
                   audio_file_path=f"audio/{p.name}")
    return db, root / "audio"


def _export(cfg: config.Config, hashes: pathlib.Path | None = None) -> list:
    targets = local()
    targets.register(RcloneKind(recorder_id="b" * 32))
    lib = Library.from_config(cfg)
    cache = HashCache(hashes) if hashes else None
    try:
        ids = tuple(s.id for s in lib.list_sessions(exportable_only=True))
        return run_export(lib, SimpleSpec("rclone:bench", ids, ("audio",), ExportOptions(verify=True)), cfg,
                          targets=targets, hashes=cache)
    finally:
        lib.close()
        if cache:
            cache.close()


def push(cfg: config.Config, hashes: pathlib.Path | None = None) -> int:
    """One push job of every session; ``hashes``: a hash cache the background hasher filled (bench_export's
    hash_ahead): the recordings are then not hashed while sent, as in the daemon (export.hash_ahead)."""
    res = _export(cfg, hashes)
    assert all(r.ok and not r.skipped for r in res), [r.error for r in res if not r.ok]
    return sum(f.size for r in res for f in r.files)


def many_small(root: pathlib.Path, count: int) -> tuple[RecorderDB, pathlib.Path]:
    """``count`` sessions of a 64 KiB recording each."""
    db = RecorderDB(root)
    for i in range(count):
        p = root / "audio" / f"small-{i:04d}.flac"
        p.write_bytes(os.urandom(64 * 1024))
        db.session(title=f"Small {i:04d}", audio_format="flac", audio_size_bytes=64 * 1024,
                   audio_file_path=f"audio/{p.name}")
    return db, root / "audio"


def same_layout(audio: pathlib.Path, tree: pathlib.Path) -> pathlib.Path:
    """The recordings in ``audio`` laid out as a push lays them out, one folder per meeting (hard links into
    ``tree``, made once): the anchor's `rclone copy` then makes and lists a folder per meeting as ours does."""
    if not tree.exists():
        for p in sorted(audio.iterdir()):
            (tree / f"2026-10-01 {p.stem}").mkdir(parents=True)
            os.link(p, tree / f"2026-10-01 {p.stem}" / p.name)
    return tree


def nothing_new(tmp: pathlib.Path, srv: RcloneServer, conf: pathlib.Path) -> None:
    """A push of a recorder whose INCREMENTAL_SESSIONS sessions are all on the store already (what a push-on-new
    or a schedule finds most of the time) vs `rclone copy` of the same recordings with nothing to send (it lists
    the store and compares sizes): where each look at the store is a round trip."""
    db, audio = many_small(tmp / "many", INCREMENTAL_SESSIONS)
    tree = same_layout(audio, tmp / "many-tree")
    cfg = config.from_dict({
        "recorder": {"db_path": str(db.path)},
        "state": {"dir": str(tmp / "state-many"), "runtime_dir": str(tmp / "run")},
        "smb": {"recorder_folder": "ours-many"},
        "rclone": {"config_file": str(conf), "remotes": [{"name": "bench", "remote": f"{srv.remote}:"}]}})
    push(cfg)
    dests = {audio: f"{srv.remote}:theirs-many", tree: f"{srv.remote}:theirs-many-tree"}
    for src, dest in dests.items():
        subprocess.run(["rclone", "--config", str(conf), "copy", str(src), dest], check=True, capture_output=True)

    def copy(src: pathlib.Path) -> float:
        t0 = time.perf_counter()
        out = subprocess.run(["rclone", "--config", str(conf), "copy", "-v", str(src), dests[src]], check=True,
                             capture_output=True, text=True)
        t = time.perf_counter() - t0
        assert "Copied" not in out.stderr, out.stderr
        return t

    def ours(r: int) -> float:
        t0 = time.perf_counter()
        res = _export(cfg)
        t = time.perf_counter() - t0
        assert len(res) == INCREMENTAL_SESSIONS and all(r.ok and r.skipped for r in res), res[:3]
        return t
    theirs, (mine, same) = alternate(ROUNDS, lambda r: copy(audio), ours, lambda r: copy(tree))
    rounds_line("webdav_distant_nothing_new", [("ours", mine), ("rclone_copy", theirs),
                                               ("rclone_copy_same_layout", same)])
    o = statistics.median(mine)
    print(f"rclone_webdav_distant_nothing_new_sessions: {INCREMENTAL_SESSIONS}")
    print(f"rclone_webdav_distant_nothing_new_ours_s: {o:.2f}")
    for name, ts in (("rclone_copy", theirs), ("rclone_copy_same_layout", same)):
        t = statistics.median(ts)
        print(f"rclone_webdav_distant_nothing_new_{name}_s: {t:.2f}")
        print(f"rclone_webdav_distant_nothing_new_ratio_ours_vs_{name}: {t / o:.2f}  (higher: ours faster)")


def bare(conf: pathlib.Path, src: pathlib.Path, dest: str, download: bool) -> float:
    t0 = time.perf_counter()
    subprocess.run(["rclone", "--config", str(conf), "copy", str(src), dest], check=True, capture_output=True)
    subprocess.run(["rclone", "--config", str(conf), "check", str(src), dest, *(["--download"] if download else [])],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    if not shutil.which("rclone"):
        print("bench_rclone: needs rclone (packaging/install-test-deps.sh)", file=sys.stderr)
        return 1
    with cleanup.workdir("steno-bench-rclone-", parent=None) as tmp:     # its tmpfs unmounted too
        return bench(tmp)


def bench(tmp: pathlib.Path) -> int:
    served = tmp / "served"
    served.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TOTAL_MIB * 3 + 64}m", "steno-bench-rclone",
                        str(served)], check=True)
    db, audio = make_recorder(tmp / "recorder")
    total = sum(p.stat().st_size for p in audio.iterdir())
    mib = total / 2**20
    print(f"rclone_push_size_mib: {mib:.0f}")
    for kind, rtt in (("sftp", 0.0), ("webdav", 0.0), ("webdav", RTT_MS)):
        srv = RcloneServer(kind, served, tmp)
        relay = None
        name = f"{kind}_distant" if rtt else kind
        try:
            srv.start()
            relay = DelayRelay(srv.port, rtt) if rtt else None
            if rtt:
                db, audio = make_recorder(tmp / "distant", DISTANT_MIB)
                total = sum(p.stat().st_size for p in audio.iterdir())
                mib = total / 2**20
                print(f"rclone_{name}_size_mib: {mib:.0f}")
                print(f"rclone_{name}_rtt_ms: {rtt:.0f}")
            far = dataclasses.replace(srv, port=relay.port) if relay else srv
            conf = far.client_config(tmp / f"rclone-{name}.conf")
            cfg = config.from_dict({
                "recorder": {"db_path": str(db.path)},
                "state": {"dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
                "smb": {"recorder_folder": "warm-up"},
                "rclone": {"config_file": str(conf), "remotes": [{"name": "bench", "remote": f"{srv.remote}:"}]}})
            push(cfg)                                       # warm-up, not counted
            shutil.rmtree(served / "warm-up")

            def anchor(r: int, src: pathlib.Path = audio, folder: str = "theirs") -> float:
                t = bare(conf, src, f"{srv.remote}:{folder}-{r}", kind == "webdav")
                shutil.rmtree(served / f"{folder}-{r}")
                return t
            tree = same_layout(audio, tmp / f"{name}-tree")

            def anchor_same_layout(r: int) -> float:
                return anchor(r, tree, "theirs-same-layout")

            cache = tmp / f"hashes-{name}.sqlite"
            hash_ahead(sorted(audio.iterdir()), cache)

            def ours(r: int, hashes: pathlib.Path | None = None) -> float:
                folder = f"{'ahead' if hashes else 'ours'}-{r}"
                t0 = time.perf_counter()
                written = push(config.replace(cfg, **{"smb.recorder_folder": folder}), hashes)
                t = time.perf_counter() - t0
                assert written == total, (written, total)
                shutil.rmtree(served / folder)
                return t

            def ahead(r: int) -> float:
                return ours(r, cache)
            theirs, (mine, mine_ahead, same) = alternate(ROUNDS, anchor, ours, ahead, anchor_same_layout)
            print(f"rclone_{name}_verify: {'store md5' if kind == 'sftp' else 'download and hash'}")
            report(f"rclone_{name}", mib, "copy_check", theirs, [("ours", mine), ("ours_hashed_ahead", mine_ahead)],
                   label=name, more=[("copy_check_same_layout", same)])
            if kind == "webdav" and not rtt and PIN:
                store_cpu, push_cpu = sorted(ALL_CPUS)[-1], sorted(ALL_CPUS)[0]
                assert srv.proc is not None
                pin(srv.proc.pid, {store_cpu})
                pin("self", {push_cpu})
                try:        # (folders of other names: rclone serve still lists the removed ones for a while)
                    theirs, (mine, mine_ahead, same) = alternate(
                        ROUNDS, lambda r: anchor(ROUNDS + r), lambda r: ours(ROUNDS + r),
                        lambda r: ahead(ROUNDS + r), lambda r: anchor_same_layout(ROUNDS + r))
                finally:
                    pin("self", ALL_CPUS)
                    pin(srv.proc.pid, ALL_CPUS)
                print(f"rclone_{name}_store_own_cpu_placement: rclone serve on CPU {store_cpu}; this process (ours, "
                      f"its rclone rcd) and the anchor's rclone commands on CPU {push_cpu}")
                report(f"rclone_{name}_store_own_cpu", mib, "copy_check", theirs,
                       [("ours", mine), ("ours_hashed_ahead", mine_ahead)],
                       label=f"{name}_store_own_cpu", more=[("copy_check_same_layout", same)])
            if rtt:
                nothing_new(tmp, far, conf)
        finally:
            if relay:
                relay.close()
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(cleanup.run(main))
