"""Denial of service against the real daemon under the unit's limits: idle and slow connections by the thousand,
login floods and ZIP clients (RSS against MemoryMax), and what it writes to its log meanwhile."""
from __future__ import annotations

import asyncio
import html
import http.client
import re
import resource
import socket
import threading
import time

import aiohttp

from tests.parts import require_tool
from tests.web.attacker import guess
from tests.web.helpers import PASSWORD, PASSWORD_HASH, UNIT, rss_kb

NOFILE = ("prlimit", "--nofile=1024:1024")         # systemd's default soft limit, as if the unit set none


def memory_max_kb() -> int:
    m = re.search(r"(?m)^MemoryMax=(\d+)M$", UNIT.read_text())
    assert m, "the unit sets MemoryMax"
    return int(m.group(1)) * 1024


def raise_own_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


class Prober(threading.Thread):
    """A normal client: one small page after another; how long each took, and which failed."""

    def __init__(self, port: int, path: str = "/api/v1/status") -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.times: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", self.path)
                r = c.getresponse()
                r.read()
                c.close()
                if r.status != 200:
                    self.failures.append(f"status {r.status}")
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self.times.append(time.monotonic() - t)
            time.sleep(0.1)


def idle_connections(port: int, n: int) -> list[socket.socket]:
    """n TCP connections that send nothing (connects go on while the server's backlog is full)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    return socks


def test_two_thousand_idle_connections_leave_the_page_reachable(web_daemon, own_lib):
    require_tool("prlimit")
    raise_own_nofile(8192)
    d = web_daemon(own_lib, prefix=NOFILE)
    lines_before = len(d.log().splitlines())
    probe = Prober(d.port)
    probe.start()
    socks: list[socket.socket] = []
    peak = 0
    try:
        time.sleep(0.5)
        for _ in range(4):
            socks += idle_connections(d.port, 500)
            peak = max(peak, rss_kb(d.pid))
            time.sleep(1.0)
        time.sleep(3)                                  # the flood sits there; the page must stay reachable
        peak = max(peak, rss_kb(d.pid))
    finally:
        probe.stop.set()
        probe.join()
        for s in socks:
            s.close()
    assert not probe.failures, probe.failures[:5]
    assert len(probe.times) >= 30 and max(probe.times) < 1.0, f"slowest page {max(probe.times):.2f} s"
    log = d.log()
    assert "Traceback" not in log
    flood_lines = len(log.splitlines()) - lines_before
    assert flood_lines <= 30, f"{flood_lines} log lines for one flood:\n" + "\n".join(log.splitlines()[-20:])
    assert peak < memory_max_kb(), f"RSS {peak // 1024} MiB"


def test_slow_and_silent_clients_are_closed(web_daemon, own_lib):
    d = web_daemon(own_lib, **{"http.idle_timeout": "2", "http.body_timeout": "3"})
    silent = idle_connections(d.port, 5)
    slow_head, slow_body = socket.create_connection(("127.0.0.1", d.port)), socket.create_connection(
        ("127.0.0.1", d.port))
    slow_body.sendall(f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\nContent-Length: 1000\r\n"
                      "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode())
    t0 = time.monotonic()
    closed: dict[str, float] = {}
    head = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\nX-Slow: ".encode() + b"a" * 100

    def gone(s: socket.socket) -> bool:
        s.setblocking(False)
        try:
            return s.recv(65536) == b"" or False
        except BlockingIOError:
            return False
        except OSError:
            return True
    i = 0
    while time.monotonic() - t0 < 15 and len(closed) < 3:
        for name, s, drip in (("silent", silent[0], b""), ("headers", slow_head, head[i:i + 1]),
                              ("body", slow_body, b"a")):
            if name in closed:
                continue
            try:
                if drip:
                    s.sendall(drip)
            except OSError:
                closed[name] = time.monotonic() - t0
                continue
            if gone(s):
                closed[name] = time.monotonic() - t0
        i += 1
        time.sleep(0.25)
    for s in [*silent, slow_head, slow_body]:
        s.close()
    assert set(closed) == {"silent", "headers", "body"}, closed
    assert closed["silent"] < 6 and closed["headers"] < 6 and closed["body"] < 8, closed
    assert "Traceback" not in d.log()


def test_logins_and_zip_clients_at_once_stay_under_memory_max(web_daemon, own_lib):
    from tests.web.test_hostile_files import grow, recordings
    for p in set(recordings(own_lib).values()):
        grow(p, 16 << 20)
    d = web_daemon(own_lib, **{"http.auth.mode": '"password"', "http.auth.password_hash": f'"{PASSWORD_HASH}"'})
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(d.pid))
            time.sleep(0.01)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def main() -> tuple:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(d.url + "/login") as r:
                token = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
            async with http.post(d.url + "/login", data={"password": PASSWORD, "csrf": token}) as r:
                assert r.status == 200
            ids = "&".join(f"id={i}" for i in recordings(own_lib))

            async def one_zip() -> tuple[int, int | None]:
                async with http.get(f"{d.url}/zip?formats=audio,txt&{ids}") as r:
                    n = 0
                    async for chunk in r.content.iter_chunked(1 << 20):
                        n += len(chunk)
                    return n, r.content_length
            zips = [asyncio.ensure_future(one_zip()) for _ in range(20)]
            logins = await guess(d.url, [f"127.40.{i}.1" for i in range(40)], secret=PASSWORD)
            return logins, await asyncio.gather(*zips)
    try:
        logins, sizes = asyncio.run(main())
    finally:
        stop.set()
        sampler.join()
    assert logins == {303: 40}, logins
    # every ZIP whole: as long as it said (a ZIP planned once a recording's checksums are known, from an
    # earlier ZIP or the background hasher, has no data descriptor for it: 16 bytes shorter, just as whole)
    assert all(n == length and n > 16 << 20 for n, length in sizes), sizes
    assert peak[0] < memory_max_kb(), f"RSS peak {peak[0] // 1024} MiB"


def test_zips_refused_for_open_recordings_keep_the_bound_on_recordings_held_open(web_daemon, own_lib):
    """Recordings held open by ZIP downloads stay within what the open-file limit leaves (the source budget): while
    ZIPs hold all of it, every further ZIP is refused (429), not every other one. A refused ZIP gave back recordings
    it had never taken, so each refusal raised the bound by its size, until ZIPs ran the daemon out of descriptors."""
    from steno_exportd.web.server import RESERVED_FILES
    from tests.web.test_hostile_files import grow, recordings
    require_tool("prlimit")
    connections = 640
    budget = max(16, 1024 - RESERVED_FILES - connections)     # web.server.source_file_budget under NOFILE
    ids = sorted(recordings(own_lib))
    for p in set(recordings(own_lib).values()):
        grow(p)                             # a ZIP whose client does not read stays open, holding its recordings
    holders = budget // len(ids)
    d = web_daemon(own_lib, prefix=NOFILE, **{"http.max_connections": str(connections)})
    query = "&".join(f"id={i}" for i in ids)

    async def main() -> list[int]:
        async with aiohttp.ClientSession() as http:
            held = []
            try:
                for _ in range(holders):            # together they hold the budget's recordings (or all but a few)
                    r = await http.get(f"{d.url}/zip?formats=txt,audio&{query}")
                    held.append(r)
                    assert r.status == 200, (r.status, await r.text())
                statuses, seen = [], []
                for _ in range(4):
                    r = await http.get(f"{d.url}/zip?formats=txt,audio&{query}")
                    held.append(r)
                    statuses.append(r.status)
                    if r.status == 429:
                        seen.append((r.headers.get("Retry-After"), r.content_type, await r.text()))
                return statuses, seen
            finally:
                for r in held:
                    r.close()
    statuses, seen = asyncio.run(main())
    # before: [429, 200, 429, 200] -- each refusal took back recordings it had never counted
    assert statuses == [429] * 4, statuses
    for retry_after, ctype, body in seen:       # what the person sees: the page saying to wait, and how long
        assert retry_after == "6" and ctype == "text/html", (retry_after, ctype)
        assert "too many ZIP downloads at once; try again in a moment" in body, body
    assert "Traceback" not in d.log()


def _zip_answer(r, body: str) -> tuple[int, str | None, str]:
    """(status, Retry-After, the page's message) of a refused ZIP."""
    m = re.search(r'<p class="error" role="alert">([^<]*)</p>', body)
    return r.status, r.headers.get("Retry-After"), html.unescape(m.group(1)) if m else body[:300]


def test_a_zip_selection_larger_than_the_open_recordings_budget_is_told_to_select_fewer(web_daemon, tmp_path):
    """A ZIP holds each of its sessions' recordings open until sent, within a budget of recordings held open at
    once (what the open-file limit leaves beside the connections). A selection with more sessions than the whole
    budget was a 429 'try again in a moment' forever: no wait makes it fit. It is a 400 saying how many sessions
    one ZIP with recordings may hold, on the page the download opens; a selection within the budget that meets a
    busy daemon is still a 429 with Retry-After, and gets its ZIP once the budget is free."""
    from steno_exportd import demo
    from steno_exportd.web.server import RESERVED_FILES
    from tests.web.test_hostile_files import grow, recordings
    require_tool("prlimit")
    lib = tmp_path / "lib"
    demo.generate(lib, sessions=24, seed=4, small=True)
    connections = 640
    budget = max(16, 1024 - RESERVED_FILES - connections)     # web.server.source_file_budget under NOFILE
    ids = sorted(recordings(lib))
    assert len(ids) > budget, len(ids)
    holding = ids[:4]
    for i in holding:
        grow(recordings(lib)[i])            # a ZIP whose client does not read stays open, holding its recordings
    d = web_daemon(lib, prefix=NOFILE, **{"http.max_connections": str(connections)})

    def url(sel: list[int], formats: str = "txt,audio") -> str:
        return f"{d.url}/zip?formats={formats}&" + "&".join(f"id={i}" for i in sel)

    async def main() -> dict:
        out = {}
        async with aiohttp.ClientSession() as http:
            async with http.get(url(ids[:budget + 1])) as r:    # nothing else running
                out["too many"] = _zip_answer(r, await r.text())
            async with http.get(url(ids[:budget + 1], "txt")) as r:
                out["without recordings"] = r.status, r.content_type
            held = []
            try:
                for _ in range(budget // len(holding)):         # together they hold the whole budget
                    r = await http.get(url(holding))
                    held.append(r)
                    assert r.status == 200, (r.status, await r.text())
                async with http.get(url(ids[:2])) as r:
                    out["busy"] = _zip_answer(r, await r.text())
                async with http.get(url(ids[:budget + 1])) as r:
                    out["too many, busy"] = _zip_answer(r, await r.text())
            finally:
                for r in held:
                    r.close()
            for _ in range(100):                                # the holders' recordings let go
                async with http.get(url(ids[:budget])) as r:
                    if r.status != 429:
                        out["the most"] = r.status, int(r.headers.get("Content-Length", 0))
                        break
                await asyncio.sleep(0.1)
        return out
    out = asyncio.run(main())
    fewer = (400, None, f"a ZIP with recordings holds at most {budget} sessions here ({budget + 1} selected): "
                        f"select {budget} or fewer, or leave out the recordings")
    assert out["too many"] == fewer, out["too many"]
    assert out["too many, busy"] == fewer, out["too many, busy"]
    assert out["busy"] == (429, "6", "too many ZIP downloads at once; try again in a moment"), out["busy"]
    assert out["without recordings"] == (200, "application/zip"), out["without recordings"]
    assert out["the most"][0] == 200 and out["the most"][1] > 0, out.get("the most")
    assert "Traceback" not in d.log()
