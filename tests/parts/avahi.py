"""A real avahi-daemon on the real system bus, owned by the test (stopped after; one that was running is restarted)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from tests import parts
from tests.parts import udev as real_udev

PIDFILE = "/run/avahi-daemon/pid"


def running() -> bool:
    return real_udev.name_has_owner("org.freedesktop.Avahi")


def start() -> None:
    subprocess.run(["avahi-daemon", "-D", "--no-chroot"], check=True, capture_output=True, timeout=30)
    parts.wait_for(running, 15, what="avahi-daemon on the system bus")


def stop() -> None:
    subprocess.run(["avahi-daemon", "-k"], capture_output=True, timeout=30)
    parts.wait_for(lambda: not running(), 15, what="avahi-daemon to stop")
    if os.path.exists(PIDFILE):
        os.unlink(PIDFILE)


def browse(service: str = "_smb._tcp") -> list[dict]:
    """What avahi-browse resolves now: one dict per (interface, protocol) entry."""
    r = subprocess.run(["avahi-browse", "-rptk", service], capture_output=True, text=True, timeout=30)
    out = []
    for line in r.stdout.splitlines():
        f = line.split(";")
        if f[0] == "=" and len(f) >= 10:
            out.append({"iface": f[1], "name": _unescape(f[3]), "type": f[4], "host": f[6], "address": f[7],
                        "port": int(f[8]), "txt": f[9]})
    return out


def _unescape(text: str) -> str:
    """avahi-browse -p writes ' ' as \\032 and '#' as \\035."""
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), text)


def names(service: str = "_smb._tcp") -> set[str]:
    return {e["name"] for e in browse(service)}


@pytest.fixture
def avahi():
    """The system bus and avahi-daemon running; yields the module (start/stop/browse/names)."""
    import sys
    parts.require_root()
    parts.require_tool("avahi-daemon", "avahi-browse", "dbus-daemon")
    bus = real_udev.start_system_bus()
    was_running = running()
    if not was_running:
        start()
    try:
        yield sys.modules[__name__]
    finally:
        if running() and not was_running:
            stop()
        elif was_running and not running():
            start()
        real_udev.stop_system_bus(bus)


NETNS = "steno-avahi-other"
_SERVICE = """<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group><name>{name}</name><service><type>_smb._tcp</type><port>445</port></service></service-group>
"""


@contextlib.contextmanager
def other_host(service_name: str):
    """Another machine on the LAN announcing ``service_name``: a network namespace joined by a veth
    pair, running its own avahi-daemon (no D-Bus; its own run and services folders)."""
    tmp = tempfile.mkdtemp(prefix="steno-avahi-other-")
    os.makedirs(f"{tmp}/svc")
    os.makedirs(f"{tmp}/run")
    with open(f"{tmp}/svc/smb.service", "w") as f:
        f.write(_SERVICE.format(name=service_name))
    with open(f"{tmp}/conf", "w") as f:
        f.write("[server]\nhost-name=steno-other-host\nuse-ipv6=no\nenable-dbus=no\nallow-interfaces=stav1\n"
                "[publish]\npublish-workstation=no\n")
    proc = None

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, timeout=30)     # left by a crash
        ip("netns", "add", NETNS)
        ip("link", "add", "stav0", "type", "veth", "peer", "name", "stav1")
        ip("link", "set", "stav1", "netns", NETNS)
        ip("addr", "add", "10.213.0.1/24", "dev", "stav0")
        ip("link", "set", "stav0", "up")
        ip("netns", "exec", NETNS, "ip", "addr", "add", "10.213.0.2/24", "dev", "stav1")
        ip("netns", "exec", NETNS, "ip", "link", "set", "stav1", "up")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, "unshare", "-m", "sh", "-c",
             f"mount --bind {tmp}/run /run/avahi-daemon && mount --bind {tmp}/svc /etc/avahi/services && "
             f"exec avahi-daemon -f {tmp}/conf --no-chroot --no-drop-root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parts.wait_for(lambda: any(e["name"] == service_name and e["iface"] == "stav0" for e in browse()), 30,
                           what=f"the other host's {service_name!r} on mDNS")
        yield
    finally:
        parts.stop_process(proc)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", "stav0"], capture_output=True, timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
