"""USB stick latency: `partx -a` -> first byte on the stick, and insertion -> safe_to_remove minus copy time.

Real udevd, udisksd and loop-image sticks (ext4: the kernel block path, exfat: FUSE).
Anchor, measured in the same run: `partx -a` -> udev event -> plain mount(8) -> first byte
written by hand, i.e. the least any daemon could do. Targets: first byte <= 1.0 s,
overhead <= 1.5 s, for a one-session export.
Stopped (Ctrl-C, SIGTERM: bench/cleanup.py), it stops the daemon's core and the daemons it started, unmounts and
detaches its sticks and removes its folder.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cleanup  # noqa: E402
from steno_exportd.usb import manager as usb  # noqa: E402
from steno_exportd.events import DeviceState  # noqa: E402
from tests.parts.udev import Stick, make_image, new_label, start_stack  # noqa: E402
from tests.usb.helpers import make_cfg  # noqa: E402

RUNS = int(os.environ.get("BENCH_USB_RUNS", "5"))


def _first_byte_watch(core, label: str, out: dict) -> None:
    """Poll (5 ms) for the first non-empty file under the stick's SilentSteno folder."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "t" not in out:
        dev = next((d for d in core.devices.list() if d.label == label), None)
        if dev and dev.mount_point:
            root = Path(dev.mount_point, "SilentSteno")
            try:
                for dirpath, _, files in os.walk(root):
                    if any(os.path.getsize(os.path.join(dirpath, f)) > 0 for f in files):
                        out["t"] = time.monotonic()
                        return
            except OSError:
                pass
        time.sleep(0.005)


async def make_core(tmp: Path):
    """The real Core on a one-session demo library."""
    from steno_exportd.core import Core
    lib = tmp / "library"
    if not lib.exists():
        subprocess.run([sys.executable, "-m", "steno_exportd", "demo-data", "--out", str(lib), "--sessions", "1",
                        "--seed", "1"], check=True, capture_output=True)
    cfg = make_cfg(tmp, **{"recorder.db_path": str(next(lib.glob("*.db"))), "state.dir": str(tmp / "state"),
                           "state.runtime_dir": str(tmp / "run")})
    core = Core(cfg)
    await core.start()
    return core


async def one_daemon_run(fs: str, tmp: Path) -> tuple[float, float, float]:
    label = new_label()
    img = tmp / f"{label}.img"
    make_image(img, fs, label, size_mb=256)
    stick = Stick(img, label, fs)
    core = await make_core(tmp)
    try:
        async with usb.running(core):
            out: dict = {}
            watcher = asyncio.create_task(asyncio.to_thread(_first_byte_watch, core, label, out))
            t0 = time.monotonic()
            await asyncio.to_thread(stick.insert)
            while True:
                dev = next((d for d in core.devices.list() if d.label == label), None)
                if dev and dev.state in (DeviceState.SAFE_TO_REMOVE, DeviceState.ERROR):
                    break
                if time.monotonic() - t0 > 60:
                    raise TimeoutError("stick never became safe to remove")
                await asyncio.sleep(0.002)
            t_safe = time.monotonic()
            await watcher
            if dev.state == DeviceState.ERROR:
                raise RuntimeError(dev.error)
            job = next(j for j in core.jobs.list() if j.operation == "export")
            copy = job.finished - job.started
            return out.get("t", float("nan")) - t0, t_safe - t0 - copy, copy
    finally:
        stick.cleanup()
        if hasattr(core, "stop"):
            await core.stop()


def one_anchor_run(fs: str, tmp: Path) -> float:
    label = new_label()
    img = tmp / f"{label}.img"
    make_image(img, fs, label, size_mb=64)
    stick = Stick(img, label, fs)
    mnt = tempfile.mkdtemp(prefix="anchor-", dir=tmp)     # (in the run's folder: swept if this is cut short)
    try:
        stick.attach()
        mon = subprocess.Popen(["udevadm", "monitor", "--udev", "--subsystem-match=block"],
                               stdout=subprocess.PIPE, text=True)
        mon.stdout.readline()
        t0 = time.monotonic()
        subprocess.run(["partx", "-a", stick.loop], check=True)
        for line in mon.stdout:
            if line.startswith("UDEV") and " add " in line and stick.part.rsplit("/", 1)[1] in line:
                break
        mon.terminate()
        mon.wait()
        for _ in range(50):   # the FUSE helpers can fail while udev still probes (same as the daemon's retry)
            if subprocess.run(["mount", "-t", fs, "-o", "nosuid,nodev,noexec", stick.part, mnt]).returncode == 0:
                break
            time.sleep(0.02)
        with open(os.path.join(mnt, "x"), "wb") as f:
            f.write(b"x")
            f.flush()
        t = time.monotonic() - t0
        subprocess.run(["umount", mnt], check=False)
        return t
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        os.rmdir(mnt)
        stick.cleanup()


async def main() -> int:
    stack = start_stack()
    try:
        with cleanup.workdir("bench-usb-", parent=None) as tmp:
            print("usb_core: real Core (demo library, 1 session)")
            for fs in ("ext4", "exfat"):
                first, over, copy, anchor = [], [], [], []
                for _ in range(RUNS):
                    f, o, c = await one_daemon_run(fs, tmp)
                    first.append(f), over.append(o), copy.append(c)
                    anchor.append(await asyncio.to_thread(one_anchor_run, fs, tmp))
                fb, an, ov = statistics.median(first), statistics.median(anchor), statistics.median(over)
                print(f"usb_{fs}_first_byte_s: {fb:.3f}")
                print(f"usb_{fs}_anchor_udev_mount_write_s: {an:.3f}")
                print(f"usb_{fs}_first_byte_ratio_to_anchor: {fb / an:.2f}")
                print(f"usb_{fs}_overhead_s (insert->safe_to_remove minus copy): {ov:.3f}")
                print(f"usb_{fs}_copy_s (the export job itself): {statistics.median(copy):.3f}")
                print(f"usb_{fs}_targets_met: first_byte<=1.0 {fb <= 1.0}, overhead<=1.5 {ov <= 1.5}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(cleanup.run(lambda: asyncio.run(main()), "bench_usb"))
