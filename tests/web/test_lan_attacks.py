"""A guest on the LAN and a share-link holder at the edges the other files do not reach: byte ranges with
numbers too long for int(), the find box's folding, downloads whose clients stopped reading."""
from __future__ import annotations

import asyncio
import logging

import pytest

from tests.web.helpers import leave, open_download, raw, request, with_audio
from tests.web.test_hostile_files import grow, recordings
from tests.web.test_edges import quiet
from tests.web.test_share_caps import make_link, uses


async def test_a_range_with_thousands_of_digits_is_answered_not_a_traceback(web_client, sessions, caplog):
    """int() refuses a number of more than 4,300 digits (ValueError); a Range header holds 8,000. Such a number
    is still only a number: past the end (416), or an end or suffix longer than the file (all of it)."""
    caplog.set_level(logging.DEBUG)
    client, _ = await web_client()
    port = client.server.port
    s = with_audio(sessions)
    size = s.audio.size
    link = await make_link(client, s.id, max_downloads=1)
    big = "9" * 5000
    for path in (f"/s/{link['token']}/audio", f"/sessions/{s.id}/audio"):
        status, headers, _ = await raw(port, request("GET", path, port, {"Range": f"bytes={big}-"}))
        assert (status, headers.get("content-range")) == (416, f"bytes */{size}"), (path, status)
        assert await uses(client, s.id, link["token"]) == 0          # nothing sent: the use was given back
    path = f"/sessions/{s.id}/audio"
    for spec, first, last in ((f"0-{big}", 0, size - 1), (f"-{big}", 0, size - 1), ("0" * 5000 + "1-2", 1, 2)):
        status, headers, body = await raw(port, request("GET", path, port, {"Range": f"bytes={spec}"}))
        assert (status, headers.get("content-range"), len(body)) == \
            (206, f"bytes {first}-{last}/{size}", last - first + 1), spec[:12]
    quiet(caplog)


async def test_finding_in_a_long_transcript_folds_the_words_once(web_client, sessions):
    """The find box folds what was typed for every line it looks at: 200 characters that NFKD spreads over
    18 each (U+FDFA), four guests at once on a 2,000-line meeting, held the event loop for seconds (every
    other client, and the watchdog, waited). The test guard fails a test whose loop is blocked."""
    client, _ = await web_client()
    s = max(sessions.values(), key=lambda x: len(x.segments))
    assert len(s.segments) >= 2000

    async def find(text: str) -> str:
        r = await client.get(f"/sessions/{s.id}", params={"find": text})
        assert r.status == 200
        return await r.text()
    pages = await asyncio.gather(*(find("\ufdfa" * 200) for _ in range(4)))
    assert all("0 lines with" in page for page in pages)
    word = s.segments[0].text.split()[0]
    expect = sum(word.casefold() in g.text.casefold() or word.casefold() in g.speaker_name.casefold()
                 for g in s.segments)
    assert f"{expect} line{'' if expect == 1 else 's'} with" in await find(word.upper())


async def test_downloads_that_stopped_reading_do_not_lock_the_page_out(web_client, own_lib):
    """A guest opens as many downloads as the page takes connections (http.max_connections) and stops reading
    each after its first bytes: none is idle (a request is in progress), so each newcomer was closed
    instead, and the page stayed unreachable for everyone for as long as the guest kept them open."""
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, 64 << 20)                               # more than the socket buffers hold
    client, _ = await web_client(own_lib, **{"http.max_connections": 16, "http.idle_timeout": 1})
    stalled = [await open_download(client, f"/sessions/{sid}/audio", 1024) for _ in range(16)]
    try:
        await asyncio.sleep(2)                         # longer than http.idle_timeout without a byte read
        status, _, body = await raw(client.server.port, request("GET", "/api/v1/status", client.server.port))
        assert status == 200, (status, body[:200])
    finally:
        for _, writer, _ in stalled:
            leave(writer, reset=True)
