"""DeviceRegistry: the core's view of removable filesystems, keyed by a stable id."""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Callable

from steno_exportd.errors import NotFoundError
from steno_exportd.events import DeviceRemoved, DeviceSnapshot, DeviceState, DeviceUpdated, EventBus

log = logging.getLogger(__name__)


class DeviceRegistry:
    """Device snapshots by id; every change is published on the event bus."""

    def __init__(self, events: EventBus, on_seen: Callable[[DeviceSnapshot], None] | None = None) -> None:
        self._events = events
        self._devices: dict[str, DeviceSnapshot] = {}
        self._on_seen = on_seen

    def list(self) -> list[DeviceSnapshot]:
        return list(self._devices.values())

    def get(self, device_id: str) -> DeviceSnapshot:
        try:
            return self._devices[device_id]
        except KeyError:
            raise NotFoundError(f"no device {device_id!r}") from None

    def find(self, device_id: str) -> DeviceSnapshot | None:
        return self._devices.get(device_id)

    def update(self, snapshot: DeviceSnapshot) -> None:
        if self._devices.get(snapshot.id) == snapshot:
            return
        first = snapshot.id not in self._devices
        self._devices[snapshot.id] = snapshot
        self._events.publish(DeviceUpdated(snapshot))
        if first and self._on_seen is not None:
            try:
                self._on_seen(snapshot)
            except Exception as e:  # noqa: BLE001 - bookkeeping never breaks device handling
                log.warning("recording device %s failed: %s", snapshot.id, e)

    def remove(self, device_id: str) -> None:
        if self._devices.pop(device_id, None) is not None:
            self._events.publish(DeviceRemoved(device_id))

    def __len__(self) -> int:
        return len(self._devices)

    # -- added by the USB adapter's issue ----------------------------------------------
    def change(self, device_id: str, **fields) -> DeviceSnapshot:
        """Create or change one device's snapshot field by field; publishes when anything changed.

        Leaving an error state clears ``error`` unless a new one is given.
        """
        old = self._devices.get(device_id)
        if old is None:
            base = dict(id=device_id, uuid="", label="", fs_type="", device="", size=0, free=0,
                        mount_point="", state=DeviceState.DETECTED)
            base.update(fields)
            new = DeviceSnapshot(**base)
        else:
            if fields.get("state", DeviceState.ERROR) != DeviceState.ERROR and "error" not in fields:
                fields["error"] = ""
            new = dataclasses.replace(old, **fields)
        self.update(new)
        return new

    def by_mount_point(self, path: str) -> DeviceSnapshot | None:
        """The mounted device a target path lives on."""
        best = None
        for d in self._devices.values():
            mp = d.mount_point.rstrip("/")
            if mp and (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best.mount_point)):
                best = d
        return best


def device_id(uuid: str) -> str:
    """A stable id from a filesystem UUID, usable in D-Bus object paths and URLs."""
    return "fs_" + re.sub(r"[^a-z0-9]", "_", uuid.lower())
