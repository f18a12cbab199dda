"""udev watcher: block device events -> a small fixed set of stick events (Added, Removed, Unusable)."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pyudev

log = logging.getLogger(__name__)

SUPPORTED_FS = frozenset({"vfat", "exfat", "ntfs", "ntfs3", "ext2", "ext3", "ext4", "btrfs", "f2fs", "hfsplus"})


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A filesystem on a removable disk that the daemon may mount."""

    device: str            # /dev/sdb1
    disk: str              # kernel name of the whole disk, e.g. "sdb"
    uuid: str
    label: str
    fs_type: str
    size: int              # bytes
    read_only: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Added:
    candidate: Candidate


@dataclasses.dataclass(frozen=True, slots=True)
class Removed:
    device: str
    disk: str


@dataclasses.dataclass(frozen=True, slots=True)
class Unusable:
    """A removable disk the daemon cannot use (no filesystem, unknown filesystem)."""

    disk: str
    device: str
    key: str               # stable key (partition or disk UUID, else the device)
    reason: str


StickEvent = Added | Removed | Unusable


def system_disks(paths: Iterable[str | os.PathLike]) -> set[str]:
    """Kernel names of the disks holding the given paths (/, the recorder data)."""
    out: set[str] = set()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        major, minor = os.major(st.st_dev), os.minor(st.st_dev)
        sysdir = Path(f"/sys/dev/block/{major}:{minor}")
        if major == 0 or not sysdir.exists():
            continue
        real = sysdir.resolve()
        out.add(real.parent.name if (real / "partition").exists() else real.name)
    return out


def _is_removable_bus(props: Mapping[str, str]) -> bool:
    return props.get("ID_BUS") == "usb" or props.get("STENO_EXPORT") == "1"


def classify(props: Mapping[str, str], disk: str, *, size: int, read_only: bool,
             excluded_disks: set[str], ignore_uuids: Iterable[str] = ()) -> Candidate | str | None:
    """A Candidate, a reason string when unusable, or None when not ours to look at."""
    if props.get("SUBSYSTEM", "block") != "block" or props.get("DEVTYPE") not in ("disk", "partition"):
        return None
    if not _is_removable_bus(props):
        return None
    if disk in excluded_disks or props.get("UDISKS_SYSTEM") == "1" or props.get("UDISKS_IGNORE") == "1":
        return None
    uuid = props.get("ID_FS_UUID", "")
    if uuid and uuid.lower() in {u.lower() for u in ignore_uuids}:
        return None
    usage, fs = props.get("ID_FS_USAGE", ""), props.get("ID_FS_TYPE", "")
    if usage != "filesystem" or not fs:
        if props.get("DEVTYPE") == "disk" and props.get("ID_PART_TABLE_TYPE"):
            return None        # a partitioned disk: its partitions are the candidates
        if usage and usage != "filesystem":
            return None        # crypto, raid, swap: not for us
        return "no filesystem (format the stick as FAT32 or exFAT)"
    if fs not in SUPPORTED_FS:
        return f"unsupported filesystem {fs!r}"
    if not uuid:
        return "filesystem without a UUID"
    return Candidate(device=props.get("DEVNAME", ""), disk=disk, uuid=uuid,
                     label=props.get("ID_FS_LABEL", ""), fs_type=fs, size=size, read_only=read_only)


def pick(cands: list[Candidate], prefer_labels: Iterable[str] = ()) -> Candidate | None:
    """On a stick with several filesystems: a preferred label/UUID, else the largest writable."""
    if not cands:
        return None
    for want in prefer_labels:
        for c in cands:
            if want and (c.label == want or c.uuid.lower() == want.lower()):
                return c
    return sorted(cands, key=lambda c: (not c.read_only, c.size), reverse=True)[0]


def _disk_name(dev: pyudev.Device) -> str:
    # From DEVPATH (.../block/sdb/sdb1): works for removed partitions whose parent is gone.
    if dev.device_type == "partition":
        return dev.device_path.rstrip("/").split("/")[-2]
    return dev.sys_name


def _size_ro(dev: pyudev.Device) -> tuple[int, bool]:
    try:
        size = int(dev.attributes.asstring("size")) * 512
    except (KeyError, ValueError, UnicodeDecodeError):
        size = 0
    try:
        ro = dev.attributes.asstring("ro").strip() == "1"
    except (KeyError, UnicodeDecodeError):
        ro = False
    return size, ro


class Watcher:
    """Follows udev 'block' events in the event loop and calls ``emit`` with StickEvents."""

    def __init__(self, emit: Callable[[StickEvent], None], *, excluded_disks: set[str],
                 ignore_uuids: Iterable[str] = (), prefer_labels: Iterable[str] = (),
                 settle_seconds: float = 0.5) -> None:
        self.emit = emit
        self.excluded = set(excluded_disks)
        self.ignore_uuids = list(ignore_uuids)
        self.prefer = list(prefer_labels)
        self.settle = settle_seconds
        self.ctx = pyudev.Context()
        self.monitor: pyudev.Monitor | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._current: dict[str, str] = {}        # disk -> device of the emitted candidate
        self._current_uuid: dict[str, str] = {}
        self._unusable: dict[str, tuple[str, str]] = {}   # disk -> (reason, device) already reported
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Open the netlink monitor, then enumerate what is already there (cold plug)."""
        self._loop = asyncio.get_running_loop()
        self.monitor = pyudev.Monitor.from_netlink(self.ctx, source="udev")
        self.monitor.filter_by(subsystem="block")
        self.monitor.start()
        self._loop.add_reader(self.monitor.fileno(), self._drain)
        disks = {_disk_name(d) for d in self.ctx.list_devices(subsystem="block")}
        for disk in sorted(disks):
            self._evaluate(disk)

    def stop(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        if self.monitor is not None and self._loop is not None:
            self._loop.remove_reader(self.monitor.fileno())
            self.monitor = None

    def _drain(self) -> None:
        while self.monitor is not None:
            dev = self.monitor.poll(timeout=0)
            if dev is None:
                return
            try:
                self._on_event(dev)
            except Exception:  # one odd uevent never stops the watcher
                log.exception("udev event for %s", getattr(dev, "device_node", dev))

    def _on_event(self, dev: pyudev.Device) -> None:
        action = dev.action
        disk = _disk_name(dev)
        if disk in self.excluded:
            return
        if action == "remove":
            node = dev.device_node or dev.properties.get("DEVNAME", "")
            if dev.device_type == "disk" or node in (self._current.get(disk),
                                                     self._unusable.get(disk, ("", ""))[1]):
                self._drop(disk)
            return
        # 'add' right away (a tiny delay gathers sibling partitions); bursts of 'change' settle first.
        delay = min(self.settle, 0.05) if action == "add" else self.settle
        old = self._timers.pop(disk, None)
        if old is not None:
            old.cancel()
        self._timers[disk] = self._loop.call_later(delay, self._settled, disk)

    def _settled(self, disk: str) -> None:
        self._timers.pop(disk, None)
        try:
            self._evaluate(disk)
        except Exception:
            log.exception("evaluating %s", disk)

    def _drop(self, disk: str) -> None:
        device = self._current.pop(disk, "")
        self._current_uuid.pop(disk, None)
        _, unusable = self._unusable.pop(disk, ("", ""))
        for d in dict.fromkeys(x for x in (device, unusable) if x):
            self.emit(Removed(device=d, disk=disk))

    def _evaluate(self, disk: str) -> None:
        """Look at a disk and its partitions in the udev database and emit what changed."""
        try:
            d = pyudev.Devices.from_name(self.ctx, "block", disk)
        except pyudev.DeviceNotFoundError:
            if disk in self._current:
                self._drop(disk)
            return
        devices = [d] + [c for c in d.children if c.subsystem == "block" and c.device_type == "partition"]
        cands: list[Candidate] = []
        reasons: list[tuple[pyudev.Device, str]] = []
        for dev in devices:
            size, ro = _size_ro(dev)
            props = dict(dev.properties)
            if dev.device_type == "disk" and len(devices) > 1:
                continue
            r = classify(props, disk, size=size, read_only=ro, excluded_disks=self.excluded,
                         ignore_uuids=self.ignore_uuids)
            if isinstance(r, Candidate):
                cands.append(r)
            elif isinstance(r, str):
                reasons.append((dev, r))
        best = pick(cands, self.prefer)
        if best is None:
            if disk in self._current:
                self._drop(disk)
            if reasons and self._unusable.get(disk, ("", ""))[0] != reasons[0][1]:
                dev, reason = reasons[0]
                self._unusable[disk] = (reason, dev.device_node or "")
                key = dev.properties.get("ID_PART_ENTRY_UUID") or dev.properties.get("ID_PART_TABLE_UUID") \
                    or dev.device_node or disk
                self.emit(Unusable(disk=disk, device=dev.device_node or "", key=key, reason=reason))
            return
        if self._current.get(disk) == best.device and self._current_uuid.get(disk) == best.uuid:
            return
        if disk in self._current:
            self._drop(disk)
        self._unusable.pop(disk, None)
        self._current[disk] = best.device
        self._current_uuid[disk] = best.uuid
        self.emit(Added(best))
