"""Share-link download caps: Range requests count, the last use is served exactly once, failures give it back;
a download under way stops when its link is revoked or expires; HEAD costs no plan."""
from __future__ import annotations

import asyncio
import ctypes
import os
import struct
import time

import pytest

from tests.web.helpers import anonymous, csrf, leave, read_on, slow_download, with_audio


async def make_link(client, sid: int, **body) -> dict:
    r = await client.post(f"/api/v1/sessions/{sid}/share-links", json=body, headers={"X-CSRF-Token": await csrf(client)})
    assert r.status == 201, await r.text()
    return await r.json()


async def uses(client, sid: int, token: str) -> int:
    links = await (await client.get(f"/api/v1/sessions/{sid}/share-links")).json()
    return next(x["downloads"] for x in links if x["token"] == token)


async def test_range_requests_of_a_share_link_count_and_are_audited(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    link = await make_link(client, s.id, max_downloads=2)
    anon = await anonymous(client)
    try:
        url = f"{link['url']}/audio"
        r = await anon.get(url, headers={"Range": "bytes=0-"})          # the whole file, as a "partial" answer
        assert r.status == 206 and len(await r.read()) == s.audio.size
        assert await uses(client, s.id, link["token"]) == 1
        r = await anon.get(url, headers={"Range": "bytes=-0"})          # an empty suffix: unsatisfiable
        assert r.status == 416 and await uses(client, s.id, link["token"]) == 1
        r = await anon.head(url)                                        # HEAD: no use
        assert r.status == 200 and await uses(client, s.id, link["token"]) == 1
        r = await anon.get(url, headers={"Range": "bytes=0-99"})
        assert r.status == 206 and len(await r.read()) == 100
        assert await uses(client, s.id, link["token"]) == 2
        r = await anon.get(url, headers={"Range": "bytes=100-"})
        assert r.status == 410
        audit = await (await client.get(f"/api/v1/sessions/{s.id}/audit")).json()
        shared = [a for a in audit if a["via"].startswith("share link")]
        assert len(shared) == 2 and all(a["addr"] == "127.0.0.1" for a in shared), audit
    finally:
        await anon.session.close()


async def test_a_link_with_one_use_left_serves_exactly_one_of_many_concurrent_downloads(web_client, sessions):
    client, _ = await web_client()
    s = max((x for x in sessions.values() if x.audio is not None), key=lambda x: x.audio.size)
    for what in ("audio", "zip", "audio?dl=1"):
        link = await make_link(client, s.id, max_downloads=1)
        guests = [await anonymous(client) for _ in range(6)]
        try:
            async def get(g):
                r = await g.get(f"{link['url']}/{what}", headers={"Range": "bytes=0-"} if what == "audio" else {})
                return r.status, len(await r.read())
            got = await asyncio.gather(*(get(g) for g in guests))
        finally:
            for g in guests:
                await g.session.close()
        served = [n for status, n in got if status in (200, 206)]
        assert len(served) == 1 and sorted(st for st, _ in got).count(410) == 5, (what, got)
        assert await uses(client, s.id, link["token"]) == 1


async def test_a_download_that_fails_before_its_first_byte_gives_the_use_back(web_client, own_lib):
    from tests.web.test_hostile_files import recordings
    client, _ = await web_client(own_lib)
    sid, path = next(iter(recordings(own_lib).items()))
    link = await make_link(client, sid, max_downloads=1)
    saved = path.read_bytes()
    path.unlink()                                                       # the recording is gone
    anon = await anonymous(client)
    try:
        assert (await anon.get(f"{link['url']}/audio")).status == 404
        assert await uses(client, sid, link["token"]) == 0
        path.write_bytes(saved)
        r = await anon.get(f"{link['url']}/audio")
        assert r.status == 200 and await r.read() == saved
        assert await uses(client, sid, link["token"]) == 1
    finally:
        await anon.session.close()


BIG = 64 << 20                  # a recording far larger than what socket buffers hold (4 MiB send, 64 KiB here)
AFTER = 8 << 20                 # what a guest may still read once the link ended: buffers, never the rest


async def revoke(client, token: str) -> None:
    r = await client.post(f"/api/v1/share-links/{token}/revoke", headers={"X-CSRF-Token": await csrf(client)})
    assert r.status == 200 and (await r.json())["state"] == "revoked"


async def cut_then_refused(client, url: str, download: tuple, end, state: str) -> None:
    """The link ends (``end()``) while the guest reads; then the guest reads on as fast as it can: the download
    ends within what buffers held, and a Range retry from where it stopped is refused."""
    reader, writer, status, length = download
    try:
        assert status == "HTTP/1.1 200 OK" and length >= BIG
        await end()
        after, ended = await read_on(reader, length - (1 << 20))
    finally:
        leave(writer, reset=True)
    assert ended and after < AFTER, \
        f"{after >> 20} MiB of {length >> 20} read after the link was {state} (ended: {ended})"
    anon = await anonymous(client)
    try:
        r = await anon.get(url, headers={"Range": f"bytes={(1 << 20) + after}-"})
        assert r.status == 410 and state in await r.text()
    finally:
        await anon.session.close()


@pytest.mark.parametrize("what", ["audio", "zip"])
async def test_a_download_under_way_stops_when_its_share_link_is_revoked(web_client, own_lib, what):
    """A guest reads a large recording (or the session's ZIP) slowly; the owner revokes the link meanwhile. The
    download went on to its last byte, and the guest kept what it was sent after the revoke."""
    from tests.web.test_hostile_files import grow, recordings
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, BIG)
    client, _ = await web_client(own_lib)
    link = await make_link(client, sid, max_downloads=5)
    download = await slow_download(client.server.port, f"{link['url']}/{what}")
    await cut_then_refused(client, f"{link['url']}/{what}", download, lambda: revoke(client, link["token"]),
                           "revoked")


async def test_a_download_under_way_stops_when_its_share_link_expires(web_client, own_lib):
    """A link valid for 3 seconds: a download started in time went on long past its end."""
    from tests.web.test_hostile_files import grow, recordings
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, BIG)
    client, _ = await web_client(own_lib)
    link = await make_link(client, sid, hours=3 / 3600, max_downloads=5)
    download = await slow_download(client.server.port, f"{link['url']}/audio")
    await cut_then_refused(client, f"{link['url']}/audio", download,         # the guest stops reading meanwhile
                           lambda: asyncio.sleep(max(0.0, link["expires"] - time.time()) + 0.5), "expired")


class Opened:
    """Counts how often the files of a folder are opened (inotify IN_OPEN), by name."""

    IN_OPEN = 0x20

    def __init__(self, folder) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        if self.libc.inotify_add_watch(self.fd, str(folder).encode(), self.IN_OPEN) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")

    def take(self) -> dict[str, int]:
        out: dict[str, int] = {}
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            i = 0
            while i < len(buf):
                _, _, _, n = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
                out[name] = out.get(name, 0) + 1
                i += 16 + n

    def close(self) -> None:
        os.close(self.fd)


async def test_head_of_a_share_links_zip_builds_no_plan(web_client, own_lib):
    """HEAD takes no use, yet each one planned the whole ZIP: every document rendered, the recording opened
    and held open (as many as the ZIP budget allows), all for a Content-Length."""
    from tests.web.test_hostile_files import recordings
    sid, path = next(iter(recordings(own_lib).items()))
    client, _ = await web_client(own_lib)
    link = await make_link(client, sid, max_downloads=1)
    anon = await anonymous(client)
    opened = Opened(path.parent)
    try:
        for _ in range(20):
            r = await anon.head(f"{link['url']}/zip")
            assert r.status == 200 and r.headers["Content-Type"] == "application/zip"
            assert r.headers["Content-Disposition"].startswith("attachment;")
        heads = opened.take().get(path.name, 0)
        r = await anon.get(f"{link['url']}/audio")                  # what one download opens, for scale
        assert r.status == 200 and len(await r.read()) == path.stat().st_size
        one = opened.take().get(path.name, 0)
        assert one >= 1
        assert heads == 0, f"20 HEADs opened the recording {heads} times (one download: {one})"
        assert await uses(client, sid, link["token"]) == 1
    finally:
        opened.close()
        await anon.session.close()
