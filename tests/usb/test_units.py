"""Candidate selection, policy files and the device registry: pure logic, no daemons."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os

import pytest

from steno_exportd import config
from steno_exportd.devices import DeviceRegistry, device_id
from steno_exportd.errors import NotFoundError
from steno_exportd.events import DeviceRemoved, DeviceState, DeviceUpdated, EventBus
from steno_exportd.usb import policy
from steno_exportd.usb.udev import Candidate, classify, pick, system_disks
from steno_exportd.usb.udisks import mount_options
from tests.fakes import summary

USB_PART = {"SUBSYSTEM": "block", "DEVTYPE": "partition", "DEVNAME": "/dev/sdb1", "ID_BUS": "usb",
            "ID_FS_USAGE": "filesystem", "ID_FS_TYPE": "vfat", "ID_FS_UUID": "ABCD-1234",
            "ID_FS_LABEL": "KINGSTON"}


def cl(props, disk="sdb", excluded=(), ignore=(), ro=False, size=1000):
    return classify(props, disk, size=size, read_only=ro, excluded_disks=set(excluded), ignore_uuids=ignore)


def test_usb_partition_with_filesystem_is_a_candidate():
    c = cl(USB_PART)
    assert isinstance(c, Candidate) and (c.device, c.uuid, c.label, c.fs_type) == \
        ("/dev/sdb1", "ABCD-1234", "KINGSTON", "vfat")


def test_our_rule_property_also_qualifies():
    props = {**USB_PART, "ID_BUS": "ata", "STENO_EXPORT": "1"}
    assert isinstance(cl(props), Candidate)


@pytest.mark.parametrize("change", [
    {"ID_BUS": "ata"},                    # not removable
    {"UDISKS_SYSTEM": "1"},               # udisks: system device
    {"UDISKS_IGNORE": "1"},
    {"ID_FS_USAGE": "crypto", "ID_FS_TYPE": "crypto_LUKS"},
    {"DEVTYPE": "disk", "ID_PART_TABLE_TYPE": "dos", "ID_FS_USAGE": "", "ID_FS_TYPE": ""},
])
def test_not_ours(change):
    assert cl({**USB_PART, **change}) is None


def test_system_disk_and_ignored_uuid_are_never_candidates():
    assert cl(USB_PART, excluded={"sdb"}) is None
    assert cl(USB_PART, ignore=["abcd-1234"]) is None


def test_unusable_reasons():
    assert "no filesystem" in cl({**USB_PART, "ID_FS_USAGE": "", "ID_FS_TYPE": ""})
    assert "unsupported" in cl({**USB_PART, "ID_FS_TYPE": "zfs_member"})


def test_unpartitioned_stick():
    assert isinstance(cl({**USB_PART, "DEVTYPE": "disk", "DEVNAME": "/dev/sdb"}), Candidate)


def test_pick_prefers_label_then_largest_writable():
    a = Candidate("/dev/sdb1", "sdb", "A", "BOOT", "vfat", 100, False)
    b = Candidate("/dev/sdb2", "sdb", "B", "DATA", "exfat", 900, False)
    c = Candidate("/dev/sdb3", "sdb", "C", "BIG", "ext4", 5000, True)
    assert pick([a, b, c]) == b
    assert pick([a, b, c], ["BOOT"]) == a
    assert pick([a, b, c], ["c"]) == c           # a UUID works too
    assert pick([]) is None


def test_system_disks_finds_the_root_disk():
    disks = system_disks(["/"])
    st = os.stat("/")
    if os.major(st.st_dev) == 0:
        assert disks == set()                     # overlay/tmpfs root: nothing to name
    else:
        assert disks and all("/" not in d for d in disks)


def test_mount_options_are_safe_and_vfat_has_no_flush():
    o = mount_options("vfat", ["nosuid", "nodev", "noexec", "flush"]).split(",")
    assert {"nosuid", "nodev", "noexec"} <= set(o) and "flush" not in o
    assert "noatime" in mount_options("ext4", ["nosuid"])


# ---- policy -------------------------------------------------------------------------

def test_noexport_marker(tmp_path):
    (tmp_path / ".steno-noexport").write_text("")
    p = policy.stick_policy(tmp_path, config.Config().usb)
    assert not p.write and ".steno-noexport" in p.reason


def test_stick_config_is_validated_like_the_main_config(tmp_path):
    cfg = config.Config().usb
    (tmp_path / "steno-export.toml").write_text('formats = ["txt", "pdf"]\nsessions = "all"\n')
    p = policy.stick_policy(tmp_path, cfg)
    assert p.write and p.auto.formats == ["txt", "pdf"] and p.auto.sessions == "all"
    (tmp_path / "steno-export.toml").write_text('formats = ["exe"]\nsesions = "all"\n')
    p = policy.stick_policy(tmp_path, cfg)
    assert not p.write and "formats" in p.reason and "sesions" in p.reason


def test_stick_config_symlink_and_huge_file_are_refused(tmp_path):
    target = tmp_path / "elsewhere.toml"
    target.write_text('formats = ["txt"]\n')
    root = tmp_path / "stick"
    root.mkdir()
    (root / "steno-export.toml").symlink_to(target)
    p = policy.stick_policy(root, config.Config().usb)
    assert not p.write and "unusable" in p.reason
    (root / "steno-export.toml").unlink()
    (root / "steno-export.toml").write_text("#" * (policy.MAX_STICK_CONFIG + 10))
    assert not policy.stick_policy(root, config.Config().usb).write


def test_stick_config_nested_too_deeply_is_refused_with_a_reason(tmp_path):
    """A stick's author writes 5,000 nested arrays into steno-export.toml (well under its size limit): tomllib
    raised RecursionError, which escaped the stick's handling; now the stick is left alone, saying why."""
    (tmp_path / "steno-export.toml").write_text("formats = " + "[" * 5_000 + "\n")
    p = policy.stick_policy(tmp_path, config.Config().usb)
    assert not p.write and "unusable" in p.reason and "nested too deeply" in p.reason


@pytest.mark.parametrize("days", [100_000_000, 10_000_000_000])
def test_stick_config_since_days_beyond_any_date_is_refused_with_a_reason(tmp_path, days):
    """A stick's author asks for the sessions of the last 100 million days: the stick's file was accepted, then
    choosing the sessions failed with OverflowError, shown on the device as 'date value out of range' (or
    'days=...; must have magnitude <= 999999999'). Now the file is invalid, saying which key and why."""
    (tmp_path / "steno-export.toml").write_text(f'sessions = "since_days"\nsince_days = {days}\n')
    p = policy.stick_policy(tmp_path, config.Config().usb)
    if p.write:
        policy.select_sessions([summary(1)], p.auto, set())
    assert not p.write and "invalid" in p.reason and "since_days" in p.reason, p.reason


def test_stick_config_can_disable_auto_export(tmp_path):
    (tmp_path / "steno-export.toml").write_text("enabled = false\n")
    p = policy.stick_policy(tmp_path, config.Config().usb)
    assert not p.write


def test_allow_lists():
    cfg = config.Config().usb
    assert policy.allowed(cfg, "ANY", "X")
    cfg = config.replace(config.Config(), **{"usb.allow_labels": ["OFFICE"]}).usb
    assert policy.allowed(cfg, "OFFICE", "X") and not policy.allowed(cfg, "OTHER", "X")
    cfg = config.replace(config.Config(), **{"usb.allow_uuids": ["abcd-1234"]}).usb
    assert policy.allowed(cfg, "", "ABCD-1234")


def test_select_sessions_new_all_since_days(tmp_path):
    sums = [summary(1), summary(2), summary(3, status="recording")]
    auto = config.Config().usb.auto_export
    assert policy.select_sessions(sums, auto, {summary(1).uuid}) == [2]
    all_ = config.replace(config.Config(), **{"usb.auto_export.sessions": "all"}).usb.auto_export
    assert policy.select_sessions(sums, all_, {summary(1).uuid}) == [1, 2]
    recent = config.replace(config.Config(), **{"usb.auto_export.sessions": "since_days",
                                                 "usb.auto_export.since_days": 1}).usb.auto_export
    now = summary(2).start_time + dt.timedelta(hours=1)
    assert policy.select_sessions(sums, recent, set(), now=now) == [2]


def test_sessions_on_stick_reads_the_engines_manifest(tmp_path):
    from steno_exportd.engine import manifest as mf
    d = tmp_path / "SilentSteno"
    d.mkdir()
    m = mf.Manifest({"u1": {"folder": "a", "files": {}}, "u2": {"folder": "b", "files": {}},
                     "rebuilt:c": {"folder": "c", "files": {}}, "merged:d": {"folder": "d", "files": {}}})
    (d / "manifest.json").write_text(json.dumps(m.to_json()))
    assert policy.sessions_on_stick(tmp_path) == {"u1", "u2"}
    (d / "manifest.json").write_text('{"sessions": {"u3": {"folder": "x", "files": {}}}}')   # not ours
    assert policy.sessions_on_stick(tmp_path) == set()
    (d / "manifest.json").write_text("not json")
    assert policy.sessions_on_stick(tmp_path) == set()


def test_sessions_on_stick_never_follows_a_symlinked_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from steno_exportd.engine import manifest as mf
    (elsewhere / "manifest.json").write_text(json.dumps(mf.Manifest({"u1": {"folder": "a", "files": {}}}).to_json()))
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / "SilentSteno").symlink_to(elsewhere)
    assert policy.sessions_on_stick(stick) == set()


def test_formats_without_audio():
    auto = config.replace(config.Config(), **{"usb.auto_export.include_audio": False}).usb.auto_export
    assert "audio" not in policy.formats_for(auto)


# ---- registry -----------------------------------------------------------------------

async def test_registry_publishes_changes():
    bus = EventBus()
    reg = DeviceRegistry(bus)
    seen = []

    async def follow():
        async for ev in bus.subscribe():
            seen.append(ev)
    t = asyncio.create_task(follow())
    await asyncio.sleep(0)
    did = device_id("ABCD-1234")
    assert did == "fs_abcd_1234"
    reg.change(did, uuid="ABCD-1234", label="K", state=DeviceState.DETECTED)
    reg.change(did, state=DeviceState.DETECTED)                     # no change: no event
    reg.change(did, state=DeviceState.ERROR, error="boom")
    reg.change(did, state=DeviceState.MOUNTED)                      # error clears on a good state
    assert reg.get(did).error == "" and len(reg) == 1
    with pytest.raises(NotFoundError):
        reg.get("fs_nope")
    reg.remove(did)
    await asyncio.sleep(0)
    t.cancel()
    kinds = [type(e) for e in seen]
    assert kinds == [DeviceUpdated, DeviceUpdated, DeviceUpdated, DeviceRemoved]
    assert reg.list() == []


def test_registry_finds_the_device_of_a_target_path():
    reg = DeviceRegistry(EventBus())
    reg.change("fs_a", mount_point="/media/root/A", state=DeviceState.MOUNTED)
    reg.change("fs_b", mount_point="/media/root/AB", state=DeviceState.MOUNTED)
    assert reg.by_mount_point("/media/root/A/SilentSteno").id == "fs_a"
    assert reg.by_mount_point("/media/root/AB").id == "fs_b"
    assert reg.by_mount_point("/srv/export") is None
