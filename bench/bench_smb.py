"""SMB push throughput to a loopback smbd: ours (smbpush) vs Samba's smbclient `put`, same files, same run.

Prints `name: value` lines. Both sides sign (SMB3, a named user); files come from the page cache.
The share's folder is a tmpfs: both clients write to it, and this VM's disk writeback (which swung
either side by 3x from run to run) no longer decides the result. BENCH_SMB_DISK=1 keeps it on disk.
Needs root (a test user, smbd on a loopback port 4450-4499). Set BENCH_SMB_MIB to change the size.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from steno_exportd.smb import push as smbpush  # noqa: E402
from steno_exportd.config import SmbRemote  # noqa: E402
from tests.parts.smbd import make_smbd  # noqa: E402

TOTAL_MIB = int(os.environ.get("BENCH_SMB_MIB", "1024"))
ROUNDS = int(os.environ.get("BENCH_SMB_ROUNDS", "7"))
smbpush.PIPELINE = int(os.environ.get("BENCH_SMB_PIPELINE", smbpush.PIPELINE))


def make_files(root: pathlib.Path) -> list[pathlib.Path]:
    """~TOTAL_MIB: 4 large files (80%) and 20 medium ones, in two session folders."""
    big = TOTAL_MIB * 8 // 10 // 4
    med = max(1, (TOTAL_MIB - big * 4) // 20)
    files = []
    block = os.urandom(1024 * 1024)
    for i, (n, mib) in enumerate([(4, big), (20, med)]):
        d = root / f"session-{i}"
        d.mkdir(parents=True)
        for j in range(n):
            p = d / f"file-{j:02d}.bin"
            with open(p, "wb") as f:
                for k in range(mib):
                    f.write(block[k % 97:] + block[: k % 97])
            files.append(p)
    # an export folder carries SHA256SUMS (written by the engine); push takes expected hashes from it
    import hashlib
    lines = []
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while b := f.read(1 << 22):
                h.update(b)
        lines.append(f"{h.hexdigest()}  {p.relative_to(root).as_posix()}\n")
    (root / "SHA256SUMS").write_text("".join(lines))
    return files


def smbclient_put(port: int, user: str, pw: str, src: pathlib.Path, dest: str) -> float:
    cmds = [f"mkdir {dest}"]
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        cmds.append(f"mkdir {dest}/{d.name}")
        for f in sorted(d.iterdir()):
            cmds.append(f'put "{f}" "{dest}/{d.name}/{f.name}"')
    t0 = time.perf_counter()
    subprocess.run(["smbclient", f"//127.0.0.1/push", "-p", str(port), "-U", f"{user}%{pw}",
                    "--client-protection=sign", "-c", "; ".join(cmds)],
                   check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def main() -> int:
    if os.geteuid() != 0 or not shutil.which("smbd"):
        print("bench_smb: needs root and samba (packaging/install-test-deps.sh)", file=sys.stderr)
        return 1
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="steno-bench-smb-"))
    os.chmod(tmp, 0o755)
    nas = tmp / "nas"
    nas.mkdir()
    on_tmpfs = os.environ.get("BENCH_SMB_DISK") != "1"
    if on_tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TOTAL_MIB * 3 // 2 + 64}m,mode=0755", "steno-bench",
                        str(nas)], check=True)
    smbd = make_smbd(tmp / "smbd", shares=f"[push]\n   path = {nas}\n   read only = no\n   force user = root\n")
    try:
        src = tmp / "src"
        files = make_files(src)
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
        # warm-up, not counted: the first writes into a fresh share folder (and smbd's first large
        # allocations) are slower whoever goes first
        t = smbpush.SmbTarget(remote, "warm-up")
        smbpush.push_dir(t, src, verify=True)
        t.close()
        shutil.rmtree(nas / "warm-up")
        smbclient_put(smbd.port, user, pw, src, "warm-up")
        shutil.rmtree(nas / "warm-up")
        ours, ours_v, theirs = [], [], []
        for r in range(ROUNDS):
            if r % 2:                       # alternate who goes first: the disk is shared and noisy
                os.sync()
                theirs.append(smbclient_put(smbd.port, user, pw, src, f"smbclient-{r}"))
                shutil.rmtree(nas / f"smbclient-{r}")
            for verify, out in ((False, ours), (True, ours_v)):
                os.sync()
                folder = f"ours-{r}-{int(verify)}"
                t = smbpush.SmbTarget(remote, folder)
                t.connect()
                t0 = time.perf_counter()
                res = smbpush.push_dir(t, src, verify=verify)
                out.append(time.perf_counter() - t0)
                t.close()
                assert res.bytes_sent == total, (res.bytes_sent, total)
                shutil.rmtree(nas / folder)
            if not r % 2:
                os.sync()
                theirs.append(smbclient_put(smbd.port, user, pw, src, f"smbclient-{r}"))
                shutil.rmtree(nas / f"smbclient-{r}")
        mib = total / 2**20
        print("rounds (s): ours " + " ".join(f"{x:.2f}" for x in ours) + " | smbclient "
              + " ".join(f"{x:.2f}" for x in theirs) + " | ours+verify " + " ".join(f"{x:.2f}" for x in ours_v),
              file=sys.stderr)
        o, ov, s = statistics.median(ours), statistics.median(ours_v), statistics.median(theirs)
        print(f"smb_push_size_mib: {mib:.0f}")
        print(f"smb_push_share_folder: {'tmpfs' if on_tmpfs else 'disk'}")
        print(f"smb_push_ours_mib_s: {mib / o:.1f}")
        print(f"smb_push_smbclient_put_mib_s: {mib / s:.1f}")
        print(f"smb_push_ratio_ours_vs_smbclient: {s / o:.2f}")
        print(f"smb_push_ours_with_verify_mib_s: {mib / ov:.1f}")
        print(f"smb_push_ratio_ours_verified_vs_smbclient: {s / ov:.2f}")
        # the machine is shared: also the median of ratios taken within each round
        print(f"smb_push_ratio_per_round_median: {statistics.median(b / a for a, b in zip(ours, theirs)):.2f}")
        print(f"smb_push_ratio_verified_per_round_median: "
              f"{statistics.median(b / a for a, b in zip(ours_v, theirs)):.2f}")
        return 0
    finally:
        smbd.stop()
        smbd.remove_users()
        if on_tmpfs:
            subprocess.run(["umount", "-l", str(nas)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
