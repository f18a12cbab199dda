"""An office of recorders: eight daemons, each in its own network namespace with its own /etc/machine-id, one
host name and one config file (no per-recorder setting), push on a schedule into one real smbd at once: each
lands in its own folder (host name + short machine-id id), verified with sha256sum -c on the NAS, none mixed;
the office index lists every meeting once; smbd killed mid-way and restarted, every recorder completes. An
older version's host-name folder is adopted, another recorder's left alone."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import socket
import time

import pytest

from steno_exportd import config
from steno_exportd.engine.identity import CLAIM_NAME, claim_body, recorder_folder, recorder_id
from steno_exportd.engine.index import INDEX_DIR
from tests.parts import wait_for
from tests.parts.daemon import require_core, write_config
from tests.parts.smbd import start_office_nas
from tests.smb.recorder import FORMATS, assert_landed, make_recorder, on_nas, push, remote_toml

RECORDERS = 8
# Every recorder's config file, byte for byte: its own data sits at this one path (a bind mount in its own mount
# namespace), its machine id is its own /etc/machine-id. A schedule pushes everything every few seconds (a run
# queued while the last still pushes waits for it: one push per remote folder at a time, then finds nothing new).
SCHEDULE = f"""
[[schedules]]
name = "office"
interval_minutes = 0.1
target = "smb:office"
sessions = "all"
formats = {json.dumps(list(FORMATS))}
"""
BIND_AND_EXEC = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'


@dataclasses.dataclass
class Fleet:
    nas: pathlib.Path
    smbd: object
    dbs: list                      # each recorder's database (on this machine's side of its bind mount)
    folders: list[str]             # each recorder's folder on the NAS, as identity computes it from its machine id
    ids: list[str]                 # each recorder's id (its claim on the NAS)

    def complete(self) -> list[bool]:
        """Per recorder: its office index lists all its meetings and its SHA256SUMS all its recordings."""
        out = []
        for db, folder in zip(self.dbs, self.folders):
            n = len(list((db.root / "audio").iterdir()))
            try:
                index = json.loads((self.nas / INDEX_DIR / f"{folder}.json").read_text())
                sums = (self.nas / folder / "SHA256SUMS").read_text().splitlines()
            except (OSError, ValueError):
                out.append(False)
                continue
            out.append(len(index["meetings"]) == n and len([x for x in sums if x.endswith(".flac")]) == n)
        return out

    def landed_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.nas.rglob("*.flac") if p.is_file())


@pytest.fixture
def office_fleet(smb_tmp, smbd_factory, office_lan, daemon_factory):
    """start(sizes) -> Fleet: RECORDERS daemons on an office LAN pushing into one smbd (all torn down after)."""
    require_core()
    made = []

    def start(sizes: tuple[int, ...]) -> Fleet:
        lan = office_lan(RECORDERS)
        smbd, remote = start_office_nas(smb_tmp, smbd_factory, interfaces=f"lo {lan.nas}/24", server=lan.nas)
        common = smb_tmp / "recorder"              # the one path every config names
        common.mkdir()
        cfg_file = write_config(smb_tmp / "steno-exportd.toml", common, "system",
                                **{"dbus.enabled": "false"})
        with open(cfg_file, "a") as f:
            f.write(remote_toml(remote) + SCHEDULE)
        assert "recorder_folder" not in cfg_file.read_text() and "machine_id" not in cfg_file.read_text()
        dbs, folders, ids = [], [], []
        for i, host in enumerate(lan.hosts):
            rec = smb_tmp / f"rec-{i}"
            db = make_recorder(rec / "library", sizes=sizes, seed=100 * i + 1)
            made.append(db)
            (rec / "exports").mkdir()
            host.etc("machine-id", f"{i + 1:02x}" * 16 + "\n")
            own = config.from_dict({"recorder": {"db_path": str(db.path),
                                                 "machine_id_file": f"/etc/netns/{host.name}/machine-id"},
                                    "state": {"dir": str(rec / "state")}})
            dbs.append(db)
            folders.append(recorder_folder(own))
            ids.append(recorder_id(own.state.dir, own.recorder.machine_id_file))
        daemons = [daemon_factory(cfg_file, prefix=[*host.exec_prefix(), "sh", "-c", BIND_AND_EXEC, "sh",
                                                    str(smb_tmp / f"rec-{i}"), str(common)])
                   for i, host in enumerate(lan.hosts)]
        for d in daemons:
            d.wait_ready(timeout=120)
        return Fleet(smb_tmp / "nas", smbd, dbs, folders, ids)

    yield start
    for db in made:
        db.close()


def check_fleet(fleet: Fleet) -> None:
    """What a person browsing the NAS sees: every recorder's folder verified, none mixed, the index complete."""
    nas = fleet.nas
    assert len(set(fleet.folders)) == RECORDERS
    assert all(f.startswith(f"{socket.gethostname()}-") for f in fleet.folders)
    uuids_all: list[str] = []
    for db, folder, rid in zip(fleet.dbs, fleet.folders, fleet.ids):
        assert_landed(nas / folder, db)                 # sha256sum -c on the NAS, byte-exact, nothing partial
        assert json.loads((nas / folder / CLAIM_NAME).read_text())["recorder_id"] == rid
        # not mixed: every recording in this folder is one of this recorder's, and all of them are there
        mine = set(on_nas(db.root / "audio").values())
        assert {h for rel, h in on_nas(nas / folder).items() if rel.endswith(".flac")} == mine
        index = json.loads((nas / INDEX_DIR / f"{folder}.json").read_text())
        assert index["recorder"] == folder and len(index["meetings"]) == len(mine)
        assert all((nas / m["folder"]).is_dir() and m["folder"].startswith(f"{folder}/") for m in index["meetings"])
        uuids_all += [m["uuid"] for m in index["meetings"]]
    assert len(uuids_all) == len(set(uuids_all)) == sum(len(on_nas(db.root / "audio")) for db in fleet.dbs)
    assert sorted(p.name for p in (nas / INDEX_DIR).iterdir()) == sorted(f"{f}.json" for f in fleet.folders)
    assert sorted(p.name for p in nas.iterdir()) == sorted([INDEX_DIR, *fleet.folders])


def test_eight_recorders_with_one_host_name_and_one_config_push_at_once_each_into_its_own_folder(office_fleet):
    fleet = office_fleet((2 << 20, (3 << 20) + 17))
    wait_for(lambda: all(fleet.complete()), timeout=600, interval=0.5, what="every recorder's push complete")
    check_fleet(fleet)


def test_smbd_killed_in_the_middle_every_recorder_resumes_and_completes(office_fleet):
    fleet = office_fleet((6 << 20, (6 << 20) + 5, (4 << 20) + 3))
    wait_for(lambda: fleet.landed_bytes() >= 8 << 20, timeout=300, interval=0.05, what="recordings landing")
    assert not all(fleet.complete()), "every push ended before smbd could be killed"
    fleet.smbd.kill()                               # mid-way: some recordings landed, others are on their way
    time.sleep(1.0)
    fleet.smbd.start()
    wait_for(lambda: all(fleet.complete()), timeout=600, interval=0.5, what="every recorder's push complete")
    check_fleet(fleet)


def fleet_cfg(root: pathlib.Path, i: int, db_path: pathlib.Path, remote) -> config.Config:
    """Recorder i pushing in this process: its own machine id, the one host name of this machine."""
    mid = root / f"machine-id-{i}"
    mid.write_text(f"{i:02d}" * 16 + "\n")
    return config.from_dict({"recorder": {"db_path": str(db_path), "machine_id_file": str(mid)},
                             "state": {"dir": str(root / f"state-{i}"), "runtime_dir": str(root / f"state-{i}" / "run")},
                             "usb": {"enabled": False}, "http": {"enabled": False},
                             "smb": {"remotes": [dataclasses.asdict(remote)]}})


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
