"""Whoever can write the recorder's data folder: swapped, truncated and removed recordings while they are served."""
from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import zipfile
from pathlib import Path

from steno_exportd.library import Library
from tests.parts.swap import Swapper
from tests.web.helpers import csrf

GROWN = 24 << 20            # recordings grown to this size (header kept) so a download takes a while


def recordings(lib: Path) -> dict[int, Path]:
    """Session id -> recording path of the exportable sessions with audio."""
    library = Library(lib / "silent_steno.db")
    try:
        out = {}
        for s in library.list_sessions(exportable_only=True):
            full = library.get_session(s.id)
            if full.audio is not None:
                out[s.id] = full.audio.path
        return out
    finally:
        library.close()


def grow(path: Path, size: int = GROWN) -> bytes:
    with open(path, "r+b") as f:
        f.truncate(size)
    return path.read_bytes()


async def fetch(client, path: str, headers: dict) -> tuple:
    """(response, body), or (None, path) for an answer that never ends."""
    import aiohttp
    try:
        r = await client.get(path, headers=headers, timeout=aiohttp.ClientTimeout(total=20))
        return r, await r.read()
    except TimeoutError:
        return None, f"{path} {headers}: no answer within 20 s"


async def test_a_recording_swapped_for_a_symlink_never_serves_what_it_points_to(web_client, own_lib, tmp_path):
    client, core = await web_client(own_lib)
    sid, path = next(iter(recordings(own_lib).items()))
    real = grow(path, 256 << 10)
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    marker = os.urandom(16) * 64
    secret.write_bytes(marker * 8)
    token = await csrf(client)
    link = await (await client.post(f"/api/v1/sessions/{sid}/share-links", json={"max_downloads": 1000},
                                    headers={"X-CSRF-Token": token})).json()
    paths = [f"/sessions/{sid}/audio?dl=1", f"/sessions/{sid}/audio", f"{link['url']}/audio",
             f"/sessions/{sid}/zip?formats=audio", f"{link['url']}/zip"]
    served, refused, leaked, wrong, failed, hung = 0, 0, [], [], [], []
    swapper = Swapper([path], secret)
    swapper.start()
    try:
        deadline = asyncio.get_running_loop().time() + 4
        while asyncio.get_running_loop().time() < deadline:
            rs = await asyncio.gather(*(fetch(client, p, h) for p in paths for h in ({}, {"Range": "bytes=0-"})))
            for r, body in rs:
                if r is None:
                    hung.append(body)
                    continue
                if marker[:64] in body:
                    leaked.append((r.url.path, r.status))
                if r.status in (200, 206):
                    served += 1
                    if r.url.path.endswith("/audio") and body != real[:len(body)]:
                        wrong.append((r.url.path, r.status, len(body)))
                else:
                    refused += 1
                    if r.status >= 500:
                        failed.append((r.url.path, r.status))
    finally:
        await asyncio.to_thread(swapper.close)          # the real recording back in place
    assert not leaked, f"{len(leaked)} answers carried the file outside the data folder: {leaked[:5]}"
    assert not wrong, f"{len(wrong)} recordings served were not the recording: {wrong[:5]}"
    assert not failed, f"{len(failed)} server errors: {failed[:5]}"
    assert not hung, f"{len(hung)} downloads hung: {hung[:5]}"
    assert swapper.swaps > 100 and served > 10, (swapper.swaps, served, refused)


async def raw_get(port: int, path: str, first: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, bytes]:
    """A client that reads the headers and ``first`` body bytes, then stops reading (its buffer fills)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    sock = writer.get_extra_info("socket")
    import socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode()
    assert head.startswith("HTTP/1.1 200"), head
    length = int(re.search(r"(?im)^content-length: *(\d+)", head).group(1))
    body = await asyncio.wait_for(reader.readexactly(first), 30)
    return reader, writer, length, body


async def read_rest(reader: asyncio.StreamReader, timeout: float = 15) -> tuple[bytes, bool]:
    """Everything until the server closes; (bytes, closed) — closed False when it hangs past the timeout."""
    out = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(1 << 20):
                out += chunk
    except TimeoutError:
        return bytes(out), False
    return bytes(out), True


def warnings_about(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and what in r.getMessage()]


def no_errors(caplog) -> None:
    bad = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
           if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad


async def test_a_recording_truncated_mid_download_ends_the_response(web_client, own_lib, caplog):
    caplog.set_level(logging.INFO)
    client, _ = await web_client(own_lib)
    sid, path = next(iter(recordings(own_lib).items()))
    await asyncio.to_thread(grow, path)
    for query in ("?dl=1", ""):
        reader, writer, length, first = await raw_get(client.server.port, f"/sessions/{sid}/audio{query}", 1 << 20)
        assert length == GROWN
        os.truncate(path, 2 << 20)                    # the recorder (or a bug) cuts the file
        rest, closed = await read_rest(reader)
        writer.close()
        assert closed, "the client hangs: the server neither sent the rest nor closed the connection"
        assert len(first) + len(rest) < length
        await asyncio.to_thread(grow, path)
    lines = warnings_about(caplog, "changed while")
    assert len(lines) == 2 and all(f"session {sid}" in x for x in lines), lines
    no_errors(caplog)
    r = await client.get(f"/sessions/{sid}/audio?dl=1")          # the page goes on serving
    assert r.status == 200 and len(await r.read()) == GROWN


def zip_recordings(data: bytes) -> tuple[bool, int]:
    """(every member's CRC right, how many recordings) of a ZIP: in a thread, a 50 MB ZIP takes a while."""
    z = zipfile.ZipFile(io.BytesIO(data))
    return z.testzip() is None, len([n for n in z.namelist() if n.endswith((".wav", ".flac"))])


async def zip_while(client, own_lib, change) -> tuple[int, list[tuple[int, bytes]]]:
    """A ZIP of two sessions whose second recording is changed (change(path)) while the first is streamed,
    twice: read and hashed on the way, then (checksums known) by sendfile.
    -> (the second session's id, [(Content-Length, bytes received)])"""
    recs = recordings(own_lib)
    by_file: dict[Path, int] = {}
    for sid, p in recs.items():
        by_file.setdefault(p, sid)
    (first, first_id), (second, second_id) = list(by_file.items())[:2]
    await asyncio.to_thread(grow, first)
    original = await asyncio.to_thread(grow, second)
    url = f"/zip?formats=audio&id={first_id}&id={second_id}"
    got = []
    for sendfile in (False, True):
        if sendfile:                   # a whole ZIP first: the recordings' checksums are known afterwards
            r = await client.get(url)
            assert (await asyncio.to_thread(zip_recordings, await r.read()))[0]
        reader, writer, length, head = await raw_get(client.server.port, url, 1 << 20)
        await asyncio.to_thread(change, second)
        rest, closed = await read_rest(reader)
        writer.close()
        assert closed, "the ZIP client hangs"
        got.append((length, head + rest))
        await asyncio.to_thread(second.write_bytes, original)
    return second_id, got


async def test_a_recording_removed_mid_zip_is_still_sent_whole_from_what_was_checked(web_client, own_lib, caplog):
    """Held open since the ZIP was planned: removing the file changes nothing in the ZIP (nothing is skipped)."""
    caplog.set_level(logging.INFO)
    client, _ = await web_client(own_lib)
    _, got = await zip_while(client, own_lib, lambda p: p.unlink())
    for length, data in got:
        assert len(data) == length
        assert await asyncio.to_thread(zip_recordings, data) == (True, 2)
    no_errors(caplog)


async def test_a_recording_truncated_mid_zip_cuts_the_zip_cleanly(web_client, own_lib, caplog):
    caplog.set_level(logging.INFO)
    client, _ = await web_client(own_lib)
    second_id, cut = await zip_while(client, own_lib, lambda p: os.truncate(p, 1 << 20))
    assert all(len(data) < length for length, data in cut), "a ZIP with a cut recording was sent as if whole"
    lines = warnings_about(caplog, "changed while")
    assert len(lines) == 2 and all(f"(session {second_id})" in x for x in lines), lines
    no_errors(caplog)


async def test_a_duration_of_decades_draws_a_timeline_of_a_few_ticks(web_client, own_lib):
    """A recorder that writes an epoch time where a duration goes (1.7e9 s): the timeline's axis took one
    tick per 6 hours however long, so the session page and its PDF grew with the number (79,000 ticks here;
    at 1.7e12, milliseconds, the daemon ran out of memory drawing them)."""
    import sqlite3
    from steno_exportd.render.timeline import MAX_TICKS
    client, core = await web_client(own_lib)
    sid = [s.id for s in (await core.listing()).sessions if (await core.session(s.id)).segments][0]
    pdf = await client.get(f"/sessions/{sid}/download/pdf")
    assert pdf.status == 200
    normal_pdf = len(await pdf.read())
    with sqlite3.connect(own_lib / "silent_steno.db") as db:
        db.execute("UPDATE sessions SET duration_seconds = 1700000000, updated_at = '2031-01-01 00:00:00.000000' "
                   "WHERE id = ?", (sid,))
    r = await client.get(f"/sessions/{sid}")
    assert r.status == 200
    page = await r.text()
    axis = re.search(r'<g class="axis".*?</g>', page, re.S).group(0)
    assert 2 <= axis.count("<text") <= MAX_TICKS + 1, axis.count("<text")
    pdf = await client.get(f"/sessions/{sid}/download/pdf")
    assert pdf.status == 200
    assert len(await pdf.read()) < 2 * normal_pdf
