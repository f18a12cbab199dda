"""Other hosts: network namespaces joined to this machine by veth pairs.

``ipv6_lan``: a second host on an IPv6 LAN, with many addresses of one /64. The host end gets
``<prefix>::1/64``; the namespace end gets ``<prefix>::1000`` and as many further addresses of the same /64 as a
test asks for (all without duplicate address detection, so they work at once). A command runs inside with
``ns.run([...])``.

``office_lan``: an office LAN of N hosts on one IPv4 /24 behind a bridge on this machine (the NAS, at
``lan.nas``). Each host may get its own /etc files (``ip netns exec`` binds /etc/netns/<name>/<file> over
/etc/<file>), e.g. its own /etc/machine-id.

``shaped_link(mbit)``: a context manager (no pytest needed: the benchmarks use it) for one host behind a veth pair
whose two directions are each held to ``mbit`` by tbf, as a NAS's one port shared by an office.

Namespaces, veth pairs (with their qdiscs), the bridge and the /etc/netns folders are always deleted afterwards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from typing import Iterator

import pytest

from tests.parts import require, require_root, require_tool


def _run(cmd: list[str], ns: str = "", input: str | None = None) -> None:
    """A command (in namespace ``ns`` if given); RuntimeError with its stderr when it fails."""
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def _ip(*args: str, ns: str = "") -> None:
    if args and args[0] == "-batch":
        _run(["ip", "-batch", "-"], ns, args[1])
    else:
        _run(["ip", *args], ns)


@dataclasses.dataclass
class NetNS:
    name: str
    prefix: str                    # e.g. "fd14:1a2b:3c4d:1"
    host_addr: str                 # the host end of the veth: where a server listens
    addresses: list[str]           # the namespace's addresses, all in host_addr's /64
    host_if: str = ""              # the veth's end on this machine
    ns_if: str = ""                # its end in the namespace

    def run(self, cmd: list[str], timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              timeout=timeout, env=env)


@pytest.fixture
def ipv6_lan() -> Iterator:
    """make(addresses=N) -> NetNS with N source addresses in one /64 (the fixture deletes it afterwards)."""
    require_root()
    require_tool("ip")
    require(os.path.exists("/proc/sys/net/ipv6"), "IPv6 in the kernel")
    made: list[str] = []

    def make(addresses: int = 64) -> NetNS:
        tag = secrets.token_hex(3)
        name, host_if, ns_if = f"steno-{tag}", f"sh{tag}", f"sn{tag}"
        prefix = f"fd14:{tag[:4]}:{tag[4:]}00:1"
        _ip("netns", "add", name)
        made.append(name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        try:
            _ip("link", "set", ns_if, "netns", name)
        except RuntimeError:
            _ip("link", "del", host_if)
            raise
        _ip("addr", "add", f"{prefix}::1/64", "dev", host_if, "nodad")
        _ip("link", "set", host_if, "up")
        addrs = [f"{prefix}::{0x1000 + i:x}" for i in range(addresses)]
        batch = "".join(f"addr add {a}/64 dev {ns_if} nodad\n" for a in addrs)
        _ip("-batch", batch + f"link set {ns_if} up\nlink set lo up\n", ns=name)
        return NetNS(name, prefix, f"{prefix}::1", addrs, host_if, ns_if)

    yield make
    for name in made:            # deleting the namespace deletes its veth end, and with it the host end
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)



@dataclasses.dataclass
class Host:
    name: str                      # the namespace
    addr: str                      # its address on the office LAN

    def etc(self, file: str, text: str) -> None:
        """This host's own /etc/<file> (seen by what runs under ``exec_prefix``)."""
        d = pathlib.Path("/etc/netns") / self.name
        d.mkdir(parents=True, exist_ok=True)
        (d / file).write_text(text)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


@dataclasses.dataclass
class OfficeLan:
    bridge: str
    nas: str                       # this machine's address on the LAN: where the NAS listens
    net: str                       # e.g. "10.214.37.0/24"
    hosts: list[Host]


def free_net() -> str:
    """A 10.214.x.0/24 no interface of this machine is on (other tests make LANs too)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    for _ in range(50):
        x = secrets.randbelow(250) + 1
        if f" 10.214.{x}." not in used:
            return f"10.214.{x}"
    raise RuntimeError("no free 10.214.x.0/24")


@pytest.fixture
def office_lan() -> Iterator:
    """make(hosts=N) -> OfficeLan: N namespaces on one bridged /24 with this machine (deleted afterwards)."""
    require_root()
    require_tool("ip")
    require(os.path.exists("/sys/class/net/lo"), "network namespaces")
    bridges: list[str] = []
    names: list[str] = []

    def make(hosts: int) -> OfficeLan:
        tag = secrets.token_hex(3)
        net = free_net()
        bridge = f"sb{tag}"
        _ip("link", "add", bridge, "type", "bridge")
        bridges.append(bridge)
        _ip("addr", "add", f"{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        out = []
        for i in range(hosts):
            name, host_if, ns_if = f"steno-{tag}-{i}", f"sh{tag}{i}", f"sn{tag}{i}"
            _ip("netns", "add", name)
            names.append(name)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            try:
                _ip("link", "set", ns_if, "netns", name)
            except RuntimeError:
                _ip("link", "del", host_if)
                raise
            _ip("link", "set", host_if, "master", bridge)
            _ip("link", "set", host_if, "up")
            addr = f"{net}.{10 + i}"
            _ip("-batch", f"addr add {addr}/24 dev {ns_if}\nlink set {ns_if} up\nlink set lo up\n", ns=name)
            out.append(Host(name, addr))
        return OfficeLan(bridge, f"{net}.1", f"{net}.0/24", out)

    yield make
    for name in names:           # deleting a namespace deletes its veth end, and with it the host end
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)
        shutil.rmtree(pathlib.Path("/etc/netns") / name, ignore_errors=True)
    for bridge in bridges:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=60)


@dataclasses.dataclass(frozen=True)
class ShapedLink:
    host: Host                     # the far side: its namespace and its address on the link
    host_if: str                   # this machine's end of the veth pair
    ns_if: str                     # the namespace's end
    nas: str                       # this machine's address on the link: where a server listens


def _gone(link: ShapedLink) -> list[str]:
    """Delete a shaped link; what could not be deleted. This machine's end first: a veth goes with both ends and
    their qdiscs even while a process still holds the namespace (which keeps it alive after `ip netns del`)."""
    left = []
    if os.path.exists(f"/sys/class/net/{link.host_if}"):
        r = subprocess.run(["ip", "link", "del", link.host_if], capture_output=True, text=True, timeout=60)
        if r.returncode and os.path.exists(f"/sys/class/net/{link.host_if}"):
            left.append(f"veth {link.host_if}: {r.stderr.strip()}")
    if os.path.exists(f"/run/netns/{link.host.name}"):
        r = subprocess.run(["ip", "netns", "del", link.host.name], capture_output=True, text=True, timeout=60)
        if r.returncode:
            left.append(f"network namespace {link.host.name}: {r.stderr.strip()}")
    return left


def _raise_exit(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


@contextlib.contextmanager
def shaped_link(mbit: int) -> Iterator[ShapedLink]:
    """A namespace joined to this machine by a veth pair (MTU 1500), each direction held to ``mbit`` by tbf.

    Deleted on the way out, also when setting it up fails or on SIGTERM: where SIGTERM would kill the process
    outright (its default, in the main thread), it ends the process through this block's clean-up instead."""
    if mbit <= 0:
        raise ValueError(f"a shaped link needs a rate above 0 Mbit/s, not {mbit}")
    tag = secrets.token_hex(3)
    net = free_net()
    link = ShapedLink(Host(f"steno-link-{tag}", f"{net}.2"), f"sl{tag}h", f"sl{tag}n", f"{net}.1")
    own_handler = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if own_handler:
        signal.signal(signal.SIGTERM, _raise_exit)
    shape = ["root", "tbf", "rate", f"{mbit}mbit", "burst", "1mb", "latency", "10ms"]
    try:
        _ip("netns", "add", link.host.name)
        _ip("link", "add", link.host_if, "mtu", "1500", "type", "veth", "peer", "name", link.ns_if,
            "mtu", "1500", "netns", link.host.name)
        _ip("addr", "add", f"{link.nas}/24", "dev", link.host_if)
        _ip("link", "set", link.host_if, "up")
        _run(["tc", "qdisc", "add", "dev", link.host_if, *shape])                    # this machine -> the host
        _ip("-batch", f"addr add {link.host.addr}/24 dev {link.ns_if}\nlink set {link.ns_if} up\n"
            "link set lo up\n", ns=link.host.name)
        _run(["tc", "qdisc", "add", "dev", link.ns_if, *shape], ns=link.host.name)   # the host -> this machine
        yield link
    finally:
        # a second SIGTERM waits until everything is deleted (then it ends the process as it would have): its
        # handler only notes it meanwhile (Python runs handlers in the main thread whatever thread the kernel
        # picked, so a signal mask would not hold it off where other threads run)
        later: list[int] = []
        if own_handler:
            signal.signal(signal.SIGTERM, lambda signum, frame: later.append(signum))
        try:
            left = _gone(link)
        finally:
            if own_handler:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if later:
            sys.exit(128 + later[0])
        if left:
            if sys.exc_info()[0] is None:
                raise RuntimeError(f"shaped link left behind: {'; '.join(left)}")
            print(f"shaped link left behind: {'; '.join(left)}", file=sys.stderr)
