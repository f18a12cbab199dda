"""Helpers for the web tests (the fixtures are in conftest.py): config, core, server, polls, page scraping."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from steno_exportd import demo
from steno_exportd.core import Core
from steno_exportd.library import Library
from steno_exportd.access.passwords import hash_password

PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)


def on_library(lib: Path, **over: Any) -> dict[str, Any]:
    """tests.configs.make_config overrides for the page over the demo library in folder ``lib``, on 127.0.0.1.

    Loopback only, so no login (mode none): the tests of other things than access control need none.
    """
    return {"recorder.db_path": str(lib / demo.DB_NAME), "http.enabled": True, "http.bind": ["127.0.0.1"],
            "http.port": 8080, "http.auth.mode": "none", **over}


async def started_core(cfg):
    core = Core(cfg)
    await core.start()
    return core


class DaemonLikeServer(TestServer):
    """aiohttp's test server run like serve() runs the page: its runner (connection cap, idle timeout, quiet
    answers to malformed requests); a client that leaves does not cancel its handler."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        from steno_exportd.web.server import Runner
        return Runner(self.app, **{**kwargs, "handler_cancellation": False})


async def open_download(client, path: str, first: int):
    """A raw client that asks for ``path`` and reads the headers and ``first`` body bytes; -> (reader, writer, length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode()
    assert head.startswith("HTTP/1.1 200"), head
    length = int(re.search(r"(?im)^content-length: *(\d+)", head).group(1))
    await asyncio.wait_for(reader.readexactly(first), 30)
    return reader, writer, length


async def slow_download(port: int, path: str, cookie: str = "", first: int = 1 << 20, rcvbuf: int = 64 << 10,
                        cookies: str = ""):
    """A guest that asks for ``path`` and reads its first bytes slowly, through a small receive buffer (what
    the server sends ahead is bounded by its own send buffer); ``cookie``: a login's, ``cookies``: any others
    ("name=value; ..."); -> (reader, writer, status line, length)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
    cookies = "; ".join(x for x in (f"steno_session={cookie}" if cookie else "", cookies) if x)
    extra = f"Cookie: {cookies}\r\n" if cookies else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).decode()
    m = re.search(r"(?im)^content-length: *(\d+)", head)
    got = 0
    while got < first:
        got += len(await asyncio.wait_for(reader.read(min(16 << 10, first - got)), 30))
        await asyncio.sleep(0.005)
    return reader, writer, head.split("\r\n")[0], int(m.group(1)) if m else None


async def read_on(reader, most: int, timeout: float = 20.0) -> tuple[int, bool]:
    """Read as fast as possible until the server ends the answer or ``most`` bytes came; (bytes, ended)."""
    n = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while n < most:
                try:
                    chunk = await reader.read(1 << 16)
                except ConnectionError:
                    return n, True
                if not chunk:
                    return n, True
                n += len(chunk)
    return n, False


def leave(writer, reset: bool = False) -> None:
    """The browser tab goes away: a plain close (FIN), or an abort (RST) like a dropped Wi-Fi client."""
    if reset and not writer.is_closing():
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


def open_files() -> set[str]:
    """What this process (the server runs in it) has open."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def lib_sessions(demo_lib):
    lib = Library(demo_lib / "silent_steno.db")
    try:
        return {s.id: lib.get_session(s.id) for s in lib.list_sessions()}
    finally:
        lib.close()


def with_audio(sessions):
    return next(s for s in sessions.values() if s.audio is not None and s.segments)


def without_audio(sessions):
    return next(s for s in sessions.values() if s.audio is None and s.summary.exportable)


async def login_form(client, password: str, nxt: str = "/"):
    """Log in as the page does (the form's CSRF token, then the POST); the answer, not followed."""
    html = await (await client.get("/login")).text()
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    return await client.post("/login", data={"password": password, "csrf": token, "next": nxt},
                             allow_redirects=False)


async def anonymous(client):
    """A second browser on the same server: no cookies of the first. Leave it with ``await x.session.close()``
    (TestClient.close() would stop the server too)."""
    import aiohttp
    from aiohttp.test_utils import TestClient
    anon = TestClient(client.server, cookie_jar=aiohttp.CookieJar(unsafe=True))
    await anon.start_server()
    return anon


async def csrf(client) -> str:
    html = await (await client.get("/")).text()
    return re.search(r'<meta name="csrf" content="([^"]+)">', html).group(1)


def sharing_state(html: str) -> str:
    """The words the devices page shows for the network share."""
    return re.search(r'id="sharing-state"[^>]*>([^<]*)<', html).group(1)


async def next_status(resp, key: str, timeout: float = 10.0):
    """The value of the next SSE "status" event for key on an open /api/v1/events stream."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        line = await asyncio.wait_for(resp.content.readline(), max(0.01, end - loop.time()))
        assert line, "the event stream ended"
        if line.startswith(b"event: status"):
            data = json.loads((await resp.content.readline()).removeprefix(b"data: "))
            if data["key"] == key:
                return data["value"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident memory of a process now (VmRSS), KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


UNIT = Path(__file__).resolve().parents[2] / "systemd" / "steno-exportd.service"


def unit_environment() -> dict[str, str]:
    """The Environment= lines of the shipped unit: a daemon in a test runs as the unit would run it."""
    out = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                key, _, value = item.partition("=")
                out[key] = value
    return out


class WebDaemon:
    """The real daemon (tests/parts/daemon.py) serving the web page on a free loopback port; no D-Bus."""

    def __init__(self, proc: Any, url: str, port: int) -> None:
        self.proc, self.url, self.port = proc, url, port

    @classmethod
    def start(cls, factory: Any, tmp: Path, lib: Path, prefix: list[str], extra: dict[str, str]) -> "WebDaemon":
        from tests.parts.daemon import write_config
        port = free_port()
        n = len(list(tmp.glob("web-daemon*.toml")))
        cfg = write_config(tmp / f"web-daemon{n}.toml", tmp, "session", **{
            "recorder.db_path": f'"{lib / demo.DB_NAME}"', "dbus.enabled": "false", "http.enabled": "true",
            "http.bind": '["127.0.0.1"]', "http.port": str(port), "http.auth.mode": '"none"', **extra})
        proc = factory(cfg, prefix=prefix, env=unit_environment())
        proc.wait_ready(30)
        return cls(proc, f"http://127.0.0.1:{port}", port)

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def log(self) -> str:
        return self.proc.log()


async def raw(port: int, data: bytes, timeout: float = 10.0, host: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    """Send bytes as they are; (status, headers, body) of the first answer, status 0 when the server just closed."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        buf = bytearray()       # appended in place: a long answer is not copied again at every read
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
                m = re.search(rb"(?im)^content-length: *(\d+)", buf[:end]) if end >= 0 else None
                while m and len(buf) - end - 4 < int(m.group(1)):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
    finally:
        writer.close()
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, bytes(buf)
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def request(method: str, path: str, port: int, headers: dict | None = None, body: bytes = b"",
            host: str | None = None) -> bytes:
    """A well-formed HTTP/1.1 request (Connection: close) with exactly these headers."""
    h = {"Host": host if host is not None else f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body:
        h.setdefault("Content-Length", str(len(body)))
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + body


def corpus(name: str) -> list[str]:
    """A hostile-input list from tests/web/corpus/ (comments and blank lines dropped)."""
    text = (Path(__file__).parent / "corpus" / name).read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def held_renders(monkeypatch, release: threading.Event | None = None) -> tuple[list[str], threading.Event]:
    """Renders that reach the render worker are named in the list, in order, and held there until the event is set
    (60 s at most): a render of minutes, ended when the test says."""
    from steno_exportd import render
    submitted: list[str] = []
    release = release if release is not None else threading.Event()
    submit = render._submit

    def held_submit(name, *a):
        submitted.append(name)
        release.wait(60)
        return submit(name, *a)
    monkeypatch.setattr(render, "_submit", held_submit)
    return submitted, release
