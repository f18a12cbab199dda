"""An office of recorders pushing at once into one loopback smbd: 8 recorders x 256 MiB (each its own
process, machine id and folder, no per-recorder config) vs one Samba `smbclient` putting the same 2 GiB,
same run.

Prints `name: value` lines: total throughput of the fleet (from the moment every recorder process is
ready and told to go until the last one finished) beside smbclient's, their ratio, and the slowest
recorder's own time. Each recorder runs a push job as on a fresh recorder: the recordings' SHA-256
computed on the way, every file read back and compared (export.verify, the default); BENCH_FLEET_VERIFY=0
pushes without the read-back. Both sides sign (SMB3, a named user); recordings come from the page cache.
The share's folder is a tmpfs (as in bench_smb: this VM's disk writeback swings either side by 3x);
BENCH_FLEET_DISK=1 keeps it on disk. Needs root (a test user, smbd on a loopback port 4450-4499).
BENCH_FLEET_RECORDERS, BENCH_FLEET_MIB (per recorder) and BENCH_FLEET_ROUNDS change the sizes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.anchor import alternate, report  # noqa: E402
from steno_exportd import config  # noqa: E402
from steno_exportd.config import SmbRemote  # noqa: E402
from steno_exportd.engine.export import SimpleSpec, run_export  # noqa: E402
from steno_exportd.engine.identity import recorder_folder  # noqa: E402
from steno_exportd.engine.options import ExportOptions  # noqa: E402
from steno_exportd.engine.registry import local  # noqa: E402
from steno_exportd.library import Library  # noqa: E402
from steno_exportd.smb.push import SmbKind  # noqa: E402
from tests.parts.smbd import make_smbd  # noqa: E402
from tests.recorder_db import RecorderDB  # noqa: E402

RECORDERS = int(os.environ.get("BENCH_FLEET_RECORDERS", "8"))
MIB = int(os.environ.get("BENCH_FLEET_MIB", "256"))
ROUNDS = int(os.environ.get("BENCH_FLEET_ROUNDS", "3"))
VERIFY = os.environ.get("BENCH_FLEET_VERIFY", "1") != "0"
SESSIONS = 4                    # per recorder: 4 recordings of MIB / 4


def make_recorder(root: pathlib.Path, seed: int) -> tuple[RecorderDB, list[pathlib.Path]]:
    """SESSIONS recordings of MIB / SESSIONS each, other bytes on every recorder."""
    db = RecorderDB(root)
    block = os.urandom(1024 * 1024)
    files = []
    for i in range(SESSIONS):
        p = root / "audio" / f"meeting-{seed:02d}-{i}.flac"
        with open(p, "wb") as f:
            for k in range(MIB // SESSIONS):
                f.write(block[k % 97:] + block[: k % 97])
        db.session(title=f"Meeting {i}", audio_format="flac", audio_size_bytes=p.stat().st_size,
                   audio_file_path=f"audio/{p.name}", uuid=f"{i + 1:08x}-{seed:04x}-4222-8333-{i + 1:012x}")
        files.append(p)
    return db, files


def recorder(cfg_json: str) -> int:
    """One recorder process: ready, then on "go" one push job of every session; prints its seconds."""
    cfg = config.from_dict(json.loads(cfg_json))
    targets = local()
    targets.register(SmbKind())                  # the recorder id from its machine id, its folder from that
    lib = Library.from_config(cfg)
    ids = tuple(s.id for s in lib.list_sessions(exportable_only=True))
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    try:
        res = run_export(lib, SimpleSpec("smb:office", ids, ("audio",), ExportOptions(verify=VERIFY)), cfg,
                         targets=targets, hashes=None)
    finally:
        lib.close()
    seconds = time.perf_counter() - t0
    bad = [r.error for r in res if not r.ok or r.skipped]
    print(json.dumps({"seconds": seconds, "bytes": sum(f.size for r in res for f in r.files), "errors": bad}),
          flush=True)
    return 0 if not bad else 1


def fleet(raws: list[dict], total: int) -> tuple[float, float]:
    """Every recorder at once: (seconds until the last finished, the slowest recorder's own seconds)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--recorder", json.dumps(raw)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for raw in raws]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", "a recorder process failed to start"
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.stdout.readline() or "{}") for p in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(o.get("errors") == [] for o in outs), outs
    assert sum(o["bytes"] for o in outs) == total, (outs, total)
    return wall, max(o["seconds"] for o in outs)


def smbclient_put(port: int, user: str, pw: str, files: list[pathlib.Path], dest: str) -> float:
    """The same recordings in one smbclient session, one folder per recorder."""
    cmds = [f"mkdir {dest}"]
    for f in files:
        cmds.append(f"mkdir {dest}/{f.parent.parent.name}")
        cmds.append(f'put "{f}" "{dest}/{f.parent.parent.name}/{f.name}"')
    t0 = time.perf_counter()
    subprocess.run(["smbclient", "//127.0.0.1/push", "-p", str(port), "-U", f"{user}%{pw}",
                    "--client-protection=sign", "-c", "; ".join(cmds)],
                   check=True, capture_output=True, timeout=1200)
    return time.perf_counter() - t0


def main() -> int:
    if os.geteuid() != 0 or not shutil.which("smbd"):
        print("bench_fleet: needs root and samba (packaging/install-test-deps.sh)", file=sys.stderr)
        return 1
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="steno-bench-fleet-"))
    os.chmod(tmp, 0o755)
    nas = tmp / "nas"
    nas.mkdir()
    on_tmpfs = os.environ.get("BENCH_FLEET_DISK") != "1"
    if on_tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={RECORDERS * MIB * 5 // 4 + 64}m,mode=0755",
                        "steno-bench-fleet", str(nas)], check=True)
    smbd = make_smbd(tmp / "smbd", shares=f"[push]\n   path = {nas}\n   read only = no\n   force user = root\n")
    dbs: list[RecorderDB] = []
    try:
        smbd.start()
        pw = "bench-pw"
        user = smbd.add_user(pw)
        pwfile = tmp / "pw"
        pwfile.write_text(pw)
        os.chmod(pwfile, 0o600)
        remote = SmbRemote(name="office", server="127.0.0.1", port=smbd.port, share="push",
                           username=user, password_file=str(pwfile), timeout=30)
        files: list[pathlib.Path] = []
        raws: list[dict] = []
        for i in range(RECORDERS):
            rec = tmp / f"rec-{i}"
            db, fs = make_recorder(rec, i + 1)
            dbs.append(db)
            files += fs
            (rec / "machine-id").write_text(f"{i + 1:02x}" * 16 + "\n")
            raws.append({"recorder": {"db_path": str(db.path), "machine_id_file": str(rec / "machine-id")},
                         "state": {"dir": str(rec / "state"), "runtime_dir": str(rec / "run")},
                         "smb": {"remotes": [dataclasses.asdict(remote)]}})     # no recorder_folder
        cfgs = [config.from_dict(raw) for raw in raws]
        total = sum(p.stat().st_size for p in files)
        folders = [recorder_folder(c) for c in cfgs]
        assert len(set(folders)) == RECORDERS, folders
        os.sync()
        mib = total / 2**20
        slowest: list[float] = []

        def clear() -> None:
            for p in nas.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            os.sync()

        def ours(r: int) -> float:
            wall, slow = fleet(raws, total)
            slowest.append(slow)
            clear()
            return wall

        def anchor(r: int) -> float:
            t = smbclient_put(smbd.port, user, pw, files, f"smbclient-{r}")
            clear()
            return t
        ours(-1)                          # warm-up, not counted: a fresh share and smbd's first allocations
        slowest.clear()
        anchor(-1)
        theirs, (mine,) = alternate(ROUNDS, anchor, ours)
        print(f"fleet_recorders: {RECORDERS}")
        print(f"fleet_size_mib: {mib:.0f}")
        print(f"fleet_verify: {'read back' if VERIFY else 'off'}")
        print(f"fleet_share_folder: {'tmpfs' if on_tmpfs else 'disk'}")
        report("fleet", mib, "smbclient_put", theirs, [("ours", mine)])
        print(f"fleet_slowest_recorder_s: {statistics.median(slowest):.2f}")
        print(f"fleet_slowest_recorder_vs_smbclient_all: {statistics.median(slowest) / statistics.median(theirs):.2f}")
        return 0
    finally:
        for db in dbs:
            db.close()
        smbd.stop()
        smbd.remove_users()
        if on_tmpfs:
            subprocess.run(["umount", "-l", str(nas)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--recorder"]:
        sys.exit(recorder(sys.argv[2]))
    sys.exit(main())
