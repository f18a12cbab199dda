"""Helpers for the web tests (the fixtures are in conftest.py): config, core, server, polls, page scraping."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import struct
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from aiohttp.web_runner import AppRunner, BaseRunner

from steno_exportd import demo
from steno_exportd.core import Core
from steno_exportd.library import Library
from steno_exportd.web.password import hash_password

PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)


def on_library(lib: Path, **over: Any) -> dict[str, Any]:
    """tests.configs.make_config overrides for the page over the demo library in folder ``lib``, on 127.0.0.1."""
    return {"recorder.db_path": str(lib / demo.DB_NAME), "http.enabled": True, "http.bind": ["127.0.0.1"],
            "http.port": 8080, **over}


async def started_core(cfg):
    core = Core(cfg)
    await core.start()
    return core


class DaemonLikeServer(TestServer):
    """aiohttp's test server run like serve() runs the page: a client that leaves does not cancel its handler."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return AppRunner(self.app, **{**kwargs, "handler_cancellation": False})


async def open_download(client, path: str, first: int):
    """A raw client that asks for ``path`` and reads the headers and ``first`` body bytes; -> (reader, writer, length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode()
    assert head.startswith("HTTP/1.1 200"), head
    length = int(re.search(r"(?im)^content-length: *(\d+)", head).group(1))
    await asyncio.wait_for(reader.readexactly(first), 30)
    return reader, writer, length


def leave(writer, reset: bool = False) -> None:
    """The browser tab goes away: a plain close (FIN), or an abort (RST) like a dropped Wi-Fi client."""
    if reset:
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
