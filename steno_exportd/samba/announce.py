"""Announce the recorder's share over mDNS/DNS-SD (Avahi on the system D-Bus) while it is served.

macOS Finder lists the recorder under *Locations* by its name (``_smb._tcp``, plus ``_device-info._tcp``
for the icon); Windows finds hosts by WS-Discovery (``wsdd``, a separate service: docs/samba.md).
Avahi missing, stopped or restarted is handled: the announcement follows it, never the other way.
"""
from __future__ import annotations

import asyncio
import logging

from steno_exportd.engine.identity import host_name

log = logging.getLogger(__name__)

AVAHI = "org.freedesktop.Avahi"
SMB_TYPE = "_smb._tcp"
DEVICE_TYPE = "_device-info._tcp"
SMB_PORT = 445
_IF_UNSPEC = -1
_PROTO_UNSPEC = -1
_COLLISION, _FAILURE = 3, 4           # AvahiEntryGroupState
_TIMEOUT = 10.0


class _AvahiError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name


class Announcer:
    """Keeps one Avahi entry group published while ``set(True)``; ``run()`` does the D-Bus work."""

    def __init__(self, name: str = "", bus_address: str | None = None) -> None:
        self.name = name or host_name()
        self.bus_address = bus_address
        self.want = False
        self.published = ""                # the name it is announced under now ("" when not)
        self._bus = None
        self._group: str | None = None
        self._wake = asyncio.Event()
        self._said: set[str] = set()       # problems logged once, until they go away
        self._renamed = False              # published under avahi's alternative after a collision

    def set(self, on: bool, name: str = "") -> None:
        """Announce (under ``name``, default the host name) or withdraw."""
        self.want = bool(on)
        self.name = name or host_name()
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: follow set(); withdraws the announcement on the way out."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self._sync()
                except Exception as e:  # error boundary: announcing is a convenience, never fatal
                    self._once("error", f"share not announced over mDNS: {e}", logging.WARNING)
                    await self._drop_bus()
        finally:
            await asyncio.shield(self._close())

    async def _sync(self) -> None:
        if not self.want:
            await self._withdraw()
            return
        if self._group is not None:
            if self.published in (self.name, "") or self._renamed:
                return
            await self._withdraw()          # the configured name changed
        if not await self._connect():
            return
        if not await self._has_owner():
            self._once("no-avahi", "avahi-daemon is not running: the share is not announced "
                                   f"(Finder: smb://{host_name()}.local/ still works)")
            return
        self._said.discard("no-avahi")
        await self._publish(self.name)

    async def _publish(self, name: str) -> None:
        group = (await self._call("/", "org.freedesktop.Avahi.Server", "EntryGroupNew"))[0]
        self._group = group
        for _ in range(10):
            try:
                await self._add(group, name)
                break
            except _AvahiError as e:
                if not e.name.endswith(".CollisionError"):
                    raise
                old, name = name, await self._alternative(name)
                log.warning("mDNS name %r is taken: announcing as %r", old, name)
                await self._call(group, "org.freedesktop.Avahi.EntryGroup", "Reset")
        await self._call(group, "org.freedesktop.Avahi.EntryGroup", "Commit")
        self.published = name
        self._renamed = name != self.name
        self._said.discard("error")
        log.info("share announced over mDNS as %r (%s)", name, SMB_TYPE)

    async def _add(self, group: str, name: str) -> None:
        sig, iface = "iiussssqaay", "org.freedesktop.Avahi.EntryGroup"
        await self._call(group, iface, "AddService", sig,
                         [_IF_UNSPEC, _PROTO_UNSPEC, 0, name, SMB_TYPE, "", "", SMB_PORT, []])
        await self._call(group, iface, "AddService", sig,
                         [_IF_UNSPEC, _PROTO_UNSPEC, 0, name, DEVICE_TYPE, "", "", 0, [b"model=MacSamba"]])

    async def _alternative(self, name: str) -> str:
        return (await self._call("/", "org.freedesktop.Avahi.Server", "GetAlternativeServiceName", "s",
                                 [name]))[0]

    async def _withdraw(self) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        self.published = ""
        try:
            await self._call(group, "org.freedesktop.Avahi.EntryGroup", "Free")
            log.info("mDNS announcement withdrawn")
        except Exception as e:  # noqa: BLE001 - avahi gone: so is the announcement
            log.debug("entry group not freed: %s", e)

    async def _connect(self) -> bool:
        if self._bus is not None and self._bus.connected:
            return True
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus
        try:
            bus = MessageBus(bus_address=self.bus_address) if self.bus_address else MessageBus(
                bus_type=BusType.SYSTEM)
            async with asyncio.timeout(_TIMEOUT):
                await bus.connect()
        except Exception as e:  # noqa: BLE001 - dbus-fast raises assorted errors for a missing bus
            self._once("no-bus", f"no system D-Bus ({e}): the share is not announced over mDNS")
            return False
        self._said.discard("no-bus")
        self._bus = bus
        for rule in (f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{AVAHI}'",
                     f"type='signal',sender='{AVAHI}',interface='org.freedesktop.Avahi.EntryGroup'"):
            await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                   body=[rule]))

        def on_message(msg) -> None:
            if msg.message_type != MessageType.SIGNAL:
                return
            if msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == AVAHI:
                self._group, self.published = None, ""      # its groups died with it
                if msg.body[2]:
                    log.info("avahi-daemon (re)started: announcing again")
                self._wake.set()
            elif msg.member == "StateChanged" and msg.path == self._group and msg.body:
                if msg.body[0] == _COLLISION:
                    asyncio.get_running_loop().create_task(self._rename())
                elif msg.body[0] == _FAILURE:
                    log.warning("mDNS announcement failed: %s", msg.body[1] if len(msg.body) > 1 else "")
        bus.add_message_handler(on_message)
        return True

    async def _rename(self) -> None:
        """Another host announces the same name: take avahi's alternative ("steno #2")."""
        try:
            new = await self._alternative(self.published or self.name)
            log.warning("mDNS name %r is taken on the network: announcing as %r", self.published, new)
            await self._withdraw()
            if self.want:
                await self._publish(new)
        except Exception as e:  # noqa: BLE001
            self._once("error", f"share not announced over mDNS: {e}", logging.WARNING)

    async def _has_owner(self) -> bool:
        body = await self._call("/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s", [AVAHI],
                                dest="org.freedesktop.DBus")
        return bool(body[0])

    async def _call(self, path: str, iface: str, member: str, sig: str = "", body: list | None = None,
                    dest: str = AVAHI) -> list:
        from dbus_fast import Message, MessageType
        async with asyncio.timeout(_TIMEOUT):
            reply = await self._bus.call(Message(
                destination=dest, path=path, interface=iface, member=member, signature=sig, body=body or []))
        if reply.message_type == MessageType.ERROR:
            raise _AvahiError(reply.error_name or "", f"{member}: {reply.body[0] if reply.body else reply.error_name}")
        return reply.body

    async def _drop_bus(self) -> None:
        bus, self._bus = self._bus, None
        self._group, self.published = None, ""
        if bus is not None:
            bus.disconnect()

    async def _close(self) -> None:
        try:
            await self._withdraw()
        finally:
            await self._drop_bus()

    def _once(self, key: str, text: str, level: int = logging.INFO) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, "%s", text)
