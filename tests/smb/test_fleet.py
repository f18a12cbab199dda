"""An office of recorders with one host name and no per-recorder config, pushing into one real smbd at
once: each lands in its own folder (host name + short machine-id id), verified, none mixed; the office
index lists every meeting once; an older version's host-name folder is adopted, another's left alone."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

from steno_exportd import config
from steno_exportd.engine.identity import CLAIM_NAME, claim_body, recorder_folder, recorder_id
from steno_exportd.engine.index import INDEX_DIR
from tests.parts.daemon import REPO
from tests.smb.recorder import assert_landed, make_recorder, on_nas, push

RECORDERS = 6

CODE = """
import dataclasses, json, pathlib, sys
from steno_exportd import config
from steno_exportd.config import SmbRemote
from tests.smb.recorder import push
remote, db, state, mid = json.loads(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
cfg = config.from_dict({"recorder": {"db_path": db, "machine_id_file": mid},
                        "state": {"dir": str(state), "runtime_dir": str(state / "run")},
                        "usb": {"enabled": False}, "http": {"enabled": False},
                        "smb": {"remotes": [remote]}})
res = push(cfg)
print(json.dumps([[r.ok, r.error or ""] for r in res]))
sys.exit(0 if all(r.ok for r in res) else 1)
"""


def fleet_cfg(root: pathlib.Path, i: int, db_path: pathlib.Path, remote) -> config.Config:
    """Recorder i: its own machine id, the one host name of this machine, no smb.recorder_folder."""
    mid = root / f"machine-id-{i}"
    mid.write_text(f"{i:02d}" * 16 + "\n")
    return config.from_dict({"recorder": {"db_path": str(db_path), "machine_id_file": str(mid)},
                             "state": {"dir": str(root / f"state-{i}"), "runtime_dir": str(root / f"state-{i}" / "run")},
                             "usb": {"enabled": False}, "http": {"enabled": False},
                             "smb": {"remotes": [dataclasses.asdict(remote)]}})


def start_fleet(root: pathlib.Path, remote, n: int, sizes: tuple[int, ...]) -> tuple[list, list, list]:
    dbs, cfgs, procs = [], [], []
    for i in range(n):
        db = make_recorder(root / f"rec-{i}", sizes=sizes, seed=100 * i)
        cfg = fleet_cfg(root, i, db.path, remote)
        dbs.append(db)
        cfgs.append(cfg)
    for i, cfg in enumerate(cfgs):
        procs.append(subprocess.Popen([sys.executable, "-c", CODE, json.dumps(dataclasses.asdict(remote)),
                                       cfg.recorder.db_path, cfg.state.dir, cfg.recorder.machine_id_file],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    return dbs, cfgs, procs


def check_fleet(nas: pathlib.Path, dbs: list, cfgs: list, procs: list) -> None:
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err[-3000:]
    folders = [recorder_folder(cfg) for cfg in cfgs]
    assert len(set(folders)) == len(cfgs)
    assert all(f.startswith(f"{socket.gethostname()}-") for f in folders)
    uuids_all: list[str] = []
    for cfg, db, folder in zip(cfgs, dbs, folders):
        assert_landed(nas / folder, db)                 # sha256sum -c on the NAS, byte-exact, nothing partial
        claim = json.loads((nas / folder / CLAIM_NAME).read_text())
        assert claim["recorder_id"] == recorder_id(cfg.state.dir, cfg.recorder.machine_id_file)
        # not mixed: every recording in this folder is one of this recorder's
        mine = {h for h in on_nas(db.root / "audio").values()}
        assert {h for rel, h in on_nas(nas / folder).items() if rel.endswith(".flac")} == mine
        index = json.loads((nas / INDEX_DIR / f"{folder}.json").read_text())
        assert index["recorder"] == folder and len(index["meetings"]) == len(mine)
        assert all((nas / m["folder"]).is_dir() for m in index["meetings"])
        uuids_all += [m["uuid"] for m in index["meetings"]]
    assert len(uuids_all) == len(set(uuids_all)) == sum(len(on_nas(db.root / "audio")) for db in dbs)
    assert sorted(p.name for p in (nas / INDEX_DIR).iterdir()) == sorted(f"{f}.json" for f in folders)


def test_recorders_with_one_host_name_push_at_once_each_into_its_own_folder(office, smb_tmp):
    smbd, remote, root, _ = office
    dbs, cfgs, procs = start_fleet(smb_tmp, remote, RECORDERS, (2 << 20, (3 << 20) + 17))
    try:
        check_fleet(root / "nas", dbs, cfgs, procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for db in dbs:
            db.close()


def test_smbd_killed_in_the_middle_every_recorder_resumes_and_completes(office, smb_tmp):
    smbd, remote, root, _ = office
    nas = root / "nas"
    dbs, cfgs, procs = start_fleet(smb_tmp, remote, 4, (6 << 20, (6 << 20) + 5))

    def landed() -> int:
        return sum(p.stat().st_size for p in nas.rglob("*.flac") if p.is_file()) if nas.exists() else 0
    try:
        deadline = time.monotonic() + 120
        while landed() < 4 << 20 and time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        assert any(p.poll() is None for p in procs), "every push ended before smbd could be killed"
        smbd.kill()                                 # mid-way: some recordings landed, others are on their way
        time.sleep(1.0)
        smbd.start()
        check_fleet(nas, dbs, cfgs, procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for db in dbs:
            db.close()


def test_an_older_versions_host_name_folder_is_adopted_and_another_recorders_left_alone(office, smb_tmp):
    smbd, remote, root, _ = office
    nas = root / "nas"
    host = socket.gethostname()
    db = make_recorder(smb_tmp / "rec-old", sizes=(1 << 20, 1 << 20))
    cfg = fleet_cfg(smb_tmp, 1, db.path, remote)
    rid = recorder_id(cfg.state.dir, cfg.recorder.machine_id_file)
    old_cfg = config.replace(cfg, **{"smb.recorder_folder": host})       # what an earlier version pushed into
    assert all(r.ok for r in push(old_cfg, ids=[1]))
    before = {p.relative_to(nas / host).as_posix(): p.stat().st_mtime_ns for p in (nas / host).rglob("*.flac")}
    res = push(cfg)
    assert [r.ok for r in res] == [True, True]
    folder = recorder_folder(cfg)
    assert not (nas / host).exists() and (nas / folder).is_dir()     # renamed, not copied, not left beside
    after = {p.relative_to(nas / folder).as_posix(): p.stat().st_mtime_ns for p in (nas / folder).rglob("*.flac")}
    assert {k: after[k] for k in before} == before                   # the old push's recording was not re-sent
    assert_landed(nas / folder, db)

    other = make_recorder(smb_tmp / "rec-other", sizes=(1 << 20,), seed=7)   # another recorder's host folder
    ocfg = fleet_cfg(smb_tmp, 2, other.path, remote)
    (nas / host).mkdir()
    (nas / host / CLAIM_NAME).write_bytes(claim_body("ff" * 16))
    assert all(r.ok for r in push(ocfg))
    assert sorted(p.name for p in (nas / host).iterdir()) == [CLAIM_NAME]  # untouched
    assert_landed(nas / recorder_folder(ocfg), other)
    db.close()
    other.close()
