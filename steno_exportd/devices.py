"""DeviceRegistry: the core's view of removable filesystems, keyed by a stable id."""
from __future__ import annotations

import logging

from steno_exportd.errors import NotFoundError
from steno_exportd.events import DeviceRemoved, DeviceSnapshot, DeviceUpdated, EventBus

log = logging.getLogger(__name__)


class DeviceRegistry:
    """Device snapshots by id; every change is published on the event bus."""

    def __init__(self, events: EventBus) -> None:
        self._events = events
        self._devices: dict[str, DeviceSnapshot] = {}

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
        self._devices[snapshot.id] = snapshot
        self._events.publish(DeviceUpdated(snapshot))

    def remove(self, device_id: str) -> None:
        if self._devices.pop(device_id, None) is not None:
            self._events.publish(DeviceRemoved(device_id))

    def __len__(self) -> int:
        return len(self._devices)
