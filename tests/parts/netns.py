"""Other hosts: network namespaces joined to this machine by veth pairs.

``ipv6_lan``: a second host on an IPv6 LAN, with many addresses of one /64. The host end gets
``<prefix>::1/64``; the namespace end gets ``<prefix>::1000`` and as many further addresses of the same /64 as a
test asks for (all without duplicate address detection, so they work at once). A command runs inside with
``ns.run([...])``.

``office_lan``: an office LAN of N hosts on one IPv4 /24 behind a bridge on this machine (the NAS, at
``lan.nas``). Each host may get its own /etc files (``ip netns exec`` binds /etc/netns/<name>/<file> over
/etc/<file>), e.g. its own /etc/machine-id.

Namespaces, veth pairs, the bridge and the /etc/netns folders are always deleted afterwards.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import secrets
import shutil
import subprocess
from typing import Iterator

import pytest

from tests.parts import require, require_root, require_tool


def _ip(*args: str, ns: str = "") -> None:
    cmd = ["ip", "-batch", "-"] if args and args[0] == "-batch" else ["ip", *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       input=args[1] if args and args[0] == "-batch" else None)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


@dataclasses.dataclass
class NetNS:
    name: str
    prefix: str                    # e.g. "fd14:1a2b:3c4d:1"
    host_addr: str                 # the host end of the veth: where a server listens
    addresses: list[str]           # the namespace's addresses, all in host_addr's /64

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
        return NetNS(name, prefix, f"{prefix}::1", addrs)

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
