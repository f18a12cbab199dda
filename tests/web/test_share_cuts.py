"""A share download that ends early: cut by the server (the link revoked) or broken by the network. A use is
taken before the first byte; it counts once bytes went out (a break by the network too), and a cut by a revoke
changes nothing the owner or the guest sees but the audit line that says so."""
from __future__ import annotations

import asyncio
import re

import pytest

from tests.web.helpers import anonymous, leave, read_on, slow_download
from tests.web.test_share_caps import BIG, make_link, revoke, uses


async def audit(client, sid: int) -> list[str]:
    rows = await (await client.get(f"/api/v1/sessions/{sid}/audit")).json()
    return [r["what"] for r in rows if r["via"].startswith("share link")]


@pytest.mark.parametrize("what", ["audio", "zip"])
async def test_a_download_cut_by_a_revoke_leaves_a_revoked_link_and_says_so_in_the_audit(web_client, own_lib, what):
    from tests.web.test_hostile_files import grow, recordings
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, BIG)
    client, _ = await web_client(own_lib)
    link = await make_link(client, sid, max_downloads=5)
    reader, writer, status, length = await slow_download(client.server.port, f"{link['url']}/{what}")
    try:
        assert status == "HTTP/1.1 200 OK"
        await revoke(client, link["token"])
        _, ended = await read_on(reader, length)
    finally:
        leave(writer, reset=True)
    assert ended
    listed = await (await client.get(f"/api/v1/sessions/{sid}/share-links")).json()
    assert [x["state"] for x in listed if x["token"] == link["token"]] == ["revoked"]
    assert await uses(client, sid, link["token"]) == 1
    lines = await audit(client, sid)
    assert len(lines) == 1 and "cut" in lines[0] and "revoked" in lines[0], lines


@pytest.mark.parametrize("what", ["audio", "zip"])
async def test_a_download_broken_by_the_network_counts_as_a_use(web_client, own_lib, what):
    """The guest's Wi-Fi drops (RST) after the first MiB: bytes went out, so the use is taken (a link is no
    endless retry); the link stays usable for the uses left, and the audit line says the download broke."""
    from tests.web.test_hostile_files import grow, recordings
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, BIG)
    client, _ = await web_client(own_lib)
    link = await make_link(client, sid, max_downloads=2)
    reader, writer, status, length = await slow_download(client.server.port, f"{link['url']}/{what}")
    assert status == "HTTP/1.1 200 OK"
    leave(writer, reset=True)
    for _ in range(200):                                 # the server notices at its next write
        if await audit(client, sid):
            break
        await asyncio.sleep(0.05)
    assert await uses(client, sid, link["token"]) == 1
    lines = await audit(client, sid)
    assert len(lines) == 1 and "broken off" in lines[0], lines
    guest = await anonymous(client)
    try:
        r = await guest.get(f"{link['url']}/{what}", headers={"Range": "bytes=0-99"} if what == "audio" else {})
        assert r.status in (200, 206)
        await r.read()
    finally:
        await guest.session.close()
    assert await uses(client, sid, link["token"]) == 2


async def enter_pin(client, url: str, pin: str) -> int:
    page = await (await client.get(url)).text()
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = await client.post(url, data={"pin": pin, "csrf": token}, allow_redirects=False)
    return r.status


async def test_a_link_locked_by_wrong_pins_lets_the_download_of_the_right_pin_finish(web_client, own_lib):
    """The lock stops guessing, it is no revoke: the guest who typed the right PIN reads on to the last byte
    while someone else's wrong PINs lock the link (cutting it would hand a guesser a way to break the rightful
    guest's download and nothing else); afterwards the link refuses everyone, the right PIN too."""
    from tests.web.test_hostile_files import grow, recordings
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, BIG)
    client, _ = await web_client(own_lib, **{"http.share_links.max_wrong_pins": 3})
    link = await make_link(client, sid, max_downloads=5, pin="271828")
    guest, guesser = await anonymous(client), await anonymous(client)
    try:
        assert await enter_pin(guest, link["url"], "271828") == 303
        grant = next(f"{c.key}={c.value}" for c in guest.session.cookie_jar if c.key.startswith("steno_share_"))
        reader, writer, status, length = await slow_download(client.server.port, f"{link['url']}/audio",
                                                             cookies=grant)
        try:
            assert status == "HTTP/1.1 200 OK"
            assert [await enter_pin(guesser, link["url"], "000000") for _ in range(3)] == [403, 403, 403]
            listed = await (await client.get(f"/api/v1/sessions/{sid}/share-links")).json()
            assert [x["state"] for x in listed] == ["locked (wrong PINs)"]
            got, _ = await read_on(reader, length - (1 << 20))
        finally:
            leave(writer, reset=True)
        assert got == length - (1 << 20), f"{got >> 20} of {(length >> 20) - 1} MiB after the lock"
        assert (await guest.get(f"{link['url']}/audio")).status == 410
    finally:
        await guest.session.close()
        await guesser.session.close()


async def test_a_zip_whose_link_was_revoked_while_its_documents_were_rendered_sends_nothing(web_client, own_lib,
                                                                                          monkeypatch):
    """THREATS: a share-link holder keeps no access after revoke. The guest asks for the session's ZIP; its
    documents are rendered before the first byte (minutes for a long meeting); the owner revokes the link
    meanwhile. The guest then gets a 410 and not one byte of the ZIP (its transcript and report lead it), and
    the use is given back."""
    from tests.parts import until
    from tests.web.helpers import held_renders
    from tests.web.test_hostile_files import recordings

    submitted, release = held_renders(monkeypatch)              # the documents' render is held until the link is revoked
    sid = next(iter(recordings(own_lib)))
    client, _ = await web_client(own_lib)
    link = await make_link(client, sid, max_downloads=3)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(f"GET {link['url']}/zip HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await until(lambda: submitted, "the ZIP's documents to be rendered", timeout=30, in_thread=False)
        await revoke(client, link["token"])
        release.set()
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        release.set()
        leave(writer, reset=True)
    assert b"PK\x03\x04" not in answer and answer.startswith(b"HTTP/1.1 410"), answer[:300]
    assert await uses(client, sid, link["token"]) == 0
