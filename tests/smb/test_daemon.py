"""SMB push through the real daemon: D-Bus ExportSessions and steno-exportctl to smb:<remote>, push-on-new."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from steno_exportd.dbus import BUS_NAME, JOB_IFACE, MANAGER_IFACE, ROOT_PATH
from tests.parts.daemon import REPO, require_core, write_config
from tests.parts import sha256sum_check, until, wait_for
from tests.recorder_db import add_session_like, sessions_with_audio
from tests.smb.recorder import remote_toml


@pytest.fixture
def pushing_daemon(tmp_path, office, private_bus, daemon_factory, demo_library):
    """The daemon on a private bus with remote 'office' (push_on_new) on a copy of a demo library."""
    require_core()
    smbd, remote, root, _ = office
    db = demo_library(tmp_path / "library")      # the copy is what the test changes
    (tmp_path / "exports").mkdir()
    cfg = write_config(tmp_path / "config.toml", tmp_path, private_bus, **{"smb.recorder_folder": '"rec-d"'})
    with open(cfg, "a") as f:
        f.write(remote_toml(remote, push_on_new=True, formats=["txt", "json"]))
    d = daemon_factory(cfg)
    d.wait_ready(timeout=30)
    return d, db, root / "nas" / "rec-d", private_bus


def pushed_folders(nas) -> dict[str, str]:
    try:
        return {u: s["folder"] for u, s in json.loads((nas / "manifest.json").read_text())["sessions"].items()
                if not s.get("finishing")}     # (recorded, its folder maybe not renamed into place yet)
    except (OSError, ValueError, KeyError):
        return {}


async def call(bus, path, iface, member, sig="", body=()):
    return await bus.call(Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                                  signature=sig, body=list(body)))


async def test_dbus_ctl_and_push_on_new_through_the_daemon(pushing_daemon, tmp_path):
    d, db, nas, address = pushing_daemon
    ids = sessions_with_audio(db)
    bus = await MessageBus(bus_address=address).connect()
    try:
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}",
                       [[str(ids[0])], ["txt"], "smb:nas9", {}])
        assert r.message_type == MessageType.ERROR and r.error_name.endswith("NotFound"), r.body
        assert "office" in r.body[0]
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}",
                       [[str(ids[0])], ["txt", "json"], "smb:office", {}])
        assert r.message_type == MessageType.METHOD_RETURN, r.body
        job = r.body[0]
        seen = []

        async def props():
            m = await call(bus, job, "org.freedesktop.DBus.Properties", "GetAll", "s", [JOB_IFACE])
            assert m.message_type == MessageType.METHOD_RETURN, m.body
            p = {k: v.value for k, v in m.body[0].items()}
            seen.append(p)
            return p

        async def finished():
            p = await props()
            return p if p["State"] in ("completed", "failed", "cancelled") else None
        p = await until(finished, "the push job to finish", timeout=30, in_thread=False)
        assert p["State"] == "completed", p["Error"]
        assert p["Operation"] == "push" and p["Target"] == "smb:office" and p["Progress"] == 1.0
        assert [x["ok"].value for x in p["Results"]] == [True]
    finally:
        bus.disconnect()
    first = pushed_folders(nas)
    assert len(first) == 1 and (nas / next(iter(first.values())) / "transcript.txt").is_file()

    # steno-exportctl export --to smb:office --wait
    r = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "steno_exportd.exportctl", "--bus", address, "export", "--sessions",
                         str(ids[1]), "--formats", "txt", "json", "--to", "smb:office", "--wait"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "completed: 1/1 session(s) ok" in r.stdout
    assert len(pushed_folders(nas)) == 2

    # a new session on the recorder is pushed by itself (push_on_new)
    new_uuid = add_session_like(db, ids[0], title="Pushed by itself")
    await until(lambda: new_uuid in pushed_folders(nas), "the new session on the NAS", timeout=60)
    folder = nas / pushed_folders(nas)[new_uuid]
    await until(lambda: (folder / "transcript.txt").is_file(), "its transcript", timeout=10)
    assert "Pushed by itself" in folder.name
    sums = nas / "SHA256SUMS"          # written last, when the push is complete
    await until(lambda: f"{folder.name}/transcript.txt" in sums.read_text(), "SHA256SUMS updated", timeout=20)
    assert not await asyncio.to_thread(sha256sum_check, nas)
    assert not list(nas.rglob(".steno-tmp-*"))

    d.signal(signal.SIGTERM)
    assert await asyncio.to_thread(d.wait_exit, 10) == 0


def test_sharing_switched_by_ctl_and_config_reload_on_the_real_daemon(tmp_path, smb_tmp, smbd_factory,
                                                                      private_bus, daemon_factory, demo_library):
    """An admin's view: `steno-exportctl sharing on` serves \\\\host\\meetings, `off` takes it away from a
    connected client, and samba.enabled = true in the file plus `reload` brings it back."""
    import smbclient
    from smbprotocol.exceptions import SMBException
    from tests.parts.smbdata import connected

    require_core()
    snippet = smb_tmp / "samba" / "steno-exportd.conf"
    smbd = smbd_factory(include=str(snippet))
    smbd.start()
    demo_library(tmp_path / "library", sessions=3, seed=8)
    (tmp_path / "exports").mkdir()
    q = json.dumps
    settings = {"samba.export_dir": q(str(smb_tmp / "export")), "samba.snippet_path": q(str(snippet)),
                "samba.reload_command": q(smbd.reload_command()), "samba.close_command": q(smbd.close_command()),
                "samba.formats": q(["txt", "json"]), "samba.announce": "false",
                "samba.guest_ok": "true"}           # the share read as a guest (not the default)
    cfg = write_config(tmp_path / "config.toml", tmp_path, private_bus, **settings)
    d = daemon_factory(cfg)
    d.wait_ready(timeout=30)

    def ctl(*argv):
        return subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", private_bus, *argv],
                              capture_output=True, text=True, timeout=60, cwd=REPO)

    def served(kw):
        try:
            names = smbclient.listdir("\\\\127.0.0.1\\meetings", **kw)
        except SMBException:        # gone (access denied, name deleted, not found)
            return None
        return names if "SHA256SUMS" in names else None

    assert "samba:       off" in ctl("status").stdout
    r = ctl("sharing", "on")
    assert r.returncode == 0 and r.stdout.startswith("sharing: on"), r.stdout + r.stderr
    with connected(smbd.port) as kw:
        # the share comes up first and fills as the sessions are exported (SHA256SUMS kept current per
        # session); a user sees the session folders at the top once the export has gone past them
        def sessions(kw):
            names = served(kw) or []
            return [n for n in names if n.startswith("20")]
        wait_for(lambda: len(sessions(kw)) >= 2, timeout=60, what="session folders on \\\\127.0.0.1\\meetings")
        wait_for(lambda: "samba:       on\n" in ctl("status").stdout, timeout=20, what="status: serving")
        assert ctl("sharing", "off").returncode == 0
        wait_for(lambda: served(kw) is None, timeout=20, what="the connected client to lose the share")
    cfg.write_text(cfg.read_text().replace("[samba]\n", "[samba]\nenabled = true\n", 1))
    assert ctl("reload").returncode == 0
    with connected(smbd.port) as kw:
        wait_for(lambda: served(kw), timeout=60, what="the share back after a config reload")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(10) == 0
