"""Share-link download caps: Range requests count, the last use is served exactly once, failures give it back."""
from __future__ import annotations

import asyncio

from tests.web.helpers import anonymous, csrf, with_audio


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
