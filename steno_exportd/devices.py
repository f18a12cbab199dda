"""DeviceRegistry: the core's view of removable filesystems, keyed by a stable id."""
from __future__ import annotations

import logging
from typing import Callable

from steno_exportd.errors import NotFoundError
from steno_exportd.events import DeviceRemoved, DeviceSnapshot, DeviceUpdated, EventBus

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
