"""Real udevd, system dbus-daemon, udisksd and loop-image "USB sticks" for tests.

Daemons already running are reused and left alone; daemons started here are children of
the test process and are stopped (kill + wait) at the end of the session. Sticks are
partitioned loop images: ``insert()`` is ``partx -a``, ``remove()`` is ``partx -d``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from tests.parts import require, require_root, require_tool, stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]
UDEVD = "/lib/systemd/systemd-udevd"
UDISKSD = "/usr/libexec/udisks2/udisksd"
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
RULES_DIR = Path("/run/udev/rules.d")
TEST_RULE = RULES_DIR / "61-steno-test-usb.rules"
OUR_RULE_SRC = REPO / "udev-rules" / "70-steno-exportd.rules"
OUR_RULE = RULES_DIR / "70-steno-exportd.rules"
# Makes loop partitions labelled REC* look like USB sticks (and non-system to udisks).
TEST_RULE_TEXT = ('SUBSYSTEM=="block", KERNEL=="loop*", ENV{ID_FS_LABEL}=="REC*", '
                  'ENV{ID_BUS}="usb", ENV{UDISKS_SYSTEM}="0"\n'
                  # a partition without a filesystem on a test stick (label on the partition table)
                  'SUBSYSTEM=="block", KERNEL=="loop*", ENV{ID_PART_ENTRY_NAME}=="REC*", '
                  'ENV{ID_BUS}="usb", ENV{UDISKS_SYSTEM}="0"\n')


def _run(*cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, timeout=timeout, capture_output=True, text=True, **kw)


# ---- udevd --------------------------------------------------------------------------

def udevd_running() -> bool:
    return _run("udevadm", "control", "--ping", "-t", "2", check=False).returncode == 0


def start_udevd() -> subprocess.Popen | None:
    """Start systemd-udevd as a child unless one answers already; None when reused."""
    if udevd_running():
        return None
    proc = subprocess.Popen([UDEVD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(udevd_running, 15, what="systemd-udevd to answer")
    _run("udevadm", "trigger", "--action=add", "--subsystem-match=block", check=False)
    _run("udevadm", "settle", "-t", "30", check=False)
    return proc


def stop_udevd(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    _run("udevadm", "control", "--exit", check=False, timeout=15)
    stop_process(proc)


# ---- system bus ---------------------------------------------------------------------

def system_bus_running() -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(SYSTEM_BUS_SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


def start_system_bus() -> subprocess.Popen | None:
    if system_bus_running():
        return None
    os.makedirs("/run/dbus", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SYSTEM_BUS_SOCKET)           # stale socket of a dead bus
    with contextlib.suppress(FileNotFoundError):
        os.unlink("/run/dbus/pid")
    proc = subprocess.Popen(["dbus-daemon", "--system", "--nofork", "--nopidfile"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(system_bus_running, 15, what="the system dbus-daemon")
    return proc


def stop_system_bus(proc: subprocess.Popen | None) -> None:
    """Stop a system bus start_system_bus() started (None: one that ran already, kept), and remove its socket:
    dbus-daemon leaves it behind, and a program that looks next gets 'connection refused', not 'no bus'."""
    if proc is None:
        return
    stop_process(proc)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SYSTEM_BUS_SOCKET)


def name_has_owner(name: str) -> bool:
    r = _run("dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus", "/",
             "org.freedesktop.DBus.NameHasOwner", f"string:{name}", check=False, timeout=10)
    return r.returncode == 0 and "boolean true" in r.stdout


def start_udisksd() -> subprocess.Popen | None:
    if name_has_owner("org.freedesktop.UDisks2"):
        return None
    proc = subprocess.Popen([UDISKSD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: name_has_owner("org.freedesktop.UDisks2") or proc.poll() is not None, 30,
             what="udisksd to own org.freedesktop.UDisks2")
    if proc.poll() is not None:
        raise RuntimeError(f"udisksd exited with {proc.returncode}")
    return proc


def install_rules() -> None:
    """Install the test rule and the project's rule into /run/udev/rules.d and reload."""
    RULES_DIR.mkdir(parents=True, exist_ok=True)
    TEST_RULE.write_text(TEST_RULE_TEXT)
    shutil.copyfile(OUR_RULE_SRC, OUR_RULE)
    _run("udevadm", "control", "--reload")


@dataclasses.dataclass
class UsbStack:
    """Handles on the daemons in use (None where an already running one was reused)."""

    udevd: subprocess.Popen | None = None
    bus: subprocess.Popen | None = None
    udisksd: subprocess.Popen | None = None

    rules_installed: bool = False

    def stop(self) -> None:
        """Stop what was started here, in reverse order; reused daemons keep running."""
        stop_process(self.udisksd)
        stop_system_bus(self.bus)
        if self.rules_installed:
            for rule in (TEST_RULE, OUR_RULE):
                with contextlib.suppress(FileNotFoundError):
                    rule.unlink()
            if self.udevd is None:
                _run("udevadm", "control", "--reload", check=False)
        if self.udevd is not None:
            stop_udevd(self.udevd)
            shutil.rmtree("/run/udev", ignore_errors=True)


def start_stack(with_udisks: bool = True) -> UsbStack:
    st = UsbStack()
    try:
        st.udevd = start_udevd()
        install_rules()
        st.rules_installed = True
        if with_udisks:
            st.bus = start_system_bus()
            st.udisksd = start_udisksd()
    except BaseException:
        st.stop()
        raise
    return st


# ---- sticks -------------------------------------------------------------------------

_MKFS = {
    "vfat": lambda f, label: ["mkfs.vfat", "-F", "32", "-s", "64", "-n", label, f],
    "exfat": lambda f, label: ["mkfs.exfat", "-L", label, f],
    "ext4": lambda f, label: ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", f],
}


def loop_partitions(loop: str) -> list[str]:
    """The partitions the kernel has for a loop device (stale ones of a deleted loop included)."""
    name = Path(loop).name
    return sorted(p.name for p in Path("/sys/class/block").glob(f"{name}p*"))


def drop_partitions(loop: str, timeout: float = 10.0, strict: bool = True) -> None:
    """partx -d until the loop has no partitions: partx fails quietly (EBUSY) while udev or udisks probe one, and
    a partition left behind is seen by the next test's daemon as a stick, or keeps a new stick's partition from
    being added. ``strict=False`` (a clean-up): tried as long, never fails."""
    if loop_partitions(loop):
        _partx_until("-d", loop, lambda: not loop_partitions(loop), timeout, strict)


def _partx_until(op: str, loop: str, done, timeout: float = 10.0, strict: bool = True) -> None:
    """Run partx OP LOOP until done(); fail the test with partx's last words after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = _run("partx", op, loop, check=False)
        if done():
            return
        if time.monotonic() > deadline:
            if not strict:
                return
            pytest.fail(f"partx {op} {loop} did not take in {timeout}s: {(r.stderr or r.stdout).strip()!r}; "
                        f"partitions now {loop_partitions(loop)}")
        time.sleep(0.1)


@dataclasses.dataclass
class Stick:
    """A partitioned loop image; ``insert``/``remove`` add and delete its partitions."""

    image: Path
    label: str
    fs: str | None
    partitions: int = 1
    read_only: bool = False
    loop: str = ""

    @property
    def part(self) -> str:
        return f"{self.loop}p1"

    def attach(self) -> str:
        if not self.loop or not Path(f"/sys/class/block/{Path(self.loop).name}/loop").exists() \
                or not self._backing_is_ours():
            args = ["losetup", "-f", "--show"] + (["-r"] if self.read_only else []) + [str(self.image)]
            self.loop = _run(*args).stdout.strip()
            # Loop.Delete leaves partx-made partitions behind (no partscan): clear them before re-adding.
            drop_partitions(self.loop)
        return self.loop

    def _backing_is_ours(self) -> bool:
        try:
            back = Path(f"/sys/class/block/{Path(self.loop).name}/loop/backing_file").read_text().strip()
        except OSError:
            return False
        return back == str(self.image)

    def insert(self) -> str:
        """Attach the image if needed and add its partitions (udev 'add' events)."""
        self.attach()
        if not loop_partitions(self.loop):
            # retried (partx fails quietly on a busy disk): a stick that could not be inserted fails the test here,
            # not as a stick the daemon 'never saw'
            _partx_until("-a", self.loop, lambda: bool(loop_partitions(self.loop)))
        return self.part

    def remove(self) -> None:
        """Delete the partitions (udev 'remove' events), like pulling the stick; retried like insert(): a partition
        left (EBUSY while udev probes it) would keep the next insert() from adding the stick's own."""
        if self.loop and self._backing_is_ours():
            drop_partitions(self.loop)

    def fuse_helpers(self) -> list[int]:
        """Pids of the FUSE processes (exfat-fuse, fusefat) serving this stick's partition."""
        dev = self.part
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if dev.encode() in argv and (b"fuse" in argv[0] or b"exfat" in argv[0]):
                pids.append(int(p.name))
        return pids

    def yank(self) -> None:
        """Pull the stick while mounted: kill its FUSE helper (I/O fails), then delete the partitions."""
        for pid in self.fuse_helpers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # fuseblk holds the partition open; the kernel would drop it on a real pull
        for mp in self._mounts_of(os.path.realpath(self.part)):
            _run("umount", "-l", mp, check=False)
        wait_for(lambda: _run("partx", "-d", self.loop, check=False).returncode == 0, 10,
                 what=f"partx -d {self.loop} after the yank")

    def mount_points(self) -> list[str]:
        dev = os.path.realpath(self.part) if self.loop else ""
        out = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                src = fields[fields.index("-") + 2]
                if dev and src == dev:
                    out.append(fields[4].replace("\\040", " "))
        return out

    def cleanup(self) -> None:
        """Unmount, delete partitions, detach; tolerant of each step already done."""
        if not self.loop:
            return
        for n in range(1, self.partitions + 1):
            dev = f"{self.loop}p{n}"
            for mp in self._mounts_of(dev):
                _run("umount", "-l", mp, check=False)
        if self._backing_is_ours():
            drop_partitions(self.loop, strict=False)
            _run("losetup", "-d", self.loop, check=False)
        elif not Path(f"/sys/class/block/{Path(self.loop).name}/loop").exists():
            # detached by Loop.Delete: drop the partitions it left behind (the next test's stick may get this loop)
            drop_partitions(self.loop, strict=False)
        self.loop = ""

    @staticmethod
    def _mounts_of(dev: str) -> list[str]:
        out = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[fields.index("-") + 2] == dev:
                    out.append(fields[4].replace("\\040", " "))
        return out


def make_image(path: Path, fs: str | None, label: str, size_mb: int = 64, partitions: int = 1,
               part_sizes_mb: list[int] | None = None, labels: list[str] | None = None) -> None:
    """A disk image with a DOS partition table and formatted partitions, built without loop devices."""
    sizes = part_sizes_mb or [(size_mb - 2) // partitions] * partitions
    total = sum(sizes) + 3
    with open(path, "wb") as f:
        f.truncate(total * 1024 * 1024)
    # no filesystem: a GPT partition named like the label, so the test rule still matches
    table = "label: dos\n" if fs else "label: gpt\n"
    start = 2048
    for i, s in enumerate(sizes):
        kind = "type=c" if fs else f"name={(labels[i] if labels else label)}"
        table += f"start={start}, size={s * 2048}, {kind}\n"
        start += s * 2048
    _run("sfdisk", "-q", str(path), input=table)
    start = 2048
    for i, s in enumerate(sizes):
        if fs:
            part = path.with_suffix(f".p{i + 1}")
            with open(part, "wb") as f:
                f.truncate(s * 1024 * 1024)
            lab = (labels[i] if labels else label)
            _run(*_MKFS[fs](str(part), lab))
            with open(part, "rb") as src, open(path, "r+b") as dst:
                dst.seek(start * 512)
                shutil.copyfileobj(src, dst, 1 << 20)
            part.unlink()
        start += s * 2048


# Labels of the sticks this test process made. Tests pass this very list as usb.allow_labels,
# so a REC* loop image of another test run on the same machine is never mounted or written.
OUR_LABELS: list[str] = []


def new_label() -> str:
    label = "REC" + uuidlib.uuid4().hex[:5].upper()
    OUR_LABELS.append(label)
    return label


@pytest.fixture(scope="session")
def usb_stack():
    """udevd + system bus + udisksd + the rules, as children of the tests where not running."""
    require_root()
    require_tool(UDEVD, UDISKSD, "dbus-daemon", "udevadm", "sfdisk", "partx", "losetup",
                 "mkfs.vfat", "mkfs.exfat", "mkfs.ext4")
    require(os.path.exists("/dev/loop-control"), "loop devices (/dev/loop-control)")
    st = start_stack()
    try:
        yield st
    finally:
        st.stop()


@pytest.fixture
def sticks(usb_stack, tmp_path):
    """Factory: sticks(fs='vfat', label=None, size_mb=64, ...) -> Stick (not inserted yet)."""
    made: list[Stick] = []

    def make(fs: str | None = "vfat", label: str | None = None, size_mb: int = 64,
             read_only: bool = False, **kw) -> Stick:
        label = label or new_label()
        OUR_LABELS.append(label)
        OUR_LABELS.extend(kw.get("labels") or [])
        img = tmp_path / f"{label}.img"
        make_image(img, fs, label, size_mb=size_mb, **kw)
        st = Stick(image=img, label=label, fs=fs, read_only=read_only,
                   partitions=len(kw.get("part_sizes_mb") or [1] * kw.get("partitions", 1)))
        made.append(st)
        return st

    try:
        yield make
    finally:
        for st in reversed(made):
            st.cleanup()
        _run("udevadm", "settle", "-t", "10", check=False)
