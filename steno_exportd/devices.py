"""DeviceRegistry: the core's view of removable filesystems, one entry per filesystem UUID."""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Awaitable, Callable

from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.events import DeviceRemoved, DeviceSnapshot, DeviceState, DeviceUpdated, EventBus

log = logging.getLogger(__name__)

Ejector = Callable[[str], Awaitable[Any]]


def device_id(uuid: str) -> str:
    """A stable id from a filesystem UUID, usable in D-Bus object paths and URLs."""
    return "fs_" + re.sub(r"[^a-z0-9]", "_", uuid.lower())


class DeviceRegistry:
    """Current state of each known device; every change is published as DeviceUpdated."""

    def __init__(self, events: EventBus | None = None) -> None:
        self.events = events or EventBus()
        self._devices: dict[str, DeviceSnapshot] = {}
        self._ejector: Ejector | None = None

    def list(self) -> list[DeviceSnapshot]:
        return list(self._devices.values())

    def get(self, dev_id: str) -> DeviceSnapshot:
        try:
            return self._devices[dev_id]
        except KeyError:
            raise NotFoundError(f"no device {dev_id!r}") from None

    def find(self, dev_id: str) -> DeviceSnapshot | None:
        return self._devices.get(dev_id)

    def by_mount_point(self, path: str) -> DeviceSnapshot | None:
        """The mounted device a target path lives on (the core sets JobSnapshot.device_id from it)."""
        best = None
        for d in self._devices.values():
            mp = d.mount_point.rstrip("/")
            if mp and (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best.mount_point)):
                best = d
        return best

    def update(self, dev_id: str, **fields: Any) -> DeviceSnapshot:
        """Create or change a device's snapshot; publishes DeviceUpdated when anything changed."""
        old = self._devices.get(dev_id)
        if old is None:
            base = dict(id=dev_id, uuid="", label="", fs_type="", device="", size=0, free=0,
                        mount_point="", state=DeviceState.DETECTED)
            base.update(fields)
            new = DeviceSnapshot(**base)
        else:
            if "state" in fields and fields["state"] != DeviceState.ERROR and "error" not in fields:
                fields["error"] = ""
            new = dataclasses.replace(old, **fields)
        if new != old:
            self._devices[dev_id] = new
            log.debug("device %s: %s", dev_id, new.state)
            self.events.publish(DeviceUpdated(new))
        return new

    def remove(self, dev_id: str) -> None:
        if self._devices.pop(dev_id, None) is not None:
            self.events.publish(DeviceRemoved(dev_id))

    def set_ejector(self, ejector: Ejector | None) -> None:
        """The USB adapter registers how to eject; core.eject() goes through it."""
        self._ejector = ejector

    async def eject(self, dev_id: str) -> Any:
        self.get(dev_id)
        if self._ejector is None:
            raise InvalidArgument("USB handling is not running; cannot eject")
        return await self._ejector(dev_id)
