"""Downloads under stress: clients that leave or read slowly, bad parameters, selections by uuid, the cache bound."""
from __future__ import annotations

import asyncio
import collections
import io
import logging
import re
import resource
import socket
import statistics
import threading
import time
import zipfile

import pytest

from steno_exportd.formats import DOCUMENT_TEMPLATES, FORMATS
from steno_exportd.web.context import CTX
from tests.parts import until
from tests.web.helpers import anonymous, csrf, leave, open_download, open_files, with_audio


def big_and_small(sessions):
    """The sessions with the largest recording (the demo's 57 MB WAV) and the smallest."""
    recorded = sorted((s for s in sessions.values() if s.audio is not None), key=lambda s: s.audio.size)
    return recorded[-1], recorded[0]


def left_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "client left" in r.getMessage()]


async def test_clients_leaving_mid_download_are_one_info_line_and_leave_nothing(web_client, sessions, tmp_path,
                                                                                caplog):
    caplog.set_level(logging.INFO)
    client, _ = await web_client()
    big, other = big_and_small(sessions)
    assert big.audio.size > 32 << 20

    async def abandon(path: str, reset: bool, name: str) -> None:
        before = len(left_lines(caplog))
        _, writer, length = await open_download(client, path, 256 * 1024)
        leave(writer, reset)
        await until(lambda: len(left_lines(caplog)) > before, f"the log line for {path}", in_thread=False)
        line = left_lines(caplog)[before]
        m = re.fullmatch(r"download of (.+): client left after (\d+) of (\d+) bytes", line)
        assert m and name in m.group(1) and 256 * 1024 <= int(m.group(2)) < length == int(m.group(3)), line

    # a ZIP whose recording is read (and hashed) on the way, then one sent by sendfile, then the file itself
    await abandon(f"/sessions/{big.id}/zip?formats=txt,audio", False, "SilentSteno.zip")
    r = await client.get(f"/sessions/{big.id}/zip", params={"formats": "audio"})
    assert len(await r.read()) == int(r.headers["Content-Length"])      # now the recording's checksums are known
    await abandon(f"/sessions/{big.id}/zip?formats=audio", True, "SilentSteno.zip")
    await abandon(f"/sessions/{big.id}/audio?dl=1", True, big.audio.path.name)
    await abandon(f"/sessions/{big.id}/audio?dl=1", False, big.audio.path.name)
    assert len(left_lines(caplog)) == 4                                  # one line per download, no more

    # nothing left behind: no stream, no open recording, no temp or half-written file, no audit entry
    ctx = client.app[CTX]
    await until(lambda: not ctx.streams, "the ZIP streams to end", in_thread=False)
    await until(lambda: str(big.audio.path) not in open_files(), "the recording to be closed", in_thread=False)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ("tmp" in p.name or p.name.startswith("."))]
    audit = await (await client.get(f"/api/v1/sessions/{big.id}/audit")).json()
    assert len(audit) == 1                                               # only the complete ZIP counts
    # the server goes on serving
    r = await asyncio.wait_for(client.get(f"/sessions/{other.id}/audio?dl=1"), 10)
    assert await r.read() == other.audio.path.read_bytes()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in noisy]


async def test_slow_zip_readers_do_not_hold_up_other_clients(web_client, sessions):
    client, _ = await web_client()
    big, other = big_and_small(sessions)
    # more stalled ZIP clients than the default thread pool has workers (2 cores: 6)
    slow = [await open_download(client, f"/sessions/{big.id}/zip?formats=audio", 64 * 1024) for _ in range(8)]
    ctx = client.app[CTX]
    await until(lambda: len(ctx.streams) == 8, "the eight ZIP streams", in_thread=False)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await client.get(f"/sessions/{other.id}/audio?dl=1")
    assert await r.read() == other.audio.path.read_bytes()
    r = await client.get(f"/sessions/{other.id}/zip", params={"formats": "txt,json"})
    assert zipfile.ZipFile(io.BytesIO(await r.read())).testzip() is None
    assert (await client.get("/api/v1/sessions")).status == 200
    assert loop.time() - t0 < 5, f"other clients waited {loop.time() - t0:.1f} s"
    assert len(ctx.streams) == 8                                       # all the while the eight stayed stalled
    # a stalled client that reads on gets its whole, intact ZIP
    reader, writer, length = slow.pop()
    rest = await asyncio.wait_for(reader.readexactly(length - 64 * 1024), 60)
    assert len(rest) + 64 * 1024 == length
    writer.close()
    for _, w, _ in slow:
        w.close()
    await until(lambda: not ctx.streams, "the stalled streams to end", in_thread=False)


async def test_unknown_download_parameters_are_400_naming_the_allowed_values(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    r = await client.post(f"/api/v1/sessions/{s.id}/share-links", json={}, headers={"X-CSRF-Token": await csrf(client)})
    share = (await r.json())["url"]
    fmts, tpls = ", ".join(FORMATS), ", ".join(DOCUMENT_TEMPLATES)
    for path, bad, allowed in (
            (f"/sessions/{s.id}/zip?formats=txt,exe", "exe", fmts),
            (f"/sessions/{s.id}/zip?formats=,", "formats", fmts),
            (f"/zip?ids={s.id}&formats=mp4", "mp4", fmts),
            (f"/sessions/{s.id}/zip?formats=txt&template=nope", "nope", tpls),
            (f"/sessions/{s.id}/download/pdff", "pdff", fmts),
            (f"/sessions/{s.id}/download/pdf?template=nope", "nope", tpls),
            (f"{share}/tar", "tar", "zip, audio")):
        r = await client.get(path)
        text = await r.text()
        assert r.status == 400 and bad in text and allowed in text, (path, r.status, text[-400:])
    # unknown sessions and files stay 404
    for path in ("/sessions/999999/zip?formats=exe", f"/zip?ids={s.id},999999&formats=txt",
                 "/sessions/999999/download/pdf", "/s/not-a-token/zip"):
        assert (await client.get(path)).status == 404, path
    # the share link was not used up by any of this
    links = await (await client.get(f"/api/v1/sessions/{s.id}/share-links")).json()
    assert links[0]["downloads"] == 0


async def test_the_users_own_document_template_is_accepted(web_client, sessions, tmp_path):
    """A template from render.template_dir/templates.toml, as the default and by name."""
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "templates.toml").write_text('[board]\nsections = ["header", "action_items"]\n')
    client, _ = await web_client(**{"render.template_dir": str(tmp_path / "tpl"), "export.template": "board"})
    s = with_audio(sessions)
    r = await client.get(f"/sessions/{s.id}/zip?formats=txt")
    assert r.status == 200, await r.text()
    assert zipfile.ZipFile(io.BytesIO(await r.read())).testzip() is None
    r = await client.get(f"/sessions/{s.id}/download/txt?template=board")
    assert r.status == 200 and "ACTION ITEMS" in await r.text()
    r = await client.get(f"/sessions/{s.id}/download/txt?template=nope")
    assert r.status == 400 and "board" in await r.text()


async def test_zip_of_a_selection_chosen_by_uuid(web_client, sessions):
    client, _ = await web_client()
    a, b = [s for s in sessions.values() if s.summary.exportable and s.segments][:2]
    r = await client.get("/zip", params=[("id", a.uuid), ("id", b.uuid), ("id", str(a.id)), ("formats", "txt")])
    assert r.status == 200 and "(2 sessions)" in r.headers["Content-Disposition"]
    z = zipfile.ZipFile(io.BytesIO(await r.read()))
    assert z.testzip() is None
    folders = sorted(n.split("/")[1] for n in z.namelist() if n.endswith("transcript.txt"))
    assert len(folders) == 2 and [f for f in folders if a.summary.short_id in f] \
        and [f for f in folders if b.summary.short_id in f]
    r = await client.get("/zip", params={"ids": f"{a.uuid},00000000-0000-4000-8000-000000000000"})
    assert r.status == 404 and "00000000-0000-4000-8000-000000000000" in await r.text()


async def test_render_cache_stays_under_http_cache_max_mb(web_client, sessions, tmp_path):
    client, _ = await web_client(**{"http.cache_max_mb": 1})
    cache = tmp_path / "state" / "cache" / "render"

    def cached() -> dict[bytes, int]:
        return {p.read_bytes(): p.stat().st_size for p in cache.rglob("*") if p.is_file()}
    served = {}
    for s in sessions.values():
        for fmt in ("html", "json", "txt"):
            r = await client.get(f"/sessions/{s.id}/download/{fmt}")
            assert r.status == 200, await r.text()
            served[s.id, fmt] = await r.read()
            assert sum(cached().values()) <= 1 << 20, (s.id, fmt)
            assert served[s.id, fmt] in cached()                      # the latest download is kept
    assert sum(len(b) for b in served.values()) > 1 << 20            # more than the bound went through
    first = next(iter(served))
    assert served[first] not in cached()                              # the oldest went first
    r = await client.get(f"/sessions/{first[0]}/download/{first[1]}")
    assert await r.read() == served[first]                            # and is rendered again when asked


async def test_a_recording_starts_without_loading_its_transcript(web_client, sessions, monkeypatch):
    """A long meeting's recording (page, Range, share link) goes out without its thousands of segments being read
    first, and a selection's ZIP reads each session once: the first byte waits for no transcript (issue 21: loading
    a 2,000-segment session took 20-100 ms before the first byte of a 1 s download)."""
    from steno_exportd.library import Library
    loads: list[int] = []
    get_session = Library.get_session
    monkeypatch.setattr(Library, "get_session", lambda self, key, *a: loads.append(key) or get_session(self, key, *a))
    client, core = await web_client()
    big, small = big_and_small(sessions)
    r = await client.post(f"/api/v1/sessions/{small.id}/share-links", json={},
                          headers={"X-CSRF-Token": await csrf(client)})
    assert r.status == 201, await r.text()
    shared = (await r.json())["url"]

    async def indexed():            # the search index reads every session once, in the background
        return (await core.search("meeting")).pending == 0
    await until(indexed, "the core to index the meetings", timeout=60)
    loads.clear()
    r = await client.get(f"/sessions/{big.uuid}/audio", params={"dl": "1"})
    assert r.status == 200 and await r.read() == big.audio.path.read_bytes()
    assert big.summary.short_id in r.headers["Content-Disposition"]
    r = await client.get(f"/sessions/{small.id}/audio", headers={"Range": "bytes=4-9"})
    assert r.status == 206 and await r.read() == small.audio.path.read_bytes()[4:10]
    anon = await anonymous(client)
    try:
        r = await anon.get(f"{shared}/audio")
        assert r.status == 200 and await r.read() == small.audio.path.read_bytes()
        assert small.summary.short_id in r.headers["Content-Disposition"]
    finally:
        await anon.session.close()
    assert loads == [], "no session was loaded whole to send its recording"
    assert (await core.search("meeting")).pending == 0, "(nothing else read a session meanwhile)"
    r = await client.get("/zip", params=[("id", big.uuid), ("id", str(small.id)), ("id", str(big.id)),
                                         ("formats", "audio")])
    assert r.status == 200 and len(await r.read()) > big.audio.size + small.audio.size
    assert sorted(loads) == sorted([big.id, small.id]), "each session of a ZIP is read once (by its plan)"
    no_audio = next(s for s in sessions.values() if s.audio is None)
    r = await client.get(f"/sessions/{no_audio.id}/audio")
    assert r.status == 404 and "no usable recording" in await r.text()


async def long_and_short(web_client, rec):
    """(client, core, long, short): a server on a recorder with a long meeting (its PDF: seconds of CPU, ~0.6 ms an
    entry) and a short one."""
    from tests.engine.test_cancel_render import _long_session
    long = await asyncio.to_thread(_long_session, rec, 15_000)
    short = await asyncio.to_thread(_long_session, rec, 5)
    client, core = await web_client(rec.root, **{"recorder.db_path": str(rec.path)})
    return client, core, long, short


async def open_zips(client, sid: int, n: int) -> list:
    """n guests (each from an address of its own: a client of its own for the render cap) asking for a session's
    PDF ZIP and reading nothing: their connections' writers."""
    guests = []
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port,
                                                       local_addr=(f"127.0.8.{i + 1}", 0))
        writer.write(f"GET /zip?formats=pdf&id={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        guests.append(writer)
    return guests


async def test_zip_clients_leaving_before_the_first_byte_stop_its_rendering(web_client, tmp_path, caplog):
    """THREATS: a guest must never exhaust CPU. Guests open ZIPs of a long meeting's PDF (seconds of reportlab in
    the render worker before the first byte) and leave at once: the rendering stops within a second of them
    leaving (the worker burns no more CPU), one INFO line each, and the next ZIP is served whole."""
    from tests.engine.test_cancel_render import cpu_seconds, render_workers
    from tests.recorder_db import RecorderDB

    caplog.set_level(logging.INFO)
    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        client, _, long, short = await long_and_short(web_client, rec)
        guests = await open_zips(client, long, 4)
        await until(lambda: render_workers() and cpu_seconds(render_workers()) >= 0.5, "the PDF rendering",
                    timeout=60)
        for writer in guests:
            leave(writer)
        await asyncio.sleep(1.0)                         # the bound: rendering for nobody ends within a second
        workers = await asyncio.to_thread(render_workers)
        before = await asyncio.to_thread(cpu_seconds, workers)
        await asyncio.sleep(2.0)
        burnt = await asyncio.to_thread(cpu_seconds, workers) - before
        assert burnt < 0.2, f"the render worker went on rendering for clients that left: {burnt:.2f} s of CPU in 2 s"
        await until(lambda: len([r for r in caplog.records if "client left" in r.getMessage()]) == 4,
                    "one line per client that left", in_thread=False)
        r = await asyncio.wait_for(client.get("/zip", params={"formats": "pdf", "id": str(short)}), 60)
        assert zipfile.ZipFile(io.BytesIO(await r.read())).testzip() is None
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
        assert not noisy, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in noisy]
    finally:
        rec.close()


def worker_cpu() -> float:
    """CPU seconds of every render worker this process had: the ones ended (and waited for) and the live ones."""
    from tests.engine.test_cancel_render import cpu_seconds, render_workers
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ended.ru_utime + ended.ru_stime + cpu_seconds(render_workers())


async def test_zip_clients_leaving_at_once_stop_their_renders_and_fail_nobody_elses(web_client, tmp_path, caplog):
    """THREATS: guests must neither pin the CPU nor starve other callers. Eight guests open PDF ZIPs of a long
    meeting and leave at once while two job-like threads render PDFs in the one shared worker and two browsers
    download PDF ZIPs and stay: every staying caller gets its whole result (no BrokenProcessPool, no OSError),
    and the worker stops rendering for the guests (not all eight of their renders)."""
    from steno_exportd import render
    from tests.engine.test_cancel_render import render_workers
    from tests.recorder_db import RecorderDB
    from tests.render.test_worker import pdf_body

    caplog.set_level(logging.INFO)
    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        client, core, long, short = await long_and_short(web_client, rec)
        small = await asyncio.to_thread(core.library.get_session, short)
        expected = pdf_body((await asyncio.to_thread(render.get("pdf").render_result, small,
                                                     render.RenderOptions())).data)     # (off the loop)
        # one guest's render: its CPU in the worker (the worker started and warm, as in a running daemon)
        await asyncio.to_thread(render.render_in_process, "pdf", small, render.RenderOptions())
        before = await asyncio.to_thread(worker_cpu)
        await asyncio.to_thread(lambda: render.render_in_process("pdf", core.library.get_session(long)))
        one = await asyncio.to_thread(worker_cpu) - before

        guests = await open_zips(client, long, 8)
        start = await asyncio.to_thread(worker_cpu)
        await until(lambda: worker_cpu() - start >= 0.3, "the guests' PDF rendering", timeout=60)

        outcomes: list[str] = []

        def job_like() -> None:
            for _ in range(5):
                try:
                    data = render.render_in_process("pdf", small, render.RenderOptions())
                    outcomes.append("whole" if pdf_body(data) == expected else "wrong render")
                except Exception as e:     # noqa: BLE001 - counted: any of them is the failure looked for
                    outcomes.append(repr(e))

        async def browser() -> None:
            for _ in range(3):
                r = await client.get("/zip", params={"formats": "pdf", "id": str(short)})
                body = await r.read()
                try:
                    z = zipfile.ZipFile(io.BytesIO(body))
                    whole = r.status == 200 and z.testzip() is None and \
                        [n for n in z.namelist() if n.endswith(".pdf") and z.read(n).startswith(b"%PDF")]
                except zipfile.BadZipFile:
                    whole = False
                outcomes.append("whole" if whole else f"download {r.status}: {body[:200]!r}")

        staying = asyncio.gather(asyncio.to_thread(job_like), asyncio.to_thread(job_like), browser(), browser())
        await asyncio.sleep(0.3)                          # the staying callers' renders are queued
        left = await asyncio.to_thread(worker_cpu)
        for writer in guests:
            leave(writer)
        await asyncio.wait_for(staying, 180)
        assert outcomes.count("whole") == len(outcomes) == 16, \
            f"{outcomes.count('whole')} of 16 staying callers got their whole result: {outcomes}"
        await asyncio.sleep(1.0)
        idle = await asyncio.to_thread(worker_cpu)
        await asyncio.sleep(2.0)
        assert await asyncio.to_thread(worker_cpu) - idle < 0.2, "the worker went on rendering for guests that left"
        burnt = idle - left
        assert burnt < 2 * one + 1.5, \
            f"the worker rendered {burnt:.1f} s for 8 guests that left (one guest's render: {one:.1f} s)"
        # one line per guest that left (a guest whose ZIP was whole before it left was served: no line)
        await until(lambda: len(left_lines(caplog)) >= 4, "the guests' lines", in_thread=False)
        await asyncio.sleep(0.5)
        assert len(left_lines(caplog)) <= 8, left_lines(caplog)
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
        assert not noisy, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in noisy]
        assert render_workers()
    finally:
        rec.close()


async def test_documents_being_made_for_a_guest_never_stall_the_page_for_others(default_threads, web_client, tmp_path):
    """THREATS: a guest must not take the page down. A guest asks for eight long meetings' PDFs at once (each a
    render of seconds, made one after the other in the one worker; eight asks for the same one share its render):
    meanwhile another person's meeting page and the status answer at once, not after the guest's renders (the
    threads the page's reads run in are not held by callers waiting for the worker)."""
    from tests.engine.test_cancel_render import _long_session
    from tests.recorder_db import RecorderDB

    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        medium = [await asyncio.to_thread(_long_session, rec, 6000) for _ in range(8)]
        short = await asyncio.to_thread(_long_session, rec, 5)
        client, core = await web_client(rec.root, **{"recorder.db_path": str(rec.path)})
        guest = [asyncio.ensure_future(client.get(f"/sessions/{m}/download/pdf")) for m in medium]
        await asyncio.sleep(1.5)                    # the guest's renders: one in the worker, the others waiting
        waits = []
        for path in (f"/sessions/{short}", "/api/v1/status", f"/sessions/{short}"):
            t0 = time.monotonic()
            r = await asyncio.wait_for(client.get(path), 120)
            await r.read()
            waits.append(time.monotonic() - t0)
            assert r.status == 200, (path, r.status)
        assert not all(g.done() for g in guest), "the guest's renders were over before the page was asked for"
        assert max(waits) < 1.0, f"the page waited for the guest's renders: {[round(w, 1) for w in waits]} s"
        held = default_threads.holders()
        assert not held, f"the guest's renders were waited for in the loop's default threads: {held}"
        for g in guest:
            g.cancel()
    finally:
        rec.close()


@pytest.mark.parametrize("cache_mb", [256, 0], ids=["cached", "cache-off"])
async def test_requests_at_once_for_the_same_new_document_share_one_render(web_client, tmp_path, monkeypatch,
                                                                           cache_mb):
    """THREATS: a guest must neither exhaust CPU nor starve a job's renders. A long meeting's PDF not made before:
    a guest asks for it and leaves at once, and eight more requests for it come in meanwhile: the eight get the same
    whole PDF, rendered once in the worker (not nine times one after the other), with the render cache on or off."""
    from steno_exportd import render
    from tests.engine.test_cancel_render import _long_session
    from tests.recorder_db import RecorderDB

    from steno_exportd.web import downloads

    submitted: list[str] = []           # what reached the render worker
    asked: list[str] = []               # requests that came to the render (a new one or one under way)
    everyone_asked = threading.Event()  # the first render is held until every request has come to it (else a late
    submit = render._submit             # request would start a second render after the first one ended)
    made_once = downloads.made_once

    def held_submit(name, *a):
        submitted.append(name)
        everyone_asked.wait(60)
        return submit(name, *a)

    async def counted(*a):
        asked.append(a[1])
        if len(asked) >= 9:
            everyone_asked.set()
        return await made_once(*a)
    monkeypatch.setattr(render, "_submit", held_submit)
    monkeypatch.setattr(downloads, "made_once", counted)
    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        medium = await asyncio.to_thread(_long_session, rec, 3000)      # seconds of reportlab
        client, _ = await web_client(rec.root, **{"recorder.db_path": str(rec.path), "http.cache_max_mb": cache_mb})
        path = f"/sessions/{medium}/download/pdf"
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await until(lambda: submitted, "the guest's render to start", timeout=60, in_thread=False)
        leave(writer)

        async def fetch() -> tuple[int, str, int, bytes]:
            r = await client.get(path)
            return r.status, r.headers.get("Content-Type", ""), int(r.headers.get("Content-Length", -1)), \
                await r.read()
        got = await asyncio.wait_for(asyncio.gather(*(fetch() for _ in range(8))), 300)
        assert len(asked) == 9 and everyone_asked.is_set(), asked
        assert submitted == ["pdf"], f"the PDF was rendered {len(submitted)} times for nine requests at once"
        body = got[0][3]
        assert body.startswith(b"%PDF") and body.rstrip().endswith(b"%%EOF"), body[-200:]
        assert all(g == (200, "application/pdf", len(body), body) for g in got), \
            [(status, ctype, length, len(b), b == body) for status, ctype, length, b in got]
    finally:
        everyone_asked.set()
        rec.close()


async def test_documents_every_requester_left_stop_rendering_and_keep_nobody_waiting(web_client, tmp_path,
                                                                                     monkeypatch):
    """THREATS: nobody's requests may starve others' renders. A user asks for three long meetings' PDFs not made
    before (a render of seconds each, one after the other in the one worker) and closes the tab at once; then
    someone asks for a short meeting's PDF. It comes without the three long PDFs being made for nobody: the render
    under way stops and those waiting their turn are withdrawn (none of them reaches the cache)."""
    from tests.engine.test_cancel_render import _long_session
    from tests.recorder_db import RecorderDB

    from steno_exportd import render

    submitted: list[str] = []           # what reached the render worker
    submit = render._submit
    monkeypatch.setattr(render, "_submit", lambda name, *a: submitted.append(name) or submit(name, *a))
    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        long = [await asyncio.to_thread(_long_session, rec, 3000) for _ in range(3)]
        short = await asyncio.to_thread(_long_session, rec, 5)
        client, _ = await web_client(rec.root, **{"recorder.db_path": str(rec.path)})
        ctx = client.server.app[CTX]
        writers = []
        for sid in long:
            reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
            writer.write(f"GET /sessions/{sid}/download/pdf HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            writers.append(writer)
        await until(lambda: submitted and len(ctx.making) == 3, "the three renders to be asked for", timeout=60,
                    in_thread=False)
        for writer in writers:
            leave(writer)
        r = await asyncio.wait_for(client.get(f"/sessions/{short}/download/pdf"), 300)
        body = await r.read()
        assert r.status == 200 and body.startswith(b"%PDF"), (r.status, body[:200])
        made = [sid for sid in long if (await client.get(f"/sessions/{sid}")).status == 200
                and downloads_cached(ctx, sid)]
        assert (made, submitted) == ([], ["pdf", "pdf"]), \
            f"{len(made)} of the 3 PDFs nobody waited for were made; renders in the worker: {submitted}"
    finally:
        rec.close()


def downloads_cached(ctx, sid: int) -> bool:
    """Is the session's PDF (default template) in the render cache?"""
    from steno_exportd.web.downloads import cached_size
    s = ctx.core.library.get_session(sid)
    return cached_size(ctx, s, "pdf", ctx.cfg.export.template) is not None


async def test_a_request_that_comes_as_an_abandoned_render_ends_gets_its_document(web_client, sessions):
    """A render every requester left is stopped; a client that asks for the same document just then (its step runs
    after the stopped render's last one, before that render is taken out of ctx.making) still gets the document,
    not a 409 'cancelled' for a render it never left."""
    import functools
    import types

    from steno_exportd import render
    from steno_exportd.engine.plan import render_options
    from steno_exportd.errors import CancelledJob
    from steno_exportd.web import downloads

    client, _ = await web_client()
    ctx = client.server.app[CTX]
    s = ctx.core.library.get_session(next(iter(sessions)))
    template = ctx.cfg.export.template
    opts = render_options(ctx.cfg, template)
    key = ctx.cache.key(s.uuid, s.updated_at, "txt", render.get("txt").version, template, opts)
    connected = types.SimpleNamespace(transport=types.SimpleNamespace(is_closing=lambda: False))
    came = asyncio.get_running_loop().create_future()
    stopped = ctx.making[key] = downloads.Making()

    async def render_nobody_waits_for() -> None:    # its thread found every requester gone: stopped
        stopped.abandoned = True
        came.set_result(None)                       # the new request's cache miss is back in the same loop turn
        raise CancelledJob("cancelled")
    stopped.task = asyncio.create_task(render_nobody_waits_for())
    stopped.task.add_done_callback(functools.partial(downloads._made, ctx.making, key, stopped))
    await came
    path, data = await downloads.made_once(ctx, key, "txt", s, opts, connected)
    assert (path.read_bytes() if path is not None else data).strip(), "no document"
    assert key not in ctx.making


async def test_a_files_last_bytes_go_out_at_once_on_a_kept_alive_connection(web_client, sessions):
    """A recording goes out by sendfile with Nagle on (as nginx sends a file); its last, partial segment is pushed
    out at once after it, never held back until the client's (delayed) ACK comes: on a kept-alive connection a
    small Range answer and a whole recording come as promptly as a page."""
    client, _ = await web_client()
    _, small = big_and_small(sessions)
    data = small.audio.path.read_bytes()
    loop = asyncio.get_running_loop()

    async def timed(path: str, **headers: str) -> tuple[float, int, bytes]:
        t0 = loop.time()
        r = await client.get(path, headers=headers)
        body = await r.read()
        return loop.time() - t0, r.status, body

    page, spans, whole = [], [], []
    for i in range(20):           # one connection, kept alive (the client's pool): the client delays its ACKs
        t, status, body = await timed("/static/style.css")
        assert status == 200
        page.append(t)
        t, status, body = await timed(f"/sessions/{small.id}/audio", Range=f"bytes={100 * i}-{100 * i + 99}")
        assert status == 206 and body == data[100 * i:100 * i + 100]
        spans.append(t)
        t, status, body = await timed(f"/sessions/{small.id}/audio")
        assert status == 200 and body == data
        whole.append(t)
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in (("page", page), ("range", spans), ("whole", whole))}
    assert ms["range"] < ms["page"] + 20 and ms["whole"] < ms["page"] + 20 + len(data) / 200e3, ms


async def ask_from(source: str, url: str) -> tuple[int, str, bytes]:
    """GET url from the local address ``source`` (a client of its own): (status, Retry-After, body)."""
    import aiohttp
    conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as http:
        async with http.get(url) as r:
            return r.status, r.headers.get("Retry-After", ""), await r.read()


async def test_one_client_cannot_queue_more_than_its_share_of_renders(web_client, sessions, monkeypatch):
    """THREATS: a guest must not starve others' renders. PDFs and DOCX are made one at a time in the one render
    worker, first come first served, and nothing bounded how many one client queued there: a guest asking for
    every meeting's PDF in every template at once put each of them ahead of everybody who asked after it (minutes of
    CPU each on the Pi). Now one client (one address; one /64 for IPv6) has at most RENDERS_PER_CLIENT documents
    being made for it; more at once are a 429 with Retry-After, while other clients' documents are still taken."""
    from steno_exportd.web.downloads import RENDERS_PER_CLIENT
    from tests.web.helpers import held_renders

    submitted, release = held_renders(monkeypatch)      # the worker's first render is held until the test says
    client, _ = await web_client()
    ctx = client.server.app[CTX]
    base = f"http://127.0.0.1:{client.server.port}"
    docs = [f"/sessions/{s.id}/download/{fmt}?template={t}" for s in sessions.values() if s.summary.exportable
            for fmt in ("pdf", "docx") for t in DOCUMENT_TEMPLATES]
    greedy, others = docs[:12], docs[12:15]

    def ask(source: str, path: str):
        return ask_from(source, base + path)
    try:
        guest = [asyncio.ensure_future(ask("127.0.9.2", p)) for p in greedy]           # all at once
        # each of the guest's asks refused or waiting for its render
        await until(lambda: sum(g.done() for g in guest) + len(ctx.making) >= len(greedy), "the guest's asks",
                    timeout=30, in_thread=False)
        queued = len(ctx.making)
        people = [asyncio.ensure_future(ask(f"127.0.9.{10 + i}", p)) for i, p in enumerate(others)]
        await until(lambda: len(ctx.making) >= queued + len(others), "the others' renders asked for",
                    timeout=30, in_thread=False)
        await asyncio.sleep(0.5)
        refused = [g.result() for g in guest if g.done()]
        assert not any(p.done() for p in people), [p.result()[:2] for p in people if p.done()]
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(*guest, *people), 300)
    finally:
        release.set()
    guest_statuses = collections.Counter(s for s, _, _ in answers[:len(greedy)])
    # before: Counter({200: 12}) -- every one of the guest's twelve renders queued ahead of the others'
    assert guest_statuses == {200: RENDERS_PER_CLIENT, 429: len(greedy) - RENDERS_PER_CLIENT}, guest_statuses
    assert all(s == 429 and int(after) >= 1 and b"documents being made" in body for s, after, body in refused)
    assert [s for s, _, _ in answers[len(greedy):]] == [200] * len(others)
    assert all(b.startswith((b"%PDF", b"PK")) for s, _, b in answers if s == 200)
    assert not ctx.rendering, ctx.rendering                   # every slot given back
    # its documents made, the guest may ask again (a cached one is no render and takes no slot)
    again = await asyncio.gather(*(ask("127.0.9.2", p) for p in greedy[:RENDERS_PER_CLIENT + 2]))
    assert [s for s, _, _ in again] == [200] * (RENDERS_PER_CLIENT + 2), [s for s, _, _ in again]


async def test_a_clients_v4_mapped_address_is_the_same_client_for_the_render_cap(web_client, sessions, monkeypatch):
    """A page served on a dual-stack socket (an IPv6 socket that takes IPv4 too, as a proxy or socket activation
    may hand it over) sees an IPv4 client as ::ffff:a.b.c.d. The render cap took only a plain IPv6 address to its
    /64 and counted that form as a client of its own: one client asking over both the IPv4 and the dual-stack
    listener at once had twice RENDERS_PER_CLIENT documents queued in the render worker. Both forms are one
    client, as they are for the login limiter."""
    from aiohttp import web

    from steno_exportd.web.downloads import RENDERS_PER_CLIENT
    from tests.web.helpers import held_renders

    client, _ = await web_client()
    ctx = client.server.app[CTX]
    dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::ffff:127.0.0.1", 0))              # loopback only, IPv4 clients seen in their v4-mapped form
    site = web.SockSite(client.server.runner, dual)
    await site.start()
    urls = (f"http://127.0.0.1:{client.server.port}", f"http://127.0.0.1:{dual.getsockname()[1]}")
    docs = [f"/sessions/{s.id}/download/{fmt}?template={t}" for s in sessions.values() if s.summary.exportable
            for fmt in ("pdf", "docx") for t in DOCUMENT_TEMPLATES][:12]
    try:
        one = next(s for s in sessions.values() if s.summary.exportable)
        status, _, _ = await ask_from("127.0.9.2", f"{urls[1]}/sessions/{one.id}/download/txt")
        seen = (await (await client.get(f"/api/v1/sessions/{one.id}/audit")).json())[0]["addr"]
        assert status == 200 and seen == "::ffff:127.0.9.2", (status, seen)     # the other form of 127.0.9.2
        submitted, release = held_renders(monkeypatch)
        try:
            asks = [asyncio.ensure_future(ask_from("127.0.9.2", urls[i % 2] + p)) for i, p in enumerate(docs)]
            await until(lambda: sum(a.done() for a in asks) + len(ctx.making) >= len(docs), "the client's asks",
                        timeout=30, in_thread=False)
            release.set()
            answers = await asyncio.wait_for(asyncio.gather(*asks), 300)
        finally:
            release.set()
    finally:
        await site.stop()
    statuses = collections.Counter(s for s, _, _ in answers)
    # before: Counter({429: 6, 200: 6}) -- three for 127.0.9.2 and three more for ::ffff:127.0.9.2
    assert statuses == {200: RENDERS_PER_CLIENT, 429: len(docs) - RENDERS_PER_CLIENT}, statuses
    assert all(int(after) >= 1 and b"documents being made" in body for s, after, body in answers if s == 429)
    assert not ctx.rendering, ctx.rendering


async def test_zips_of_documents_are_under_the_clients_render_cap(web_client, sessions, monkeypatch):
    """A ZIP with formats=pdf (or docx, xlsx) has its documents made in the same render worker, one after the other,
    but took no slot of the render cap: a guest asking for eight such ZIPs at once queued eight renders there, ahead
    of everybody who asked after it, where eight single PDFs get three. Now a ZIP that renders in the worker takes
    one of its client's RENDERS_PER_CLIENT slots while its documents are made (shared with single documents); more
    at once are a 429 with Retry-After, and another client's documents are still taken."""
    from steno_exportd import render
    from steno_exportd.web.downloads import RENDERS_PER_CLIENT
    from tests.web.helpers import held_renders

    client, _ = await web_client()
    ctx = client.server.app[CTX]
    base = f"http://127.0.0.1:{client.server.port}"
    zips = [f"/sessions/{s.id}/zip?formats=pdf&template={t}" for s in sessions.values() if s.summary.exportable
            for t in DOCUMENT_TEMPLATES][:8]
    other = next(s for s in sessions.values() if s.summary.exportable)
    submitted, release = held_renders(monkeypatch)      # the worker's first render is held until the test says

    def queued() -> int:                                # renders in the worker and waiting their turn for it
        return len(submitted) + len(render._turns._queue)
    try:
        guest = [asyncio.ensure_future(ask_from("127.0.9.3", base + p)) for p in zips]           # all at once
        await until(lambda: sum(g.done() for g in guest) + queued() >= len(zips), "the guest's ZIPs",
                    timeout=30, in_thread=False)
        await asyncio.sleep(0.5)
        guests = queued()
        person = asyncio.ensure_future(ask_from("127.0.9.4", f"{base}/sessions/{other.id}/download/docx"))
        await until(lambda: queued() > guests, "the other client's render", timeout=30, in_thread=False)
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(*guest, person), 300)
    finally:
        release.set()
    statuses = collections.Counter(s for s, _, _ in answers[:len(zips)])
    # before: Counter({200: 8}) -- every one of the guest's ZIPs had a render queued in the worker at once
    assert statuses == {200: RENDERS_PER_CLIENT, 429: len(zips) - RENDERS_PER_CLIENT}, statuses
    assert guests == RENDERS_PER_CLIENT, guests         # (before: 8) renders queued for the guest at once
    assert all(int(after) >= 1 and b"documents being made" in body for s, after, body in answers if s == 429)
    for s, _, body in answers[:len(zips)]:
        if s == 200:
            with zipfile.ZipFile(io.BytesIO(body)) as z:
                assert [n for n in z.namelist() if n.endswith(".pdf")], z.namelist()
    assert answers[-1][0] == 200 and answers[-1][2].startswith(b"PK")
    assert not ctx.rendering, ctx.rendering                   # every slot given back
