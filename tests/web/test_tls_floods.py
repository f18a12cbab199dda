"""Floods against the page over HTTPS: connections that never finish (or never start) their TLS handshake."""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import pathlib
import socket
import ssl
import threading
import time

from tests.parts import require_tool
from tests.web.helpers import rss_kb
from tests.web.test_floods import NOFILE, idle_connections, memory_max_kb, raise_own_nofile


class TlsProber(threading.Thread):
    """A normal browser over HTTPS: one small page after another; which failed."""

    def __init__(self, port: int, cafile: str) -> None:
        super().__init__(daemon=True)
        self.port, self.ctx = port, ssl.create_default_context(cafile=cafile)
        self.ctx.check_hostname = False
        self.ok, self.failures = 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=self.ctx)
                c.request("GET", "/api/v1/status")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {r.status}")
            except (OSError, ssl.SSLError) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.1)


def test_connections_that_never_finish_the_tls_handshake_leave_the_page_reachable(web_daemon, own_lib, tmp_path):
    """1,500 clients that connect to the HTTPS page and send nothing, under the 1024 descriptors of systemd's
    default: a browser still gets its pages, the log stays quiet."""
    require_tool("prlimit")
    raise_own_nofile(8192)
    d = web_daemon(own_lib, prefix=NOFILE, **{"http.tls.mode": '"self-signed"'})
    cert = next(tmp_path.glob("**/tls/cert.pem"))
    probe = TlsProber(d.port, str(cert))
    lines_before = len(d.log().splitlines())
    socks = []
    try:
        socks += idle_connections(d.port, 1500)
        time.sleep(2)
        probe.start()
        time.sleep(6)
    finally:
        probe.stop.set()
        probe.join()
        for s in socks:
            s.close()
    log = d.log()
    assert probe.ok >= 10 and not probe.failures, (probe.ok, probe.failures[:5])
    assert "Traceback" not in log and "Too many open files" not in log
    flood_lines = len(log.splitlines()) - lines_before
    assert flood_lines <= 30, f"{flood_lines} log lines for one flood:\n" + "\n".join(log.splitlines()[-20:])


def daemon_cert(tmp_path) -> tuple[pathlib.Path, ssl.SSLContext]:
    """The self-signed certificate a daemon under tmp_path made, and a client context trusting it (by address)."""
    cert = next(tmp_path.glob("**/tls/cert.pem"))
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    return cert, ctx


def daemon_sockets(pid: int) -> int:
    """Sockets the daemon holds open now (its /proc/<pid>/fd)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


def test_evicted_https_connections_give_their_descriptor_back_at_once(web_daemon, own_lib, tmp_path):
    """Clients that finish their TLS handshake and then stay silent (they never read, so never answer the
    close_notify), many more than the cap: each one past the cap closed the longest idle, but over TLS that close
    only began a TLS shutdown, which waits for the peer's close_notify up to asyncio's ssl_shutdown_timeout (30 s).
    The evicted connections were no longer counted while their descriptors stayed open: the cap held nothing, and
    a flood of such clients under systemd's 1024 descriptors ran the daemon out of them. Now an evicted connection
    is aborted: its descriptor is free at once."""
    require_tool("prlimit")
    raise_own_nofile(8192)
    d = web_daemon(own_lib, prefix=NOFILE, **{"http.tls.mode": '"self-signed"', "http.max_connections": "32",
                                               "http.idle_timeout": "2"})
    cert, ctx = daemon_cert(tmp_path)
    before = daemon_sockets(d.pid)
    clients = []

    def connect(n: int) -> None:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            clients.append(ctx.wrap_socket(s))        # the handshake done; then not a byte read or sent
    try:
        connect(32)
        time.sleep(3.5)         # closed for idling (http.idle_timeout): their TLS shutdowns wait for the clients
        connect(368)            # ... and then evicted by newcomers, like the connections still open
        time.sleep(2)
        held = daemon_sockets(d.pid) - before
        probe = TlsProber(d.port, str(cert))
        probe.start()
        time.sleep(3)
        probe.stop.set()
        probe.join()
    finally:
        for s in clients:
            s.close()
    # the cap (32) and a few in passing; before: "held 400 sockets" (each evicted one open until its 30 s were up)
    assert held <= 32 + 4, f"held {held} sockets for 400 silent TLS clients under a cap of 32"
    assert probe.ok >= 5 and not probe.failures, (probe.ok, probe.failures[:5])
    log = d.log()
    assert "Traceback" not in log and "Too many open files" not in log


def test_https_connections_closed_for_idling_give_their_descriptor_back_at_once(web_daemon, own_lib, tmp_path):
    """Clients under the cap that finish their TLS handshake and then stay silent, or send half a request head and
    stop (neither reads, so neither answers a close_notify): closed for idling (http.idle_timeout), each only began
    a TLS shutdown that waits up to asyncio's ssl_shutdown_timeout (30 s) for the client's close_notify, its
    descriptor and its place under the cap held that long after the idle timeout. Now a connection closed for idling
    is aborted like an evicted one: its descriptor is free at once."""
    d = web_daemon(own_lib, **{"http.tls.mode": '"self-signed"', "http.max_connections": "128",
                               "http.idle_timeout": "2"})
    _, ctx = daemon_cert(tmp_path)
    before = daemon_sockets(d.pid)
    clients = []
    try:
        for i in range(90):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.port), timeout=10))
            if i % 3 == 0:
                s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")   # a head never ended
            clients.append(s)
        opened = daemon_sockets(d.pid) - before
        time.sleep(2 + 1.5)         # the idle timeout, and a moment
        held = daemon_sockets(d.pid) - before
    finally:
        for s in clients:
            s.close()
    assert opened >= 80, f"only {opened} of 90 connections were open at once"
    # before: "held 90 sockets" (each until its 30 s TLS shutdown ran out)
    assert held <= 3, f"held {held} sockets for 90 TLS clients 1.5 s after they were closed for idling"
    log = d.log()
    assert "Traceback" not in log


def test_tls_clients_holding_request_heads_under_the_cap_stay_under_memory_max(web_daemon, own_lib, tmp_path):
    """600 clients (past the cap of 512 under the unit's LimitNOFILE=8192) that finish their TLS handshake and send a
    request head of 56 KiB that never ends, within the idle timeout: the daemon stays under the unit's MemoryMax (past
    it the kernel kills it, and every export with it) and a browser still gets its pages. Each TLS connection held
    asyncio's 256 KiB read buffer from its accept: 520 such clients took the daemon from 62 to 282 MiB."""
    raise_own_nofile(8192)
    d = web_daemon(own_lib, **{"http.tls.mode": '"self-signed"'})
    cert, ctx = daemon_cert(tmp_path)
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 8000) for i in range(7))

    async def flood() -> tuple[int, int]:
        async def one() -> asyncio.StreamWriter | None:
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", d.port, ssl=ctx), 20)
                w.write(head)
                await w.drain()
                return w
            except (OSError, ssl.SSLError, TimeoutError):
                return None             # (closed past the cap: the longest idle go first)
        writers: list = []
        for i in range(0, 600, 50):
            writers += await asyncio.gather(*(one() for _ in range(50)))
        await asyncio.sleep(1)
        peak = rss_kb(d.pid)
        for w in writers:
            if w is not None:
                w.transport.abort()
        return sum(w is not None for w in writers), peak
    probe = TlsProber(d.port, str(cert))
    try:
        opened, peak = asyncio.run(flood())
        probe.start()
        time.sleep(2)
    finally:
        probe.stop.set()
        probe.join()
    assert opened >= 500, opened
    assert peak < memory_max_kb(), f"RSS {peak // 1024} MiB with {opened} TLS clients"
    assert probe.ok >= 5 and not probe.failures, (probe.ok, probe.failures[:5])
    assert "Traceback" not in d.log()
