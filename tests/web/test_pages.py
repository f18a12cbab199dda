"""The web page on a real core and demo library: listing, session page, downloads, ZIP, headers."""
from __future__ import annotations

import asyncio
import hashlib
import io
import re
import zipfile

import pytest

from steno_exportd.events import DeviceState as S
from steno_exportd.web.pages import FIRST_LINES
from tests.parts import sha256sum_check
from tests.web.helpers import csrf, next_status, sharing_state, with_audio, without_audio


async def test_list_search_sort_and_paging(web_client, sessions):
    client, _ = await web_client()
    r = await client.get("/api/v1/sessions")
    data = await r.json()
    assert r.status == 200 and data["total"] == len(sessions)
    dates = [x["start_time"] for x in data["items"] if x["start_time"]]
    assert dates == sorted(dates, reverse=True)                     # newest first
    some = with_audio(sessions)
    word = some.title.split()[0]
    r = await client.get("/api/v1/sessions", params={"q": word.upper()})
    assert some.id in [x["id"] for x in (await r.json())["items"]]
    person = some.participants[0].name
    r = await client.get("/api/v1/sessions", params={"participant": person[:4].lower()})
    ids = [x["id"] for x in (await r.json())["items"]]
    assert some.id in ids and all(any(person[:4].lower() in p.name.lower() for p in sessions[i].participants)
                                  for i in ids)
    day = some.start_time.astimezone().date().isoformat()
    r = await client.get("/api/v1/sessions", params={"from": day, "to": day})
    assert some.id in [x["id"] for x in (await r.json())["items"]]
    r = await client.get("/api/v1/sessions", params={"per_page": "2", "page": "2", "sort": "title", "order": "asc"})
    page2 = await r.json()
    titles = sorted((s.title or "").casefold() for s in sessions.values())
    assert [x["title"].casefold() for x in page2["items"]] == titles[2:4] and page2["pages"] == -(-len(titles) // 2)
    r = await client.get("/api/v1/sessions", params={"per_page": "2", "page": "999", "sort": "title", "order": "asc"})
    last = await r.json()      # a stale link past the end shows the last page, not an empty "page 999 of 3"
    assert last["page"] == last["pages"] == page2["pages"] and last["items"]
    assert [x["title"].casefold() for x in last["items"]] == titles[(last["page"] - 1) * 2:]
    r = await client.get("/", params={"q": word})
    html = await r.text()
    assert r.status == 200 and f'href="/sessions/{some.uuid}"' in html


@pytest.mark.parametrize("params, message", [
    ({"from": "2026-13-01"}, "not a date"), ({"sort": "size"}, "sort"), ({"per_page": "100000"}, "out of range"),
    ({"page": "x"}, "not a number"), ({"order": "up"}, "order"),
])
async def test_bad_list_parameters_are_400_with_a_reason(web_client, params, message):
    client, _ = await web_client()
    r = await client.get("/api/v1/sessions", params=params)
    assert r.status == 400 and message in (await r.json())["error"]
    r = await client.get("/", params=params)
    assert r.status == 400 and message in await r.text()


async def test_session_page_transcript_player_and_problems(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    r = await client.get(f"/sessions/{s.uuid}")                         # uuid works as well as the id
    html = await r.text()
    assert r.status == 200
    assert f'<audio id="player" controls preload="metadata" src="/sessions/{s.uuid}/audio"' in html
    starts = re.findall(r'data-start="([0-9.]+)"', html)
    assert len(starts) == min(len(s.segments), FIRST_LINES) and float(starts[1]) == s.segments[1].start
    whole = await (await client.get(f"/sessions/{s.id}?all=1")).text()     # without scripts: every line
    assert [float(x) for x in re.findall(r'data-start="([0-9.]+)"', whole)] == [g.start for g in s.segments]
    assert "<script" not in html.replace('<script src="/static/app.js" defer></script>', "")   # no inline script
    bad = without_audio(sessions)
    html = await (await client.get(f"/sessions/{bad.id}")).text()
    assert "<audio" not in html and "audio" in html.lower()
    r = await client.get(f"/sessions/{bad.id}/audio")
    assert r.status == 404 and "no usable recording" in await r.text()
    for key, status in (("999999", 404), ("nope", 404), ("x" * 200, 400)):     # too long: malformed, not unknown
        assert (await client.get(f"/sessions/{key}")).status == status
        assert (await client.get(f"/api/v1/sessions/{key}")).status == status


async def test_audio_download_ranges_etag_and_filename(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    data = s.audio.path.read_bytes()
    r = await client.get(f"/sessions/{s.id}/audio?dl=1")
    body = await r.read()
    assert r.status == 200 and body == data
    assert r.headers["Content-Type"] in ("audio/flac", "audio/wav")
    assert r.headers["Content-Disposition"].startswith("attachment;") and "filename*=UTF-8''" in r.headers[
        "Content-Disposition"]
    etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
    r = await client.get(f"/sessions/{s.id}/audio", headers={"Range": "bytes=100-199"})
    assert r.status == 206 and await r.read() == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    r = await client.get(f"/sessions/{s.id}/audio", headers={"Range": "bytes=0-9", "If-Range": etag})
    assert r.status == 206
    r = await client.get(f"/sessions/{s.id}/audio", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert r.status == 200 and len(await r.read()) == len(data)       # changed since: the whole file
    r = await client.get(f"/sessions/{s.id}/audio", headers={"If-None-Match": etag})
    assert r.status == 304
    assert modified


async def test_unicode_filename_in_content_disposition(web_client, sessions):
    client, _ = await web_client()
    s = next(x for x in sessions.values() if any(ord(c) > 127 for c in x.title) and x.summary.exportable)
    r = await client.get(f"/sessions/{s.id}/download/txt")
    cd = r.headers["Content-Disposition"]
    from urllib.parse import unquote
    assert r.status == 200 and unquote(cd.split("filename*=UTF-8''")[1]).startswith(s.title.split("/")[0][:10])
    assert all(ord(c) < 128 for c in cd)


async def test_rendered_downloads_are_cached(web_client, sessions, tmp_path):
    client, core = await web_client()
    s = with_audio(sessions)
    r = await client.get(f"/sessions/{s.id}/download/pdf", params={"template": "summary"})
    pdf = await r.read()
    assert r.status == 200 and r.headers["Content-Type"] == "application/pdf" and pdf.startswith(b"%PDF")
    cached = [p for p in (tmp_path / "state" / "cache" / "render").rglob("*") if p.is_file()]
    assert len(cached) == 1 and cached[0].read_bytes() == pdf
    r2 = await client.get(f"/sessions/{s.id}/download/pdf", params={"template": "summary"})
    assert await r2.read() == pdf                                      # served from the cache
    txt = await (await client.get(f"/sessions/{s.id}/download/txt")).text()
    assert s.segments[0].text[:30] in txt


async def test_zip_stream_has_content_length_and_checks_out(web_client, sessions, tmp_path):
    client, _ = await web_client()
    s = with_audio(sessions)
    r = await client.get(f"/sessions/{s.id}/zip", params={"formats": "txt,json,audio"})
    body = await r.read()
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(body)
    z = zipfile.ZipFile(io.BytesIO(body))
    names = z.namelist()
    assert "SilentSteno/SHA256SUMS" in names and "SilentSteno/manifest.json" in names
    audio = next(i for i in z.infolist() if i.filename.endswith(s.audio.path.suffix))
    assert audio.compress_type == zipfile.ZIP_STORED
    z.extractall(tmp_path / "unz")
    assert not await asyncio.to_thread(sha256sum_check, tmp_path / "unz" / "SilentSteno")
    assert hashlib.sha256(z.read(audio.filename)).hexdigest() == hashlib.sha256(s.audio.path.read_bytes()).hexdigest()
    # the second time the recording's checksums are known: its bytes go by sendfile, the ZIP is the same
    r = await client.get(f"/sessions/{s.id}/zip", params={"formats": "txt,json,audio"})
    again = await r.read()
    assert int(r.headers["Content-Length"]) == len(again)
    z2 = zipfile.ZipFile(io.BytesIO(again))
    assert z2.testzip() is None                                        # every CRC checks out
    a2 = next(i for i in z2.infolist() if i.filename.endswith(s.audio.path.suffix))
    assert a2.flag_bits & 0x08 == 0 and a2.CRC == audio.CRC            # CRC up front, no data descriptor
    assert z2.read("SilentSteno/SHA256SUMS") == z.read("SilentSteno/SHA256SUMS")
    ids = [str(i) for i, x in sessions.items() if x.summary.exportable][:3]
    r = await client.get("/zip", params=[("id", i) for i in ids] + [("formats", "txt")])
    z = zipfile.ZipFile(io.BytesIO(await r.read()))
    assert len([n for n in z.namelist() if n.endswith("transcript.txt")]) == 3
    assert (await client.get("/zip")).status == 400
    assert (await client.get("/zip", params={"ids": ",".join(["1"] * 501)})).status == 400


async def test_security_headers_on_pages_files_and_errors(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    for path in ("/", f"/sessions/{s.id}", f"/sessions/{s.id}/audio", "/static/app.js", "/nope",
                 "/api/v1/sessions", f"/sessions/{s.id}/zip?formats=txt"):
        r = await client.get(path)
        await r.read()
        csp = r.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"], path


async def test_openapi_documents_every_api_route(web_client):
    client, _ = await web_client()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    routes = {(res.canonical, m.lower()) for res in client.app.router.resources()
              for m in [r.method for r in res] if res.canonical.startswith("/api/v1/") and m != "HEAD"}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    assert doc["openapi"].startswith("3.")


async def test_unknown_page_and_oversized_body(web_client):
    client, _ = await web_client()
    r = await client.get("/no/such/page")
    assert r.status == 404
    token = await csrf(client)
    r = await client.post("/api/v1/exports", data=b"x" * (70 * 1024),
                          headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert r.status == 413


async def test_sharing_state_shows_on_the_devices_page_and_follows_the_switch(web_client):
    client, core = await web_client()
    html = await (await client.get("/devices")).text()
    assert sharing_state(html) == "off"
    resp = await client.get("/api/v1/events")
    try:
        assert await next_status(resp, "samba_enabled") is False        # the current state first
        core.set_sharing(True)
        assert await next_status(resp, "samba_enabled") is True
    finally:
        resp.close()
    html = await (await client.get("/devices")).text()
    assert sharing_state(html) == "on — not serving yet"                  # switched on; no share (yet)




async def test_the_devices_page_of_a_host_whose_name_is_not_utf8_shows_the_share(web_client, monkeypatch):
    """The devices page names the network share after the host; the kernel takes any bytes as a host name, and one
    not UTF-8 (Python's surrogate escapes) could not be written into the page: every visit of it was a 500 (the
    sticks, the jobs and the sharing switch out of reach). Now it shows the host's name as text
    (identity.host_name())."""
    import socket
    monkeypatch.setattr(socket, "gethostname", lambda: "desk\udcff42")
    client, core = await web_client()
    r = await client.get("/devices")
    assert r.status == 200, await r.text()
    html = await r.text()
    assert "\\\\desk\ufffd42\\" in html and sharing_state(html) == "off"


async def test_a_skipped_stick_shows_why_on_the_devices_page(web_client):
    client, core = await web_client()
    core.devices.change("fs_ab12", label="KINGSTON", fs_type="vfat", state=S.MOUNTED,
                        skip_reason=".steno-noexport on the stick")
    html = await (await client.get("/devices")).text()
    assert "KINGSTON" in html and "not exported: .steno-noexport on the stick" in html
    devices = await (await client.get("/api/v1/devices")).json()
    assert devices[0]["skip_reason"] == ".steno-noexport on the stick"


async def test_the_page_s_script_and_style_are_revalidated_so_an_upgrade_never_leaves_a_stale_one(web_client):
    """A browser kept /static/app.js from before an upgrade (no Cache-Control: cached by its heuristic for a tenth
    of the file's age, days for a package's file) and ran it against the new pages. Now each answer says to ask
    again (no-cache) with a validator, and asking again costs a 304 without the body."""
    from steno_exportd.web.context import PKG
    client, _ = await web_client()
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = await client.get(f"/static/{name}")
        body = await r.read()
        assert r.status == 200 and body == (PKG / "static" / name).read_bytes(), name
        assert kind in r.headers["Content-Type"], r.headers["Content-Type"]
        assert "no-cache" in r.headers.get("Cache-Control", ""), f"{name}: {r.headers.get('Cache-Control')!r}"
        etag = r.headers["ETag"]
        again = await client.get(f"/static/{name}", headers={"If-None-Match": etag})
        assert again.status == 304 and await again.read() == b"", name
        other = await client.get(f"/static/{name}", headers={"If-None-Match": '"an-older-version"'})
        assert other.status == 200 and await other.read() == body, name
        head = await client.head(f"/static/{name}")
        assert head.status == 200 and int(head.headers["Content-Length"]) == len(body), name
    for path in ("/static/", "/static/nope.js", "/static/templates", "/static/.%2e/app.py"):
        assert (await client.get(path)).status == 404, path
