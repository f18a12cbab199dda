"""Real filesystems in loop images (ext4 native, exfat-fuse, vfat via fusefat) for engine tests."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from tests.parts import require, require_root, require_tool

MKFS = {
    "ext4": lambda dev, label: ["mkfs.ext4", "-q", "-F", "-L", label, dev],
    "exfat": lambda dev, label: ["mkfs.exfat", "-L", label, dev],
    "vfat": lambda dev, label: ["mkfs.vfat", "-I", "-F", "32", "-s", "64", "-n", label, dev],
}


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def require_fs(fstype: str) -> None:
    require_root()
    require_tool("losetup", {"ext4": "mkfs.ext4", "exfat": "mkfs.exfat", "vfat": "mkfs.vfat"}[fstype])
    if fstype == "exfat":
        require(os.path.exists("/sbin/mount.exfat"), "/sbin/mount.exfat (exfat-fuse link)")
    if fstype == "vfat":
        require(os.path.exists("/sbin/mount.vfat"), "/sbin/mount.vfat (fusefat wrapper)")


@contextlib.contextmanager
def loop_fs(workdir: Path, fstype: str, size_mb: int = 256, label: str = "ENGTEST",
            ro: bool = False) -> Iterator[tuple[Path, str, Path]]:
    """Yield (mount point, loop device, image); unmounts and detaches even on failure."""
    require_fs(fstype)
    img = workdir / f"{fstype}.img"
    mnt = workdir / f"mnt-{fstype}"
    mnt.mkdir(exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    dev = _run("losetup", "-f", "--show", str(img))
    mounted = False
    try:
        subprocess.run(MKFS[fstype](dev, label), check=True, capture_output=True)
        mount(dev, mnt, fstype, ro)
        mounted = True
        yield mnt, dev, img
    finally:
        if mounted or os.path.ismount(mnt):
            umount(mnt)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        img.unlink(missing_ok=True)


def mount(dev: str, mnt: Path, fstype: str, ro: bool = False) -> None:
    subprocess.run(["mount", "-t", fstype, "-o", "ro" if ro else "rw", dev, str(mnt)], check=True,
                   capture_output=True)


def umount(mnt: Path) -> None:
    r = subprocess.run(["umount", str(mnt)], capture_output=True)
    if r.returncode != 0 and os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fuse_helper_pid(dev: str) -> int | None:
    """The FUSE daemon serving dev (exfat-fuse / fusefat)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and any(b"fuse" in c or b"fat" in c for c in cmd[:1]) and dev.encode() in cmd:
            return int(d)
    return None
