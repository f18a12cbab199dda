"""An office of recorders pushing at once into one loopback smbd: 8 recorders x 256 MiB (each its own
process, machine id and folder, no per-recorder config) vs one Samba `smbclient` putting the same 2 GiB,
same run.

Prints `name: value` lines: total throughput of the fleet (from the moment every recorder process is
ready and told to go until the last one finished) beside smbclient's, their ratio, and the slowest
recorder's own time. Each recorder runs a push job as on a fresh recorder: the recordings' SHA-256
computed on the way, every file read back and compared (export.verify, the default); BENCH_FLEET_VERIFY=0
pushes without the read-back. With the read-back, a second anchor puts the files with smbclient and
gets them back (into /dev/null, not hashed); the target (0.8x) is against the put alone. Both sides sign
(SMB3, a named user): what each side negotiated is printed (smbstatus), with our request sizes, and the
CPU seconds each side's client(s) and smbd used (2 cores here: the fleet is CPU bound where the anchor,
one smbclient, waits on round trips). Recordings come from the page cache.
The share's folder is a tmpfs (as in bench_smb: this VM's disk writeback swings either side by 3x);
BENCH_FLEET_DISK=1 keeps it on disk. Needs root (a test user, smbd on a loopback port 4450-4499).
BENCH_FLEET_RECORDERS, BENCH_FLEET_MIB (per recorder) and BENCH_FLEET_ROUNDS change the sizes.

Then the same again over an office link (lines `fleet_link_*`): the recorders and the anchor's smbclient run in a
network namespace of their own, joined to this machine (the NAS) by one veth pair whose two directions are each
held to BENCH_FLEET_LINK_MBIT (default 940, a Pi's and a NAS's gigabit port as measured; 0: skip) by a token bucket
(tc tbf), MTU 1500 with the segmentation offloads a NIC has left on: the NAS's one port, shared by all recorders, full duplex, as in an office. There the writes and
the read-backs travel in opposite directions, and the wire, not this machine's 2 cores, is the limit for the anchor.
The loopback lines stay: they measure CPU per byte with smbd and all eight recorders on 2 cores.
Stopped (Ctrl-C, SIGTERM: bench/cleanup.py), it stops its recorders and smbd, removes its user, the namespace and
the veth pair, unmounts the tmpfs and removes its folder.
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
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from bench.anchor import alternate, report  # noqa: E402
from steno_exportd import config  # noqa: E402
from steno_exportd.config import SmbRemote  # noqa: E402
from steno_exportd.engine.export import SimpleSpec, run_export  # noqa: E402
from steno_exportd.engine.identity import recorder_folder  # noqa: E402
from steno_exportd.engine.options import ExportOptions  # noqa: E402
from steno_exportd.engine.registry import local  # noqa: E402
from steno_exportd.library import Library  # noqa: E402
from steno_exportd.smb.push import SmbKind  # noqa: E402
from tests.parts.netns import ShapedLink, shaped_link  # noqa: E402
from tests.parts.smbd import make_smbd  # noqa: E402
from tests.recorder_db import RecorderDB  # noqa: E402

RECORDERS = int(os.environ.get("BENCH_FLEET_RECORDERS", "8"))
MIB = int(os.environ.get("BENCH_FLEET_MIB", "256"))
ROUNDS = int(os.environ.get("BENCH_FLEET_ROUNDS", "3"))
VERIFY = os.environ.get("BENCH_FLEET_VERIFY", "1") != "0"
LINK_MBIT = int(os.environ.get("BENCH_FLEET_LINK_MBIT", "940"))
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
    t0, c0 = time.perf_counter(), os.times()
    try:
        res = run_export(lib, SimpleSpec("smb:office", ids, ("audio",), ExportOptions(verify=VERIFY)), cfg,
                         targets=targets, hashes=None)
    finally:
        lib.close()
    seconds, c1 = time.perf_counter() - t0, os.times()
    bad = [r.error for r in res if not r.ok or r.skipped]
    print(json.dumps({"seconds": seconds, "bytes": sum(f.size for r in res for f in r.files), "errors": bad,
                      "cpu": c1.user - c0.user + c1.system - c0.system}), flush=True)
    return 0 if not bad else 1


def fleet(raws: list[dict], total: int, prefix: list[str]) -> tuple[float, float, float, float]:
    """Every recorder at once (each started under ``prefix``): (seconds until the last finished, the slowest
    recorder's own seconds, the CPU seconds of all recorders' pushes, the machine's busy CPU seconds meanwhile)."""
    procs = [subprocess.Popen([*prefix, sys.executable, __file__, "--recorder", json.dumps(raw)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for raw in raws]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", "a recorder process failed to start"
        t0, b0 = time.perf_counter(), busy_cpu()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.stdout.readline() or "{}") for p in procs]
        wall, busy = time.perf_counter() - t0, busy_cpu() - b0
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(o.get("errors") == [] for o in outs), outs
    assert sum(o["bytes"] for o in outs) == total, (outs, total)
    return wall, max(o["seconds"] for o in outs), sum(o["cpu"] for o in outs), busy


def smbclient_put(server: str, port: int, user: str, pw: str, files: list[pathlib.Path], dest: str,
                  prefix: list[str]) -> float:
    """The same recordings in one smbclient session, one folder per recorder."""
    cmds = [f"mkdir {dest}"]
    for f in files:
        cmds.append(f"mkdir {dest}/{f.parent.parent.name}")
        cmds.append(f'put "{f}" "{dest}/{f.parent.parent.name}/{f.name}"')
    t0 = time.perf_counter()
    subprocess.run([*prefix, "smbclient", f"//{server}/push", "-p", str(port), "-U", f"{user}%{pw}",
                    "--client-protection=sign", "-c", "; ".join(cmds)],
                   check=True, capture_output=True, timeout=1200)
    return time.perf_counter() - t0


def smbclient_get(server: str, port: int, user: str, pw: str, files: list[pathlib.Path], dest: str,
                  prefix: list[str]) -> float:
    """What smbclient_put wrote read back in one smbclient session (into /dev/null): the read-back alone."""
    cmds = [f'get "{dest}/{f.parent.parent.name}/{f.name}" /dev/null' for f in files]
    t0 = time.perf_counter()
    subprocess.run([*prefix, "smbclient", f"//{server}/push", "-p", str(port), "-U", f"{user}%{pw}",
                    "--client-protection=sign", "-c", "; ".join(cmds)],
                   check=True, capture_output=True, timeout=1200)
    return time.perf_counter() - t0


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (user + system)."""
    r = os.times()
    return r.children_user + r.children_system


def busy_cpu() -> float:
    """CPU seconds this machine has been busy (all CPUs, /proc/stat: neither idle nor waiting on I/O). Less what
    a side's client(s) used in the same moments, it is what serving them cost: smbd (its one process per
    connection, forked and reaped as they come and go: counting them one by one missed some) and the kernel's
    share of the loopback traffic; nothing else runs beside a benchmark."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def negotiated(smbd_conf: pathlib.Path, port: int, user: str, pw: str, remote: SmbRemote) -> tuple[str, str]:
    """What each side negotiates with this smbd, as smbstatus shows it (protocol, encryption, signing), ours
    with its request sizes: the anchor and ours are compared like with like."""
    from steno_exportd.smb import target as smbt
    t = smbt.SmbTarget(remote)
    p = subprocess.Popen(["smbclient", "//127.0.0.1/push", "-p", str(port), "-U", f"{user}%{pw}",
                          "--client-protection=sign"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        t.connect()
        deadline = time.monotonic() + 10
        rows: list[list[str]] = []
        while time.monotonic() < deadline and len(rows) < 2:
            out = subprocess.run(["smbstatus", "-s", str(smbd_conf), "-b"], capture_output=True, text=True).stdout
            rows = [ln.split() for ln in out.splitlines() if "ipv4:127.0.0.1:" in ln]
            time.sleep(0.2)
        ours_port = t._cache_conn().transport._sock.getsockname()[1]
        def show(r: list[str]) -> str:
            return f"{r[-3]}, encryption {r[-2]}, signing {r[-1]}"
        ours = [show(r) for r in rows if f":{ours_port})" in " ".join(r)]
        theirs = [show(r) for r in rows if f":{ours_port})" not in " ".join(r)]
        sizes = (f"; writes {t.max_write >> 20} MiB x {smbt.PIPELINE} in flight, read-back {t.max_read >> 20} MiB x "
                 f"{smbt.PIPELINE} on a second connection, beside the writes")
        return (ours[0] if ours else "?") + sizes, theirs[0] if theirs else "?"
    finally:
        t.close()
        p.stdin.close()
        p.wait(30)


def main() -> int:
    if os.geteuid() != 0 or not shutil.which("smbd") or not shutil.which("tc"):
        print("bench_fleet: needs root, samba and tc (packaging/install-test-deps.sh)", file=sys.stderr)
        return 1
    run("fleet", None)
    if LINK_MBIT:
        with shaped_link(LINK_MBIT) as link:
            run("fleet_link", link)
    return 0


def run(name: str, link: ShapedLink | None) -> None:
    """One fleet benchmark on loopback (link None) or over ``link``: its lines start with ``name``."""
    with cleanup.workdir("steno-bench-fleet-", parent=None, mode=0o755) as tmp:    # its tmpfs unmounted too
        run_in(name, link, tmp)


def run_in(name: str, link: ShapedLink | None, tmp: pathlib.Path) -> None:
    nas = tmp / "nas"
    nas.mkdir()
    on_tmpfs = os.environ.get("BENCH_FLEET_DISK") != "1"
    smbd = make_smbd(tmp / "smbd", shares=f"[push]\n   path = {nas}\n   read only = no\n   force user = root\n",
                     interfaces=f"lo {link.host_if}" if link else "lo")
    server, prefix = (link.nas, link.host.exec_prefix()) if link else ("127.0.0.1", [])
    dbs: list[RecorderDB] = []
    try:
        if on_tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={RECORDERS * MIB * 5 // 4 + 64}m,mode=0755",
                            "steno-bench-fleet", str(nas)], check=True)
        smbd.start()
        pw = "bench-pw"
        user = smbd.add_user(pw)
        pwfile = tmp / "pw"
        pwfile.write_text(pw)
        os.chmod(pwfile, 0o600)
        remote = SmbRemote(name="office", server=server, port=smbd.port, share="push",
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
                         "smb": {"remotes": [dataclasses.asdict(remote)]},     # no recorder_folder
                         "export": {"verify": VERIFY}})     # (SmbKind: a handle reads back beside its writes)
        cfgs = [config.from_dict(raw) for raw in raws]
        total = sum(p.stat().st_size for p in files)
        folders = [recorder_folder(c) for c in cfgs]
        assert len(set(folders)) == RECORDERS, folders
        os.sync()
        mib = total / 2**20
        slowest: list[float] = []
        got: list[float] = []           # smbclient put + get of the same files (the anchor with a read-back)
        cpu: dict[str, list[float]] = {"ours": [], "ours_smbd": [], "smbclient": [], "smbclient_smbd": []}

        def clear() -> None:
            for p in nas.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            os.sync()

        def ours(r: int) -> float:
            wall, slow, used, busy = fleet(raws, total, prefix)
            cpu["ours_smbd"].append(busy - used)
            cpu["ours"].append(used)
            slowest.append(slow)
            clear()
            return wall

        def anchor(r: int) -> float:
            b0, c0 = busy_cpu(), children_cpu()
            t = smbclient_put(server, smbd.port, user, pw, files, f"smbclient-{r}", prefix)
            used = children_cpu() - c0
            cpu["smbclient"].append(used)
            cpu["smbclient_smbd"].append(busy_cpu() - b0 - used)
            if VERIFY:          # like with like: the same bytes read back by smbclient (not hashed), timed apart
                got.append(t + smbclient_get(server, smbd.port, user, pw, files, f"smbclient-{r}", prefix))
            clear()
            return t
        mine_neg, their_neg = negotiated(smbd.conf, smbd.port, user, pw, dataclasses.replace(remote, server="127.0.0.1"))
        ours(-1)                          # warm-up, not counted: a fresh share and smbd's first allocations
        anchor(-1)
        slowest.clear()
        got.clear()
        for v in cpu.values():
            v.clear()
        theirs, (mine,) = alternate(ROUNDS, anchor, ours)
        print(f"{name}_recorders: {RECORDERS}")
        if link:
            print(f"{name}_mbit_each_way: {LINK_MBIT}")
        print(f"{name}_size_mib: {mib:.0f}")
        print(f"{name}_verify: {'read back' if VERIFY else 'off'}")
        print(f"{name}_share_folder: {'tmpfs' if on_tmpfs else 'disk'}")
        report(name, mib, "smbclient_put", theirs, [("ours", mine)])
        print(f"{name}_slowest_recorder_s: {statistics.median(slowest):.2f}")
        print(f"{name}_slowest_recorder_vs_smbclient_all: {statistics.median(slowest) / statistics.median(theirs):.2f}")
        if got:
            print(f"{name}_smbclient_put_get_mib_s: {mib / statistics.median(got):.1f}")
            print(f"{name}_ratio_ours_vs_smbclient_put_get: {statistics.median(got) / statistics.median(mine):.2f}")
        print(f"{name}_ours_negotiated: {mine_neg}")
        print(f"{name}_smbclient_negotiated: {their_neg}")
        # where the time goes on a 2-core machine: CPU seconds of each side's client(s) and of serving them (smbd
        # and the kernel: the machine's busy time less the clients', busy_cpu), medians
        for k, v in cpu.items():
            print(f"{name}_cpu_{k}_s: {statistics.median(v):.2f}")
    finally:
        for db in dbs:
            db.close()
        smbd.stop()
        smbd.remove_users()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--recorder"]:
        sys.exit(recorder(sys.argv[2]))
    sys.exit(cleanup.run(main))
