"""D-Bus mapping on a real private bus, in-process, with a small fake core (no real exports)."""
from __future__ import annotations

import asyncio
import socket
import dataclasses
import time

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from steno_exportd import events
from steno_exportd.dbus import BUS_NAME, MANAGER_IFACE, ROOT_PATH, JOB_IFACE, service
from tests.configs import make_config
from tests.fakes import FakeCore
from tests.parts import until


async def call(bus, path, iface, member, sig="", body=(), dest=BUS_NAME):
    reply = await bus.call(Message(destination=dest, path=path, interface=iface, member=member,
                                   signature=sig, body=list(body)))
    return reply


@pytest.fixture
async def running(private_bus, tmp_path):
    cfg = make_config(tmp_path, **{"dbus.bus": private_bus, "dbus.job_linger_seconds": 0.5,
                                    "export.allowed_dirs": [str(tmp_path)]})
    core = FakeCore(cfg)
    async with service.export(core) as svc:
        client = await MessageBus(bus_address=private_bus).connect()
        try:
            yield core, svc, client, tmp_path
        finally:
            client.disconnect()


async def test_sessions_and_errors(running):
    core, svc, bus, tmp = running
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}", [{}])
    assert r.message_type == MessageType.METHOD_RETURN
    assert [s["title"].value for s in r.body[0]] == ["Meeting 1", "Meeting 2", "Meeting 3"]
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}",
                   [{"query": Variant("s", "2")}])
    assert [s["id"].value for s in r.body[0]] == [2]
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "GetSession", "s", ["99"])
    assert r.message_type == MessageType.ERROR and r.error_name == "org.silentsteno.Export1.Error.NotFound"
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}", [{"bogus": Variant("b", True)}])
    assert r.error_name == "org.silentsteno.Export1.Error.InvalidArgs"
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [["1"], ["nope"], str(tmp), {}])
    assert r.error_name == "org.silentsteno.Export1.Error.NotFound" and "nope" in r.body[0]
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [["1"], ["txt"], "/etc", {}])
    assert r.error_name == "org.silentsteno.Export1.Error.NotAuthorized"
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}",
                   [["1"], ["txt"], ROOT_PATH + "/devices/nope", {}])
    assert r.error_name == "org.silentsteno.Export1.Error.NotFound"


async def test_job_lifecycle_throttled(running):
    core, svc, bus, tmp = running
    seen: list[tuple[float, dict]] = []
    om: list[tuple[str, str]] = []
    completed = []

    def on_msg(m):
        if m.member == "PropertiesChanged" and m.body[0] == JOB_IFACE:
            seen.append((time.monotonic(), m.body[1]))
        elif m.member in ("InterfacesAdded", "InterfacesRemoved"):
            om.append((m.member, m.body[0], m.path))
        elif m.member == "Completed":
            completed.append(m.body)
    bus.add_message_handler(on_msg)
    await call(bus, "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", ["type='signal'"],
               dest="org.freedesktop.DBus")
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [["1", "2"], ["txt"], str(tmp), {}])
    assert r.message_type == MessageType.METHOD_RETURN, r.body
    path = r.body[0]
    assert path == ROOT_PATH + "/jobs/1"
    core.jobs.update(1, state=events.JobState.RUNNING)
    t0 = time.monotonic()
    for i in range(1, 41):   # 40 progress updates within ~1 s
        core.jobs.update(1, bytes_done=i * 25)
        await asyncio.sleep(0.025)
    updating = time.monotonic() - t0
    core.jobs.update(1, state=events.JobState.COMPLETED, bytes_done=1000)
    await until(lambda: any(m == "InterfacesRemoved" for m, *_ in om), "the job removed", 5, in_thread=False)
    assert om, (seen, completed)
    assert ("InterfacesAdded", path, ROOT_PATH) in om
    assert ("InterfacesRemoved", path, ROOT_PATH) in om
    assert completed == [[True, "completed"]]
    progress = [t for t, ch in seen if "BytesDone" in ch and "State" not in ch]
    assert progress, "no progress PropertiesChanged seen"
    # at most 4 Hz: counted against the time the updates took where they were made (the times the signals came in
    # at, through the bus daemon, bunch up on a busy machine)
    assert len(progress) <= 1 + updating / 0.25, f"{len(progress)} progress signals for {updating:.2f}s of updates"
    assert seen[-1][1]["State"].value == "completed"


async def test_properties_rw(running):
    core, svc, bus, tmp = running
    r = await call(bus, ROOT_PATH, "org.freedesktop.DBus.Properties", "Set", "ssv",
                   [MANAGER_IFACE, "AutoExport", Variant("b", False)])
    assert r.message_type == MessageType.METHOD_RETURN
    assert core.auto_export is False
    await call(bus, ROOT_PATH, "org.freedesktop.DBus.Properties", "Set", "ssv",
               [MANAGER_IFACE, "SambaEnabled", Variant("b", True)])
    assert core.sharing_enabled is True
    r = await call(bus, ROOT_PATH, "org.freedesktop.DBus.Properties", "GetAll", "s", [MANAGER_IFACE])
    props = {k: v.value for k, v in r.body[0].items()}
    assert props["SessionCount"] == 3 and props["AutoExport"] is False and props["SambaEnabled"] is True
    core.devices.update(events.DeviceSnapshot(id="1234-ABCD", uuid="1234-ABCD", label="KINGSTON", fs_type="vfat",
                                          device="/dev/sdb1", size=10, free=5, mount_point="/media/k",
                                          state=events.DeviceState.MOUNTED,
                                          skip_reason=".steno-noexport on the stick"))
    await asyncio.sleep(0.1)
    r = await call(bus, ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
    objs = r.body[0]
    dev = ROOT_PATH + "/devices/1234_2dABCD"
    assert objs[dev]["org.silentsteno.Export1.Device"]["Label"].value == "KINGSTON"
    # why auto-export left the stick alone, for the touchscreen (not only in the journal)
    assert objs[dev]["org.silentsteno.Export1.Device"]["SkipReason"].value == ".steno-noexport on the stick"


async def _ctl(address, *argv):
    import sys
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "steno_exportd.exportctl", "--bus", address, *argv,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, out.decode(), err.decode()


async def test_ctl_over_the_bus(running, private_bus):
    import json
    core, svc, bus, tmp = running
    rc, out, err = await _ctl(private_bus, "sessions", "--json")
    assert rc == 0, err
    assert [s["title"] for s in json.loads(out)] == ["Meeting 1", "Meeting 2", "Meeting 3"]
    rc, out, err = await _ctl(private_bus, "status")
    assert rc == 0 and "sessions:    3" in out and "samba:       off\n" in out, out + err
    assert f"NAS folder:  {socket.gethostname()}-" in out and core.remote_folder in out, out
    core.set_sharing(True)
    core.set_samba_state("error: samba: testparm rejected the share: Unknown parameter")
    rc, out, err = await _ctl(private_bus, "status")      # switched on, but not served: the user sees why
    assert "samba:       on (error: samba: testparm rejected the share: Unknown parameter)" in out, out
    r = await call(bus, ROOT_PATH, "org.freedesktop.DBus.Properties", "Get", "ss", [MANAGER_IFACE, "SambaState"])
    assert r.body[0].value.startswith("error: samba: testparm")
    core.set_samba_state("serving")
    rc, out, err = await _ctl(private_bus, "status")
    assert "samba:       on\n" in out, out
    rc, out, err = await _ctl(private_bus, "sharing", "off")
    assert rc == 0 and core.sharing_enabled is False and out.startswith("sharing: off"), out + err
    rc, out, err = await _ctl(private_bus, "auto-export", "on")
    assert rc == 0 and core.auto_export is True and out == "auto-export: on\n", out + err
    rc, out, err = await _ctl(private_bus, "sharing", "maybe")
    assert rc == 2 and "invalid choice" in err
    rc, out, err = await _ctl(private_bus, "export", "--to", "/etc", "--sessions", "1", "--formats", "txt")
    assert rc == 5 and "allowed" in err
    rc, out, err = await _ctl(private_bus, "eject", "NOPE")
    assert rc == 4 and "no device" in err
    rc, out, err = await _ctl(private_bus, "export", "--to", str(tmp), "--sessions", "1", "--formats", "txt")
    assert rc == 0 and "job 1 started" in out
    rc, out, err = await _ctl(private_bus, "jobs", "--json")
    assert json.loads(out)[0]["State"] == "queued"
    rc, out, err = await _ctl(private_bus, "cancel", "1")
    assert rc == 0, err


async def test_ctl_daemon_not_running(private_bus):
    rc, out, err = await _ctl(private_bus, "status")
    assert rc == 3 and "not running" in err
    rc, out, err = await _ctl("unix:path=/nonexistent/bus", "status")
    assert rc == 3 and "is steno-exportd running" in err


async def test_device_export_and_busy(running):
    core, svc, bus, tmp = running
    snap = events.DeviceSnapshot(id="fs_12ab", uuid="12AB", label="STICK", fs_type="exfat", device="/dev/sdb1",
                                 size=10, free=5, mount_point=str(tmp), state=events.DeviceState.MOUNTED)
    core.devices.update(snap)
    core.devices.update(dataclasses.replace(snap, id="fs_99", mount_point="", state=events.DeviceState.MOUNTING))
    await asyncio.sleep(0.1)
    dev = ROOT_PATH + "/devices/fs_12ab"
    r = await call(bus, dev, "org.silentsteno.Export1.Device", "Export", "asasa{sv}", [["1"], ["txt"], {}])
    assert r.message_type == MessageType.METHOD_RETURN, r.body
    assert core.jobs.get(1).target == str(tmp)
    r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [["2"], ["txt"], dev, {}])
    assert r.message_type == MessageType.METHOD_RETURN, r.body
    # the touchscreen's export is a device's job, as the USB adapter's and the page's are: the export is held to the
    # stick's own filesystem (a stick pulled before its job opens it leaves an empty folder of the recorder's disk)
    assert [core.jobs.get(n).device_id for n in (1, 2)] == ["fs_12ab", "fs_12ab"]
    r = await call(bus, ROOT_PATH + "/devices/fs_99", "org.silentsteno.Export1.Device", "Export", "asasa{sv}",
                   [["1"], ["txt"], {}])
    assert r.error_name == "org.silentsteno.Export1.Error.Busy" and "not mounted" in r.body[0]


async def test_a_burst_of_signals_while_the_bus_is_busy_keeps_the_connection(tmp_path):
    """The bus daemon not reading for a moment (busy, or a big reply to a slow client): the daemon's socket fills;
    its next message must wait for room, not drop the connection (dbus-fast took EAGAIN for a lost bus, and the
    touchscreen lost the API until a restart)."""
    import os
    import signal
    from tests.parts.dbus import PrivateBus
    (tmp_path / "dbus").mkdir()
    bus = PrivateBus(tmp_path / "dbus")
    try:
        cfg = make_config(tmp_path, **{"dbus.bus": bus.address, "export.allowed_dirs": [str(tmp_path)]})
        async with service.export(FakeCore(cfg)) as svc:
            os.kill(bus.proc.pid, signal.SIGSTOP)
            try:
                for n in range(40):         # 4 MB of signals: far beyond a socket's buffer
                    svc.manager.emit_properties_changed({"Status": f"{n} " + "x" * 100_000})
                    await asyncio.sleep(0)
                await asyncio.sleep(0.5)
            finally:
                os.kill(bus.proc.pid, signal.SIGCONT)
            client = await MessageBus(bus_address=bus.address).connect()
            try:
                r = await asyncio.wait_for(call(client, ROOT_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                                                [MANAGER_IFACE, "Status"]), 10)
                assert r.message_type == MessageType.METHOD_RETURN, r.body
                assert svc.bus is not None and svc.bus.connected
            finally:
                client.disconnect()
    finally:
        bus.stop()
