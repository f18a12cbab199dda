"""Downloads under stress: clients that leave or read slowly, bad parameters, selections by uuid, the cache bound."""
from __future__ import annotations

import asyncio
import io
import logging
import re
import zipfile

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
    monkeypatch.setattr(Library, "get_session", lambda self, key: loads.append(key) or get_session(self, key))
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
