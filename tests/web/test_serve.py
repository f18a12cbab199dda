"""serve(): the daemon's entry point to the web page; and `steno-exportd hash-password`."""
from __future__ import annotations

import socket
import subprocess
import sys

import aiohttp
import pytest

from steno_exportd.errors import StenoError
from steno_exportd.web import serve
from steno_exportd.access.passwords import verify_password
from tests.configs import make_config
from tests.web.helpers import on_library, started_core


async def test_serve_yields_the_url_and_a_busy_port_is_a_clear_error(tmp_path, demo_lib):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    core = await started_core(make_config(tmp_path, **on_library(demo_lib, **{"http.port": port})))
    try:
        async with serve(core) as url:
            assert url == f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/api/v1/status") as r:
                    body = await r.json()
                    assert r.status == 200 and "idle" in body["status"]
                    assert body["remote_folder"] == core.remote_folder
                    assert body["remote_folder"].startswith(f"{socket.gethostname()}-")
            with pytest.raises(StenoError, match=f"cannot listen on 127.0.0.1:{port}"):
                async with serve(core):
                    pass
    finally:
        await core.stop()


def test_hash_password_cli_makes_a_hash_that_verifies():
    r = subprocess.run([sys.executable, "-m", "steno_exportd", "hash-password", "--stdin"],
                       input="s3cret-pass\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("scrypt$") and verify_password("s3cret-pass", h) and not verify_password("other", h)
    r = subprocess.run([sys.executable, "-m", "steno_exportd", "hash-password", "--stdin"],
                       input="short\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "8 characters" in r.stderr


async def test_oversized_headers_431_traversal_404_and_loopback_alias_403(tmp_path, demo_lib):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    core = await started_core(make_config(tmp_path, **on_library(demo_lib, **{
        "http.port": port, "http.bind": ["0.0.0.0"], "http.public_url": f"http://127.0.0.1:{port}",
        "http.auth.allowed_networks": ["127.0.0.1/32"], "http.auth.allow_open_lan": True})))
    try:
        async with serve(core):
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/", headers={"X-Big": "x" * 20000}) as r:
                    assert r.status == 431
                for path in ("/static/..%2f..%2fsteno_exportd/web/app.py", "/static/%2e%2e/%2e%2e/config.py",
                             "/static/..%252f..%252fapp.py", "/static/..\\\\..\\\\app.py", "/sessions/..%2f1",
                             "/sessions/1%00", "/sessions/%2e%2e%2f%2e%2e%2fetc%2fpasswd/audio",
                             "/sessions/1/download/..%2f..%2fpdf", "/s/..%2f..%2fx/zip"):
                    async with http.get(url + path) as r:
                        body = await r.read()
                        assert r.status in (400, 404), (path, r.status)
                        assert b"import" not in body and b"root:" not in body, path
            # the same server reached from another loopback address (127.0.0.2) is outside the allowed range
            conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=conn) as other:
                async with other.get(f"http://127.0.0.1:{port}/api/v1/sessions") as r:
                    assert r.status == 403 and "127.0.0.2" in (await r.json())["error"]
    finally:
        await core.stop()


async def test_live_event_stream_ends_promptly_when_the_page_stops(tmp_path, demo_lib):
    import asyncio
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    core = await started_core(make_config(tmp_path, **on_library(demo_lib, **{"http.port": port})))
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as http:
            async with serve(core) as url:
                resp = await http.get(url + "/api/v1/events")
                assert resp.status == 200
                head = await asyncio.wait_for(resp.content.readuntil(b'"samba_state"'), 10)
                assert b"retry:" in head          # then the current state (last: samba_state)
                await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
                t0 = loop.time()
            stopped = loop.time() - t0
            rest = await asyncio.wait_for(resp.content.read(), 5)      # the browser sees the stream end
            assert b"event:" not in rest and resp.content.at_eof()
            resp.release()
            assert stopped < 1.5, f"stopping the page took {stopped:.1f} s with a live stream open"
    finally:
        await core.stop()
