"""Helpers of the USB tests: their config, bounded waits on device state, files on a stick."""
from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from steno_exportd import config
from steno_exportd.events import DeviceState, DeviceUpdated
from tests.configs import make_config
from tests.parts import until
from tests.parts.udev import OUR_LABELS, Stick


def make_cfg(tmp_path: Path, **changes) -> config.Config:
    """make_config with USB on, quick settling, and only the sticks this process made allowed."""
    cfg = make_config(tmp_path, **{"usb.enabled": True, "usb.settle_seconds": 0.2, **changes})
    if "usb.allow_labels" in changes:
        return cfg
    return config.replace(cfg, **{"usb.allow_labels": OUR_LABELS})   # the live list: sticks made later count


def by_label(core, label: str):
    return next((d for d in core.devices.list() if d.label == label), None)


async def wait_state(core, label: str, *states: DeviceState, timeout: float = 20.0):
    def ok():
        d = by_label(core, label)
        return d if d is not None and d.state in states else None
    try:
        return await until(ok, f"{label} to reach {'/'.join(states)}", timeout, interval=0.02, in_thread=False)
    except BaseException:
        print("devices:", core.devices.list())
        raise


class StateLog:
    """Records every state a device went through, from the core's events."""

    def __init__(self, core) -> None:
        self.states: dict[str, list[str]] = {}
        self._agen = core.events.subscribe()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for ev in self._agen:
            if isinstance(ev, DeviceUpdated):
                seq = self.states.setdefault(ev.device.label, [])
                if not seq or seq[-1] != ev.device.state:
                    seq.append(str(ev.device.state))

    async def close(self) -> None:
        for _ in range(20):                 # let the subscriber take what is already queued
            await asyncio.sleep(0.005)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def loop_attached(stick: Stick) -> bool:
    out = subprocess.run(["losetup", "-j", str(stick.image)], capture_output=True, text=True).stdout
    return bool(out.strip())


def stick_files(stick: Stick, fn) -> object:
    """Attach and mount the stick privately (read-only), return fn(root), then undo it all."""
    stick.insert()
    subprocess.run(["udevadm", "settle", "-t", "10"], check=False)
    d = tempfile.mkdtemp(prefix="stick-", dir=stick.image.parent)      # the test's own folder
    try:
        subprocess.run(["mount", "-t", stick.fs, "-o", "ro", stick.part, d], check=True, timeout=30)
        try:
            return fn(Path(d))
        finally:
            subprocess.run(["umount", d], check=False, timeout=30)
    finally:
        os.rmdir(d)
        stick.remove()


def prepare(stick: Stick, files: dict[str, bytes], fill: Callable[[Path], None] | None = None) -> None:
    """Put files on a stick before it is 'inserted' (mounted privately, then removed again); ``fill(root)``:
    anything else to make there."""
    stick.insert()
    subprocess.run(["udevadm", "settle", "-t", "10"], check=False)
    d = tempfile.mkdtemp(prefix="stick-", dir=stick.image.parent)      # the test's own folder
    try:
        subprocess.run(["mount", "-t", stick.fs, stick.part, d], check=True, timeout=30)
        try:
            for name, data in files.items():
                p = Path(d, name)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            if fill is not None:
                fill(Path(d))
        finally:
            subprocess.run(["sync"], check=False)
            subprocess.run(["umount", d], check=False, timeout=30)
    finally:
        os.rmdir(d)
        stick.remove()
        subprocess.run(["udevadm", "settle", "-t", "10"], check=False)
