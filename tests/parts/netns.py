"""A second host on an IPv6 LAN: a network namespace joined by a veth pair, with many addresses of one /64.

The host end gets ``<prefix>::1/64``; the namespace end gets ``<prefix>::1000`` and as many further addresses
of the same /64 as a test asks for (all without duplicate address detection, so they work at once). A command
runs inside with ``ns.run([...])``. The namespace (and with it the veth pair) is always deleted afterwards.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
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

