"""A small udisks2 client over the system bus (dbus-fast): mount, unmount, power off."""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import re

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from steno_exportd.engine.targets import dir_alive
from steno_exportd.errors import StenoError

log = logging.getLogger(__name__)

NAME = "org.freedesktop.UDisks2"
ROOT = "/org/freedesktop/UDisks2"
MANAGER = ROOT + "/Manager"
I_MANAGER = NAME + ".Manager"
I_BLOCK = NAME + ".Block"
I_FS = NAME + ".Filesystem"
I_PART = NAME + ".Partition"
I_DRIVE = NAME + ".Drive"
I_LOOP = NAME + ".Loop"
PROPS = "org.freedesktop.DBus.Properties"
# a mount whose filesystem is gone: what a dead FUSE helper (a stick pulled without eject) answers
GONE = frozenset({errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV})

# Options udisks accepts per filesystem, beside the safe ones from the config.
# No 'flush' on vfat: the writer fsyncs every file itself, flush only slows bulk copies.
FS_OPTIONS = {
    "vfat": ("utf8", "shortname=mixed"),
    "exfat": (),
    "ntfs": (),
    "ext4": ("noatime",),
    "ext3": ("noatime",),
    "ext2": ("noatime",),
    "btrfs": ("noatime",),
}


class UDisksError(StenoError):
    """udisks2 refused or failed an operation; ``name`` is the D-Bus error name."""

    def __init__(self, msg: str, name: str = "") -> None:
        super().__init__(msg)
        self.name = name


class UDisksUnavailable(UDisksError):
    """udisks2 is not on the system bus (or there is no system bus)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BlockInfo:
    path: str               # D-Bus object path
    device: str             # /dev/...
    uuid: str
    label: str
    fs_type: str
    size: int
    read_only: bool
    hint_system: bool
    hint_ignore: bool
    drive: str              # object path or "/"
    mount_points: tuple[str, ...]
    is_filesystem: bool
    table: str = "/"        # partition table object for a partition, else "/"


def mount_options(fs_type: str, base: list[str] | tuple[str, ...]) -> str:
    """The option string for Filesystem.Mount: the config's safe options plus fs-appropriate ones."""
    opts = list(dict.fromkeys([*base, *FS_OPTIONS.get(fs_type, ())]))
    return ",".join(o for o in opts if o and o != "flush")


def _ay(v) -> str:
    return bytes(v).rstrip(b"\0").decode("utf-8", "surrogateescape") if v else ""


def _escape(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", lambda m: "_%02x" % ord(m.group()), name)


class UDisks:
    """Async udisks2 client; ``await UDisks.connect()``, then mount/unmount/power_off."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, bus_address: str | None = None) -> "UDisks":
        """Connect to the bus and check that udisks2 is there; raise UDisksUnavailable if not."""
        try:
            bus = MessageBus(bus_address=bus_address) if bus_address else MessageBus(bus_type=BusType.SYSTEM)
            await bus.connect()
        except (OSError, Exception) as e:  # dbus-fast raises assorted errors for a missing bus
            raise UDisksUnavailable(f"cannot connect to the system D-Bus ({e}); "
                                    "USB sticks need the system bus and udisks2") from None
        self = cls(bus)
        if not await self._available():
            bus.disconnect()
            raise UDisksUnavailable("udisks2 is not running: org.freedesktop.UDisks2 has no owner on the "
                                    "system bus and cannot be activated (install/start udisks2)")
        return self

    async def close(self) -> None:
        self.bus.disconnect()

    async def _available(self) -> bool:
        r = await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                             "NameHasOwner", "s", [NAME], check=False)
        if r.message_type != MessageType.ERROR and r.body[0]:
            return True
        r = await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                             "StartServiceByName", "su", [NAME, 0], check=False)
        return r.message_type != MessageType.ERROR

    async def _call(self, dest: str, path: str, iface: str, member: str, sig: str = "",
                    body: list | None = None, check: bool = True, timeout: float = 30.0) -> Message:
        msg = Message(destination=dest, path=path, interface=iface, member=member,
                      signature=sig, body=body or [])
        try:
            async with asyncio.timeout(timeout):
                reply = await self.bus.call(msg)
        except asyncio.TimeoutError:
            raise UDisksError(f"{iface}.{member} on {path}: no answer from udisks2 in {timeout:.0f} s") from None
        if check and reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            if reply.error_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                                    "org.freedesktop.DBus.Error.NameHasNoOwner"):
                raise UDisksUnavailable(f"udisks2 went away from the system bus: {text}", reply.error_name)
            raise UDisksError(f"{member} failed: {text}", reply.error_name)
        return reply

    async def _udisks(self, path: str, iface: str, member: str, sig: str = "", body: list | None = None,
                      timeout: float = 30.0) -> list:
        return (await self._call(NAME, path, iface, member, sig, body, timeout=timeout)).body

    async def props(self, path: str, iface: str) -> dict | None:
        """All properties of one interface, or None when the object does not have it."""
        r = await self._call(NAME, path, PROPS, "GetAll", "s", [iface], check=False)
        if r.message_type == MessageType.ERROR:
            if r.error_name in ("org.freedesktop.DBus.Error.ServiceUnknown",):
                raise UDisksUnavailable(f"udisks2 went away from the system bus: {r.body}", r.error_name)
            return None
        return {k: v.value for k, v in r.body[0].items()}

    async def resolve(self, device: str, timeout: float = 5.0) -> str:
        """The block object path for a device node; waits briefly for udisks to catch up with udev."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            r = await self._call(NAME, MANAGER, I_MANAGER, "ResolveDevice", "a{sv}a{sv}",
                                 [{"path": Variant("s", device)}, {}], check=False)
            if r.message_type != MessageType.ERROR and r.body[0]:
                return r.body[0][0]
            if r.message_type == MessageType.ERROR and "UnknownMethod" in (r.error_name or ""):
                path = f"{ROOT}/block_devices/{_escape(device.rsplit('/', 1)[-1])}"
                if await self.props(path, I_BLOCK) is not None:
                    return path
            if asyncio.get_running_loop().time() > deadline:
                raise UDisksError(f"udisks2 does not know {device}")
            await asyncio.sleep(0.05)

    async def info(self, device_or_path: str) -> BlockInfo:
        path = device_or_path if device_or_path.startswith(ROOT) else await self.resolve(device_or_path)
        b = await self.props(path, I_BLOCK)
        if b is None:
            raise UDisksError(f"{path} is not a block device")
        fs = await self.props(path, I_FS)
        part = await self.props(path, I_PART)
        return BlockInfo(
            path=path, device=_ay(b.get("PreferredDevice")) or _ay(b.get("Device")),
            uuid=b.get("IdUUID", ""), label=b.get("IdLabel", ""), fs_type=b.get("IdType", ""),
            size=int(b.get("Size", 0)), read_only=bool(b.get("ReadOnly")),
            hint_system=bool(b.get("HintSystem")), hint_ignore=bool(b.get("HintIgnore")),
            drive=b.get("Drive", "/"),
            mount_points=tuple(_ay(m) for m in (fs or {}).get("MountPoints", [])),
            is_filesystem=fs is not None, table=(part or {}).get("Table", "/"))

    async def mount(self, device: str, base_options: list[str] | tuple[str, ...] = ("nosuid", "nodev", "noexec"),
                    allow_system: bool = False, retries: int = 5) -> str:
        """Mount via udisks (or reuse an existing mount); return the mount point."""
        info = await self.info(device)
        if info.hint_system and not allow_system:
            raise UDisksError(f"{device} is a system device (udisks HintSystem); not mounting it")
        if not info.is_filesystem:
            raise UDisksError(f"{device} has no mountable filesystem")
        if info.mount_points:
            if await asyncio.to_thread(_alive, info.mount_points[0]):
                return info.mount_points[0]
            # a dead FUSE mount left by a stick pulled without eject: drop it, then mount afresh
            log.info("%s: stale mount at %s; unmounting it first", device, info.mount_points[0])
            await self.unmount(device, force=True)
            info = await self.info(device)
        opts = mount_options(info.fs_type, base_options)
        for attempt in range(retries + 1):
            try:
                (mp,) = await self._udisks(info.path, I_FS, "Mount", "a{sv}", [{"options": Variant("s", opts)}])
                break
            except UDisksError as e:
                if e.name.endswith("AlreadyMounted"):
                    info = await self.info(info.path)
                    if info.mount_points and await asyncio.to_thread(_alive, info.mount_points[0]):
                        return info.mount_points[0]
                # Right after insertion a FUSE helper can fail while udev/udisks still probe the device.
                if attempt == retries or e.name.endswith(("NotAuthorized", "NotAuthorizedCanObtain",
                                                          "OptionNotPermitted", "NotSupported")):
                    raise
                log.debug("mount of %s failed (%s); retrying", device, e)
                await asyncio.sleep(0.2 * (attempt + 1))
        log.info("mounted %s (%s) at %s with %s", device, info.fs_type, mp, opts)
        return mp

    async def unmount(self, device: str, force: bool = False) -> None:
        """Unmount every mount of the filesystem via udisks; nothing to do when not mounted."""
        info = await self.info(device)
        if not info.mount_points:
            return
        opts = {"force": Variant("b", True)} if force else {}
        try:
            await self._udisks(info.path, I_FS, "Unmount", "a{sv}", [opts])
        except UDisksError as e:
            if not e.name.endswith("NotMounted"):
                raise
        log.info("unmounted %s", device)

    async def power_off(self, device: str) -> str:
        """Power the drive off when it can; for loop devices delete the loop. Returns what was done."""
        info = await self.info(device)
        if info.drive and info.drive != "/":
            drive = await self.props(info.drive, I_DRIVE) or {}
            if drive.get("CanPowerOff"):
                await self._udisks(info.drive, I_DRIVE, "PowerOff", "a{sv}", [{}])
                log.info("powered off %s (%s)", info.drive, device)
                return "power_off"
            if drive.get("Ejectable"):
                await self._udisks(info.drive, I_DRIVE, "Eject", "a{sv}", [{}])
                return "eject"
            return "none"
        # Loop devices have no drive: deleting the loop is their power-off.
        loop_obj = info.table if info.table != "/" else info.path
        if await self.props(loop_obj, I_LOOP) is not None:
            await self._udisks(loop_obj, I_LOOP, "Delete", "a{sv}", [{}])
            log.info("deleted loop %s (%s)", loop_obj, device)
            return "loop_delete"
        return "none"


def _alive(mount_point: str) -> bool:
    """False for a mount whose filesystem is gone (ENOTCONN/ECONNABORTED from a dead FUSE helper): its root's
    first entry read, not all (a stick's root may hold a million)."""
    return dir_alive(mount_point, GONE)
