"""The udisks client against the UDisks2 D-Bus interface contract, on a private bus.

Loop devices have no Drive, so Drive.PowerOff cannot run for real here: a service that
implements the documented org.freedesktop.UDisks2 interfaces (same names, signatures and
properties) stands in for udisksd on a private dbus-daemon.
"""
import asyncio
import os
import subprocess
import tempfile

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

from steno_exportd.usb.udisks import UDisks, UDisksError, UDisksUnavailable
from tests.parts import require_tool
from tests.parts.dbus import stop_with_answer

BLOCK = "/org/freedesktop/UDisks2/block_devices/sdb1"
DRIVE = "/org/freedesktop/UDisks2/drives/Kingston_DataTraveler_3_0_1234"

CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={sock}</listen>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
<allow own="*"/></policy></busconfig>"""


@pytest.fixture
def private_bus():
    require_tool("dbus-daemon")
    d = tempfile.mkdtemp(prefix="udisks-contract-")
    sock = os.path.join(d, "bus")
    conf = os.path.join(d, "bus.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(sock=sock))
    proc = subprocess.Popen(["dbus-daemon", "--config-file", conf, "--nofork", "--print-address=1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        addr = proc.stdout.readline().strip()
        assert addr, "private dbus-daemon did not start"
        yield addr
    finally:
        proc.terminate()
        proc.wait(10)
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)


class Manager(ServiceInterface):
    def __init__(self):
        super().__init__("org.freedesktop.UDisks2.Manager")

    @method()
    def ResolveDevice(self, devspec: "a{sv}", options: "a{sv}") -> "ao":
        return [BLOCK] if devspec["path"].value == "/dev/sdb1" else []


class Block(ServiceInterface):
    def __init__(self, hint_system=False):
        super().__init__("org.freedesktop.UDisks2.Block")
        self.hint_system = hint_system

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> "ay":
        return b"/dev/sdb1\0"

    @dbus_property(access=PropertyAccess.READ)
    def PreferredDevice(self) -> "ay":
        return b"/dev/sdb1\0"

    @dbus_property(access=PropertyAccess.READ)
    def IdUUID(self) -> "s":
        return "ABCD-1234"

    @dbus_property(access=PropertyAccess.READ)
    def IdLabel(self) -> "s":
        return "KINGSTON"

    @dbus_property(access=PropertyAccess.READ)
    def IdType(self) -> "s":
        return "vfat"

    @dbus_property(access=PropertyAccess.READ)
    def Size(self) -> "t":
        return 16 << 30

    @dbus_property(access=PropertyAccess.READ)
    def ReadOnly(self) -> "b":
        return False

    @dbus_property(access=PropertyAccess.READ)
    def HintSystem(self) -> "b":
        return self.hint_system

    @dbus_property(access=PropertyAccess.READ)
    def HintIgnore(self) -> "b":
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Drive(self) -> "o":
        return DRIVE


class Filesystem(ServiceInterface):
    def __init__(self, calls):
        super().__init__("org.freedesktop.UDisks2.Filesystem")
        self.calls = calls
        self.mounts = []

    @dbus_property(access=PropertyAccess.READ)
    def MountPoints(self) -> "aay":
        return [m.encode() + b"\0" for m in self.mounts]

    @method()
    def Mount(self, options: "a{sv}") -> "s":
        self.calls.append(("Mount", {k: v.value for k, v in options.items()}))
        self.mounts = ["/media/root/KINGSTON"]
        return self.mounts[0]

    @method()
    def Unmount(self, options: "a{sv}"):
        self.calls.append(("Unmount", {k: v.value for k, v in options.items()}))
        self.mounts = []


class Drive(ServiceInterface):
    def __init__(self, calls, can_power_off=True, ejectable=True):
        super().__init__("org.freedesktop.UDisks2.Drive")
        self.calls = calls
        self.can_power_off = can_power_off
        self.ejectable = ejectable

    @dbus_property(access=PropertyAccess.READ)
    def CanPowerOff(self) -> "b":
        return self.can_power_off

    @dbus_property(access=PropertyAccess.READ)
    def Ejectable(self) -> "b":
        return self.ejectable

    @method()
    def PowerOff(self, options: "a{sv}"):
        self.calls.append(("PowerOff", {k: v.value for k, v in options.items()}))

    @method()
    def Eject(self, options: "a{sv}"):
        self.calls.append(("Eject", {k: v.value for k, v in options.items()}))


async def serve(addr, calls, **kw):
    bus = await MessageBus(bus_address=addr).connect()
    bus.export("/org/freedesktop/UDisks2/Manager", Manager())
    bus.export(BLOCK, Block(kw.pop("hint_system", False)))
    bus.export(BLOCK, Filesystem(calls))
    bus.export(DRIVE, Drive(calls, **kw))
    await bus.request_name("org.freedesktop.UDisks2")
    return bus


async def test_mount_unmount_power_off_follow_the_contract(private_bus):
    calls = []
    svc = await serve(private_bus, calls)
    ud = await UDisks.connect(private_bus)
    try:
        mp = await ud.mount("/dev/sdb1")
        assert mp == "/media/root/KINGSTON"
        assert await ud.mount("/dev/sdb1") == mp               # an existing mount is reused
        opts = calls[0][1]["options"].split(",")
        assert {"nosuid", "nodev", "noexec"} <= set(opts) and "flush" not in opts
        await ud.unmount("/dev/sdb1")
        assert await ud.power_off("/dev/sdb1") == "power_off"
        assert [c[0] for c in calls] == ["Mount", "Unmount", "PowerOff"]
        assert calls[-1][1] == {}
    finally:
        await ud.close()
        svc.disconnect()


async def test_drive_that_cannot_power_off_is_ejected(private_bus):
    calls = []
    svc = await serve(private_bus, calls, can_power_off=False, ejectable=True)
    ud = await UDisks.connect(private_bus)
    try:
        assert await ud.power_off("/dev/sdb1") == "eject"
        assert [c[0] for c in calls] == ["Eject"]
    finally:
        await ud.close()
        svc.disconnect()


async def test_system_device_is_never_mounted(private_bus):
    calls = []
    svc = await serve(private_bus, calls, hint_system=True)
    ud = await UDisks.connect(private_bus)
    try:
        with pytest.raises(UDisksError, match="system device"):
            await ud.mount("/dev/sdb1")
        assert calls == []
    finally:
        await ud.close()
        svc.disconnect()


async def test_missing_udisks_is_a_clear_error(private_bus):
    with pytest.raises(UDisksUnavailable, match="udisks2 is not running"):
        await UDisks.connect(private_bus)
    with pytest.raises(UDisksUnavailable, match="system D-Bus"):
        await UDisks.connect("unix:path=/nonexistent/bus")


async def test_unknown_device(private_bus):
    svc = await serve(private_bus, [])
    ud = await UDisks.connect(private_bus)
    try:
        with pytest.raises(UDisksError, match="does not know /dev/sdz9"):
            await ud.resolve("/dev/sdz9", timeout=0.2)
    finally:
        await ud.close()
        svc.disconnect()


async def test_a_stop_that_comes_with_udisks_answer_is_not_lost(private_bus, monkeypatch):
    """The USB watcher stopped (the daemon stopping, a stick pulled) in the very loop turns in which udisks2's answer
    comes back: the call ends stopped. Python 3.11's asyncio.wait_for, which the client waited with, returned the
    answer and forgot the stop: the watcher went on, and the daemon's stop waited for it."""
    calls = []
    svc = await serve(private_bus, calls)
    ud = await UDisks.connect(private_bus)
    caller: list[asyncio.Task] = []
    stop_with_answer(monkeypatch, "Unmount", caller)      # udisks2's real answer, the stop in its loop turn
    try:
        await ud.mount("/dev/sdb1")
        caller.append(asyncio.create_task(ud.unmount("/dev/sdb1")))
        await asyncio.wait(caller, timeout=30)
        assert [c[0] for c in calls] == ["Mount", "Unmount"]     # udisks2 did what was asked
        assert caller[0].cancelled(), f"the stop was lost: the call went on and ended {caller[0]}"
    finally:
        for t in caller:
            t.cancel()
        await ud.close()
        svc.disconnect()
