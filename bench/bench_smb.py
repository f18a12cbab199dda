"""SMB push throughput to a loopback smbd: ours (a push job: the engine into smb:<remote>) vs Samba's
smbclient `put`, same recordings, same run.

Prints `name: value` lines. Both sides sign (SMB3, a named user); files come from the page cache.
Ours is the whole job: claim, plan, temp names, renames, manifest.json and SHA256SUMS on the NAS;
with verify, every file is also read back over a second connection beside the upload. "first": the
recordings' SHA-256 is computed on the way (no export knew it yet); otherwise it is remembered from
an earlier export (the hash cache), as on a recorder that exports to its share, sticks and the NAS.
The share's folder is a tmpfs: both clients write to it, and this VM's disk writeback (which swung
either side by 3x from run to run) no longer decides the result. BENCH_SMB_DISK=1 keeps it on disk.
Needs root (a test user, smbd on a loopback port 4450-4499). Set BENCH_SMB_MIB to change the size.
Stopped (Ctrl-C, SIGTERM: bench/cleanup.py), it stops smbd, removes its user, unmounts the tmpfs and its folder.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from bench.anchor import alternate, report  # noqa: E402
from steno_exportd import config  # noqa: E402
from steno_exportd.config import SmbRemote  # noqa: E402
from steno_exportd.engine.export import SimpleSpec, run_export  # noqa: E402
from steno_exportd.engine.hashcache import HashCache  # noqa: E402
from steno_exportd.engine.options import ExportOptions  # noqa: E402
from steno_exportd.engine.registry import local  # noqa: E402
from steno_exportd.library import Library  # noqa: E402
from steno_exportd.smb import target as smbtarget  # noqa: E402
from steno_exportd.smb.push import SmbKind  # noqa: E402
from tests.parts.smbd import make_smbd  # noqa: E402
from tests.recorder_db import RecorderDB  # noqa: E402

TOTAL_MIB = int(os.environ.get("BENCH_SMB_MIB", "1024"))
ROUNDS = int(os.environ.get("BENCH_SMB_ROUNDS", "7"))
smbtarget.PIPELINE = int(os.environ.get("BENCH_SMB_PIPELINE", smbtarget.PIPELINE))


def make_recorder(root: pathlib.Path) -> tuple[RecorderDB, list[pathlib.Path]]:
    """~TOTAL_MIB of recordings: 4 large (80%) and 20 medium ones, one per session."""
    big = TOTAL_MIB * 8 // 10 // 4
    med = max(1, (TOTAL_MIB - big * 4) // 20)
    db = RecorderDB(root)
    block = os.urandom(1024 * 1024)
    files = []
    for i, mib in enumerate([big] * 4 + [med] * 20):
        p = root / "audio" / f"meeting-{i:02d}.flac"
        with open(p, "wb") as f:
            for k in range(mib):
                f.write(block[k % 97:] + block[: k % 97])
        db.session(title=f"Meeting {i:02d}", audio_format="flac", audio_size_bytes=mib << 20,
                   audio_file_path=f"audio/{p.name}")
        files.append(p)
    return db, files


def push(cfg: config.Config, verify: bool, hashes: HashCache | None) -> int:
    """One push job of every session's recording; the bytes it wrote."""
    targets = local()
    targets.register(SmbKind(recorder_id="b" * 32))
    lib = Library.from_config(cfg)
    try:
        ids = tuple(s.id for s in lib.list_sessions(exportable_only=True))
        res = run_export(lib, SimpleSpec("smb:bench", ids, ("audio",), ExportOptions(verify=verify)), cfg,
                         targets=targets, hashes=hashes)
    finally:
        lib.close()
    assert all(r.ok and not r.skipped for r in res), [r.error for r in res if not r.ok]
    return sum(f.size for r in res for f in r.files)


def smbclient_put(port: int, user: str, pw: str, files: list[pathlib.Path], dest: str) -> float:
    """The same recordings, one folder per session as ours writes them."""
    cmds = [f"mkdir {dest}"]
    for f in files:
        cmds.append(f"mkdir {dest}/{f.stem}")
        cmds.append(f'put "{f}" "{dest}/{f.stem}/{f.name}"')
    t0 = time.perf_counter()
    subprocess.run(["smbclient", f"//127.0.0.1/push", "-p", str(port), "-U", f"{user}%{pw}",
                    "--client-protection=sign", "-c", "; ".join(cmds)],
                   check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def main() -> int:
    if os.geteuid() != 0 or not shutil.which("smbd"):
        print("bench_smb: needs root and samba (packaging/install-test-deps.sh)", file=sys.stderr)
        return 1
    with cleanup.workdir("steno-bench-smb-", parent=None, mode=0o755) as tmp:      # its tmpfs unmounted too
        return bench(tmp)


def bench(tmp: pathlib.Path) -> int:
    nas = tmp / "nas"
    nas.mkdir()
    on_tmpfs = os.environ.get("BENCH_SMB_DISK") != "1"
    smbd = make_smbd(tmp / "smbd", shares=f"[push]\n   path = {nas}\n   read only = no\n   force user = root\n")
    try:
        if on_tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TOTAL_MIB * 3 // 2 + 64}m,mode=0755", "steno-bench",
                            str(nas)], check=True)
        db, files = make_recorder(tmp / "recorder")
        total = sum(p.stat().st_size for p in files)
        os.sync()
        smbd.start()
        pw = "bench-pw"
        user = smbd.add_user(pw)
        pwfile = tmp / "pw"
        pwfile.write_text(pw)
        os.chmod(pwfile, 0o600)
        remote = SmbRemote(name="bench", server="127.0.0.1", port=smbd.port, share="push",
                           username=user, password_file=str(pwfile), timeout=10)

        def cfg_for(folder: str) -> config.Config:
            return config.from_dict({"recorder": {"db_path": str(db.path)},
                                     "state": {"dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
                                     "smb": {"recorder_folder": folder, "remotes": [dataclasses.asdict(remote)]}})
        # warm-up, not counted: the first writes into a fresh share folder (and smbd's first large
        # allocations) are slower whoever goes first
        hashes = HashCache(tmp / "state" / "cache" / "hashes.db")
        push(cfg_for("warm-up"), True, hashes)          # (and the recordings' hashes remembered)
        shutil.rmtree(nas / "warm-up")
        smbclient_put(smbd.port, user, pw, files, "warm-up")
        shutil.rmtree(nas / "warm-up")
        def anchor(r: int) -> float:
            os.sync()
            t = smbclient_put(smbd.port, user, pw, files, f"smbclient-{r}")
            shutil.rmtree(nas / f"smbclient-{r}")
            return t

        def ours(verify: bool, known: HashCache | None) -> Callable[[int], float]:
            def run(r: int) -> float:
                os.sync()
                folder = f"ours-{r}-{int(verify)}-{int(known is not None)}"
                t0 = time.perf_counter()
                written = push(cfg_for(folder), verify, known)
                t = time.perf_counter() - t0
                assert written == total, (written, total)
                shutil.rmtree(nas / folder)
                return t
            return run
        theirs, (plain, verified, first) = alternate(ROUNDS, anchor, ours(False, hashes), ours(True, hashes),
                                                     ours(False, None))
        print(f"smb_push_size_mib: {total / 2**20:.0f}")
        print(f"smb_push_share_folder: {'tmpfs' if on_tmpfs else 'disk'}")
        report("smb_push", total / 2**20, "smbclient_put", theirs,
               [("ours", plain), ("ours_verified", verified), ("ours_first", first)])
        return 0
    finally:
        smbd.stop()
        smbd.remove_users()


if __name__ == "__main__":
    sys.exit(cleanup.run(main))
