"""THREATS.md: whoever can write the recorder's data folder can swap a recording for a symlink at any moment; a
push must never send anything outside that folder to the store (the office's, a third party). A real push to a
store rclone serves, while a thread keeps swapping the recordings between the real files and symlinks to a file
of the daemon's own (a secret), and a watcher that holds every file that ever appears on the store's disk."""
from __future__ import annotations

import os
import pathlib

from steno_exportd.engine.identity import recorder_folder
from tests.parts.swap import MARKER, runs_while_swapping
from tests.rclone.test_push import make_cfg, push
from tests.smb.recorder import make_recorder

PUSHES = 4                  # pushes into fresh folders (each sends every recording again) ...
BUDGET = 40.0               # ... for at most this many seconds


def test_a_recording_swapped_for_a_symlink_during_a_push_never_sends_the_file_it_points_to(rclone_server,
                                                                                         rclone_tmp):
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=tuple((1 << 20) + 1000 * i for i in range(8)))
    recordings = sorted((db.root / "audio").glob("*.flac"))
    real = {p.read_bytes() for p in recordings}
    secret = rclone_tmp / "state-of-the-daemon.db"     # outside the data folder, readable by the daemon's user
    secret.write_bytes((MARKER * 30000)[:(700 << 10) + 7])
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    results = []

    def one_push(i, _swapper):
        results.extend(push(make_cfg(rclone_tmp / f"push{i}", db, conf, f"{srv.remote}:office/run{i}")))

    got = runs_while_swapping(recordings, secret, srv.served, one_push, PUSHES, BUDGET)
    pushed = got.runs
    assert not got.leaked, f"the secret reached the store in {pushed} push(es): {got.leaked}"
    # the race ran: the paths were swapped during the pushes, and files appeared on the store meanwhile
    assert got.swaps > 100 and got.seen > 8 * pushed, (got.swaps, got.seen)
    # and what landed under a recording's name is that recording, nothing else
    for i in range(pushed):
        folder = srv.served / "office" / f"run{i}" / recorder_folder(
            make_cfg(rclone_tmp / f"push{i}", db, conf, f"{srv.remote}:office/run{i}"))
        for f in folder.rglob("*.flac"):
            assert f.read_bytes() in real, f"{f} is not a recording"
    assert results


def test_rclone_copies_the_recording_the_engine_opened_not_what_its_path_names_later(rclone_server, rclone_tmp):
    """The engine opened the recording itself (no symlink followed) and hands the write the file it opened
    (from_file); rclone copies that file, not its path, so a symlink swapped in before rclone opens it (and back
    before the copy ends) sends nothing else."""
    from tests.rclone.test_push import _connected
    srv = rclone_server
    t = _connected(srv, rclone_tmp)
    data_dir = rclone_tmp / "data"
    data_dir.mkdir()
    recordings = []
    for i in range(6):
        p = data_dir / f"rec-{i}.flac"
        p.write_bytes(os.urandom((1 << 20) + i))
        recordings.append(p)
    secret = rclone_tmp / "state-of-the-daemon.db"
    secret.write_bytes((MARKER * 30000)[:(700 << 10) + 7])

    def one_copy(i, swapper):
        src = recordings[i % len(recordings)]
        data = swapper.keep[src].read_bytes()
        fd = os.open(swapper.keep[src], os.O_RDONLY | os.O_NOFOLLOW)     # the inode the engine checked
        try:
            h = t.open_write(f"x/{i}.flac")
            try:
                h.from_file(src, fd, os.fstat(fd))
                h.write(data)
                h.sync()
                h.commit()
            except Exception:       # noqa: BLE001 - a copy refused as changed is fine; what landed matters
                h.abort()
        finally:
            os.close(fd)

    try:
        got = runs_while_swapping(recordings, secret, srv.served, one_copy, 120, BUDGET / 2)
    finally:
        t.close()
    copies = got.runs
    assert not got.leaked, f"the secret reached the store in {copies} copies: {got.leaked}"
    assert got.swaps > 100 and copies >= 60, (got.swaps, copies)
    real = {p.read_bytes() for p in recordings}
    landed = list((srv.served / "office" / "x").glob("*.flac"))
    assert landed and all(f.read_bytes() in real for f in landed)


HARDENED = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
from steno_exportd import config
from steno_exportd.rclone.process import Rcd
from steno_exportd.rclone.target import RcloneTarget
work, remote = sys.argv[2], sys.argv[3]
cfg = config.from_dict({"recorder": {"db_path": f"{work}/rec.db"}, "usb": {"enabled": False},
                        "http": {"enabled": False}, "state": {"dir": f"{work}/state"},
                        "rclone": {"config_file": f"{work}/rclone.conf",
                                   "remotes": [{"name": "cloud", "remote": remote, "timeout": 5}]}})
t = RcloneTarget(Rcd(cfg, cfg.rclone.remotes[0]), remote, name="rclone:cloud")
t.connect()
try:
    src = f"{work}/rec.flac"
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    data = os.pread(fd, 1 << 24, 0)
    os.unlink(src)
    os.symlink(f"{work}/secret", src)
    h = t.open_write("a.flac")
    h.from_file(src, fd, os.fstat(fd))
    h.write(data)
    os.close(fd)
    h.sync()
    h.commit()
    print("copied by rclone" if h._job else "streamed", open("/proc/self/mounts").read().count("hidepid=invisible"))
finally:
    t.close()
'''


def test_rclone_reads_the_engines_descriptor_under_the_units_proc_hardening(rclone_server, rclone_tmp):
    """The unit runs the daemon as its own user with ProtectProc=invisible, ProcSubset=pid and NoNewPrivileges=yes:
    rclone (its child, the same user) still opens the daemon's /proc/<pid>/fd/<n> and copies the file opened."""
    import pwd
    import subprocess
    from tests import parts
    parts.require_tool("unshare", "setpriv")
    srv = rclone_server
    work = rclone_tmp / "hardened"
    work.mkdir()
    nobody = pwd.getpwnam("nobody")
    srv.client_config(work / "rclone.conf")
    data = os.urandom((2 << 20) + 5)
    (work / "rec.flac").write_bytes(data)
    (work / "secret").write_bytes(MARKER * 100)
    for p in (rclone_tmp, work, *work.iterdir()):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    here = pathlib.Path(__file__).resolve().parents[2]
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t proc -o hidepid=invisible,subset=pid proc /proc && exec setpriv --reuid=nobody --regid=nogroup '
         '--clear-groups --no-new-privs --bounding-set=-all /usr/bin/python3 -c "$0" "$@"',
         HARDENED, str(here), str(work), f"{srv.remote}:office"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["copied", "by", "rclone", "1"], r.stdout
    assert (srv.served / "office" / "a.flac").read_bytes() == data
