"""tests/parts/netns.py shaped_link: a host behind a veth pair held to a rate by tbf each way, passing traffic, and
nothing of it left afterwards: after its block, after a failure in it or while it is set up, after a SIGTERM."""
from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.parts import require_root, require_tool
from tests.parts.netns import shaped_link

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = 1 << 20
CLIENT = """
import socket, sys
data = bytes(range(256)) * 4096
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
print("echoed" if got == data else f"echoed {len(got)} other bytes")
"""


def qdiscs(dev: str, ns: str = "") -> str:
    cmd = ["tc", "-s", "qdisc", "show", "dev", dev]
    return subprocess.run(["ip", "netns", "exec", ns, *cmd] if ns else cmd, capture_output=True, text=True,
                          timeout=30).stdout


def sent(text: str) -> int:
    m = re.search(r"Sent (\d+) bytes", text)
    return int(m.group(1)) if m else 0


def left_of(host_if: str, ns: str) -> list[str]:
    """What of a link is still on this machine."""
    out = []
    if Path(f"/sys/class/net/{host_if}").exists():
        out.append(f"veth {host_if}")
    if ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout:
        out.append(f"namespace {ns}")
    if host_if in subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, timeout=30).stdout:
        out.append(f"qdisc on {host_if}")
    return out


@pytest.fixture(autouse=True)
def _needs():
    require_root()
    require_tool("ip", "tc")


def test_a_shaped_link_passes_traffic_through_its_rate_limit_each_way_and_is_deleted_after():
    with shaped_link(200) as link:
        names = (link.host_if, link.host.name)
        for text in (qdiscs(link.host_if), qdiscs(link.ns_if, link.host.name)):
            assert re.search(r"qdisc tbf \S+ root .*rate 200Mbit", text), text
        before = sent(qdiscs(link.host_if)), sent(qdiscs(link.ns_if, link.host.name))

        with socket.create_server((link.nas, 0)) as server:    # this machine's end: only the link reaches it
            server.settimeout(30)
            got: list[int] = []

            def echo() -> None:
                conn, _ = server.accept()
                with conn:
                    data = b""
                    while chunk := conn.recv(65536):
                        data += chunk
                    got.append(len(data))
                    conn.sendall(data)
            t = threading.Thread(target=echo)
            t.start()
            try:
                r = subprocess.run([*link.host.exec_prefix(), sys.executable, "-c", CLIENT, link.nas,
                                    str(server.getsockname()[1])], capture_output=True, text=True, timeout=60)
            finally:
                t.join(30)
        assert r.stdout.strip() == "echoed" and got == [PAYLOAD], (r.stdout, r.stderr, got)
        # each direction went through its tbf: this machine's end sent the echo, the host's end the upload
        after = sent(qdiscs(link.host_if)), sent(qdiscs(link.ns_if, link.host.name))
        assert after[0] - before[0] >= PAYLOAD and after[1] - before[1] >= PAYLOAD, (before, after)
    assert left_of(*names) == []


def test_a_failure_in_the_block_or_while_it_is_set_up_leaves_nothing():
    made = []
    with pytest.raises(KeyError):
        with shaped_link(50) as link:
            made.append((link.host_if, link.host.name))
            raise KeyError("the benchmark failed")
    assert left_of(*made[0]) == []

    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    links = set(os.listdir("/sys/class/net"))
    with pytest.raises(RuntimeError, match="tc qdisc add"):       # tc refuses the rate: the last step of the host end
        with shaped_link(10 ** 15):
            pytest.fail("a link came up at a rate tc refuses")
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout == before
    assert set(os.listdir("/sys/class/net")) == links

    with pytest.raises(ValueError, match="above 0"):
        with shaped_link(0):
            pass


def test_a_sigterm_while_the_link_is_up_deletes_it():
    script = ("import sys, time\nfrom tests.parts.netns import shaped_link\n"
              "with shaped_link(100) as link:\n"
              "    print(link.host_if, link.host.name, flush=True)\n"
              "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 60)     # the link up, or the child's failure: never a hang
        assert ready, "the link was not up within 60 s"
        line = p.stdout.readline()
        assert line, p.stderr.read()
        host_if, ns = line.split()
        assert Path(f"/sys/class/net/{host_if}").exists()
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 128 + signal.SIGTERM, p.stderr.read()
        assert left_of(host_if, ns) == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
