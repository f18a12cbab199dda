"""Access control: networks, password login, lockout, CSRF, share links and the audit log; live events."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid as uuidlib

import pytest

from tests.recorder_db import restored_pair, restoring, rounds
from tests.web.helpers import PASSWORD, PASSWORD_HASH, anonymous, csrf, login_form, with_audio

PW = {"http.auth.mode": "password", "http.auth.password_hash": PASSWORD_HASH,
      "http.auth.max_failed_logins": 3, "http.auth.lockout_seconds": 60}


async def test_addresses_outside_allowed_networks_get_403(web_client):
    client, _ = await web_client(**{"http.auth.allowed_networks": ["10.0.0.0/8"]})
    for path in ("/", "/api/v1/sessions", "/static/app.js", "/login"):
        r = await client.get(path)
        assert r.status == 403 and "127.0.0.1" in await r.text(), path


async def test_password_login_cookie_and_lockout(web_client, sessions):
    client, _ = await web_client(**PW)
    r = await client.get("/sessions/1", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"].startswith("/login?next=")
    assert (await client.get("/api/v1/sessions")).status == 401
    assert (await client.get(f"/sessions/{with_audio(sessions).id}/audio", allow_redirects=False)).status == 302
    r = await login_form(client, "wrong")
    assert r.status == 401 and "Wrong password" in await r.text()
    r = await login_form(client, PASSWORD, nxt="//evil.example/x")
    assert r.status == 303 and r.headers["Location"] == "/"            # no open redirect
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age" in cookie
    assert (await client.get("/api/v1/sessions")).status == 200
    # a forged cookie is not a login
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({"steno_session": "eyJzaWQiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.bad"})
    assert (await client.get("/api/v1/sessions")).status == 401
    # lockout after max_failed_logins, even for the right password
    for _ in range(3):
        await login_form(client, "wrong")
    r = await login_form(client, PASSWORD)
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0


async def test_state_changing_requests_need_the_csrf_token(web_client, sessions, tmp_path):
    client, _ = await web_client()
    s = with_audio(sessions)
    body = {"sessions": [s.id], "formats": ["txt"], "target": str(tmp_path / "exports")}
    r = await client.post("/api/v1/exports", json=body)
    assert r.status == 403 and "CSRF" in (await r.json())["error"]
    r = await client.post("/api/v1/exports", json=body, headers={"X-CSRF-Token": "forged"})
    assert r.status == 403
    r = await client.post("/api/v1/exports", json=body, headers={"X-CSRF-Token": await csrf(client)})
    assert r.status == 202, await r.text()


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"), (b"[1]", 400, "JSON object"),
    (b"[" * 20_000, 400, "not valid JSON"),     # nested too deeply for json.loads: was a 500 and a traceback
    (json.dumps({"sessions": []}).encode(), 400, "sessions"),
    (json.dumps({"sessions": [1], "formats": ["exe"], "target": "/tmp"}).encode(), 404, "unknown format"),
    (json.dumps({"sessions": [999999], "formats": ["txt"], "target": "/tmp"}).encode(), 404, "999999"),
    (json.dumps({"sessions": [1], "formats": ["txt"], "target": "/etc"}).encode(), 400, "allowed"),
    (json.dumps({"sessions": [1], "formats": ["txt"], "device": "fs_nope"}).encode(), 404, "fs_nope"),
    (json.dumps({"sessions": [1], "options": {"bogus": 1}, "target": "/tmp"}).encode(), 400, "bogus"),
])
async def test_bad_export_requests(web_client, body, status, message):
    client, _ = await web_client()
    r = await client.post("/api/v1/exports", data=body,
                          headers={"X-CSRF-Token": await csrf(client), "Content-Type": "application/json"})
    assert r.status == status and message in (await r.json())["error"], await r.text()


async def test_share_link_counts_only_complete_downloads_then_expires(web_client, sessions):
    client, _ = await web_client(**PW)
    await login_form(client, PASSWORD)
    s = with_audio(sessions)
    token = await csrf(client)
    r = await client.post(f"/api/v1/sessions/{s.id}/share-links", json={"hours": 1, "max_downloads": 2},
                          headers={"X-CSRF-Token": token})
    link = await r.json()
    assert r.status == 201 and link["state"] == "active"
    anon = await anonymous(client)
    assert (await anon.get(link["url"])).status == 200                    # no login needed
    r = await anon.head(f"{link['url']}/audio")                           # HEAD: not counted
    assert r.status == 200
    r = await anon.get(f"{link['url']}/audio?dl=1")
    assert r.status == 200 and len(await r.read()) == s.audio.size
    state = await (await client.get(f"/api/v1/sessions/{s.id}/share-links")).json()
    assert state[0]["downloads"] == 1
    r = await anon.get(f"{link['url']}/zip")
    assert r.status == 200 and len(await r.read()) == int(r.headers["Content-Length"])
    r = await anon.get(link["url"])
    assert r.status == 410 and "used up" in await r.text()
    audit = await (await client.get(f"/api/v1/sessions/{s.id}/audit")).json()
    assert len([a for a in audit if a["via"].startswith("share link")]) == 2
    assert all(a["addr"] == "127.0.0.1" for a in audit)
    await anon.close()


async def test_share_link_pin_and_revoke(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    token = await csrf(client)
    for bad in ({"pin": "12"}, {"pin": "4711"}, {"pin": "١٢٣٤٥٦"}, {"hours": -1}, {"max_downloads": 0},
                {"hours": "soon"}):
        r = await client.post(f"/api/v1/sessions/{s.id}/share-links", json=bad, headers={"X-CSRF-Token": token})
        assert r.status == 400, bad
    r = await client.post(f"/api/v1/sessions/{s.id}/share-links", json={"pin": "471100"},
                          headers={"X-CSRF-Token": token})
    link = await r.json()
    anon = await anonymous(client)
    html = await (await anon.get(link["url"])).text()
    assert "needs a PIN" in html
    assert (await anon.get(f"{link['url']}/zip")).status == 403
    form_token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    r = await anon.post(link["url"], data={"pin": "000000", "csrf": form_token})
    assert r.status == 403 and "Wrong PIN" in await r.text()
    r = await anon.post(link["url"], data={"pin": "471100", "csrf": form_token})
    assert r.status == 200 and "Download the meeting" in await r.text()
    r = await client.post(f"/api/v1/share-links/{link['token']}/revoke", headers={"X-CSRF-Token": token})
    assert (await r.json())["state"] == "revoked"
    r = await anon.get(link["url"])
    assert r.status == 410 and "revoked" in await r.text()
    assert (await anon.get("/s/not-a-token")).status == 404
    await anon.close()


async def test_live_events_follow_an_export_job(web_client, sessions, tmp_path):
    client, core = await web_client()
    s = with_audio(sessions)
    resp = await client.get("/api/v1/events")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    r = await client.post("/api/v1/exports", json={"sessions": [s.id], "formats": ["txt", "audio"],
                                                   "target": str(tmp_path / "exports")},
                          headers={"X-CSRF-Token": await csrf(client)})
    job_id = (await r.json())["id"]
    seen = []

    async def read():
        buf = b""
        while True:
            buf += await resp.content.readany()
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                lines = dict(x.split(": ", 1) for x in block.decode().splitlines() if ": " in x and x[0] != ":")
                if lines.get("event") == "job":
                    j = json.loads(lines["data"])
                    if j["id"] == job_id:
                        seen.append(j)
                        if j["state"] in ("completed", "failed"):
                            return j
    last = await asyncio.wait_for(read(), 60)
    assert last["state"] == "completed" and last["progress"] == 1.0, last
    assert any(0 <= j["progress"] < 1 for j in seen[:-1]) or len(seen) >= 2
    resp.close()
    assert list((tmp_path / "exports").rglob("*.txt"))


async def test_expired_link_is_gone_and_wrong_pins_are_rate_limited(web_client, sessions):
    import time
    client, _ = await web_client(**{"http.auth.max_failed_logins": 3})
    s = with_audio(sessions)
    token = await csrf(client)
    r = await client.post(f"/api/v1/sessions/{s.id}/share-links", json={"hours": 0.0004},
                          headers={"X-CSRF-Token": token})
    short = await r.json()
    deadline = time.monotonic() + 10
    while (await client.get(short["url"])).status != 410:
        assert time.monotonic() < deadline, "the link never expired"
        await asyncio.sleep(0.2)
    r = await client.get(short["url"] + "/zip")
    assert r.status == 410 and "expired" in await r.text()
    r = await client.post(f"/api/v1/sessions/{s.id}/share-links", json={"pin": "246800"},
                          headers={"X-CSRF-Token": token})
    link = await r.json()
    anon = await anonymous(client)
    html = await (await anon.get(link["url"])).text()
    form_token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    for _ in range(3):
        assert (await anon.post(link["url"], data={"pin": "111111", "csrf": form_token})).status == 403
    r = await anon.post(link["url"], data={"pin": "246800", "csrf": form_token})
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0        # even the right PIN, for a while
    await anon.close()


@pytest.mark.parametrize("nxt", ["https://evil.example/", "/\\evil.example", "\\\\evil.example",
                                 "http:evil.example", "/\t/evil.example", "/\r\n/evil.example", "javascript:alert(1)",
                                 "evil.example", ""])
async def test_login_next_outside_the_site_lands_on_the_home_page(web_client, nxt):
    client, _ = await web_client(**PW)
    html = await (await client.get("/login", params={"next": nxt})).text()
    assert 'name="next" value="/"' in html                          # the form never carries it on
    r = await login_form(client, PASSWORD, nxt=nxt)
    assert r.status == 303 and r.headers["Location"] == "/", repr(nxt)


async def test_login_next_within_the_site_is_kept(web_client, sessions):
    client, _ = await web_client(**PW)
    s = with_audio(sessions)
    r = await client.get(f"/sessions/{s.id}?tab=share", allow_redirects=False)
    r = await client.get(r.headers["Location"])                      # the login page the browser lands on
    nxt = re.search(r'name="next" value="([^"]+)"', await r.text()).group(1)
    r = await login_form(client, PASSWORD, nxt=nxt)
    assert r.status == 303 and r.headers["Location"] == f"/sessions/{s.id}?tab=share"


async def test_a_tampered_session_cookie_is_refused(web_client):
    client, _ = await web_client(**PW)
    await login_form(client, PASSWORD)
    good = next(c.value for c in client.session.cookie_jar if c.key == "steno_session")
    flipped = good[:-1] + ("A" if good[-1] != "A" else "B")
    for forged in (flipped, good[:-1], good + "A", good * 2, "A" * len(good), "x" * 4096):
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies({"steno_session": forged})
        assert (await client.get("/api/v1/sessions")).status == 401, forged
        r = await client.get("/", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/login"), forged
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({"steno_session": good})
    assert (await client.get("/api/v1/sessions")).status == 200      # the genuine one still works


async def test_a_device_export_is_the_devices_job_whatever_options_are_sent(web_client, sessions, tmp_path):
    """The page's export to a stick is the stick's job: held to the stick's own filesystem (a stick pulled before its
    job opens it leaves an empty folder of the recorder's disk, never written to). Options sent with it could set
    'device_id' and so take the job out of that check (an empty one) or give it to another stick."""
    from steno_exportd import events as ev
    client, core = await web_client()
    s = with_audio(sessions)
    stick = tmp_path / "exports" / "STICK"
    stick.mkdir(parents=True)
    core.devices.change("fs_ab12", label="STICK", fs_type="vfat", size=10, free=5, mount_point=str(stick),
                        state=ev.DeviceState.MOUNTED)
    token = await csrf(client)
    for sent in ("", "fs_other"):
        r = await client.post("/api/v1/exports", json={"sessions": [s.id], "formats": ["txt"], "device": "fs_ab12",
                                                       "options": {"device_id": sent}},
                              headers={"X-CSRF-Token": token})
        assert r.status == 202, await r.text()
        assert (await r.json())["device_id"] == "fs_ab12", sent


@pytest.mark.parametrize("made", ["now", "before-uuids"])
async def test_a_share_link_never_serves_another_meeting_that_took_its_session_id(web_client, own_lib, made):
    """The recorder's database restored from a backup: the next meeting recorded takes an id a share link was made
    for (ids count on from the backup's). The link was made for the meeting that had that id, and must never open
    the new one: its page, its ZIP and its recording are refused (410), not served to whoever holds the old link.
    before-uuids: a link kept from a version that did not record its meeting's uuid (its session_uuid empty) is
    held to the meetings older than itself."""
    import os
    import sqlite3

    from tests.recorder_db import add_session_like

    db = own_lib / "silent_steno.db"
    backup = own_lib / "backup.db"
    with sqlite3.connect(db) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    shared_uuid = add_session_like(db, title="All-hands, fine to share")
    client, core = await web_client(own_lib)
    listed = (await (await client.get("/api/v1/sessions", params={"q": "all-hands"})).json())["items"]
    sid = next(x["id"] for x in listed if x["uuid"] == shared_uuid)
    token = await csrf(client)
    r = await client.post(f"/api/v1/sessions/{sid}/share-links", json={"max_downloads": 5},
                          headers={"X-CSRF-Token": token})
    link = await r.json()
    if made == "before-uuids":
        core.access.store._x("UPDATE share_links SET session_uuid = '' WHERE token = ?", (link["token"],))
    anon = await anonymous(client)
    try:
        assert "All-hands" in await (await anon.get(link["url"])).text()
        await asyncio.sleep(1.1)            # (the recorder's created_at counts whole seconds)
        # the restore (the recorder stopped: its WAL goes with the old file), then a new, confidential recording
        os.replace(backup, db)
        for tail in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{db}{tail}")
        other_uuid = add_session_like(db, title="Board meeting: layoffs")
        for _ in range(100):
            got = await (await client.get(f"/api/v1/sessions/{sid}")).json()
            if got.get("uuid") == other_uuid:
                break
            await asyncio.sleep(0.05)
        assert got["uuid"] == other_uuid and got["id"] == sid, got       # the id is the new meeting's now
        for path in ("", "/zip", "/audio"):
            r = await anon.get(link["url"] + path)
            body = await r.read()
            assert r.status == 410 and b"Board meeting" not in body and b"layoffs" not in body, (path, r.status)
        audit = await (await client.get(f"/api/v1/sessions/{sid}/audit")).json()
        assert not [a for a in audit if a["via"].startswith("share link")], audit
        # the new meeting's page and its API list no link of the old one (it answers 410, listed "active" it misled)
        listed = await (await client.get(f"/api/v1/sessions/{sid}/share-links")).json()
        assert link["token"] not in [x["token"] for x in listed], listed
        page = await (await client.get(f"/sessions/{sid}")).text()
        assert link["token"] not in page
        assert core.access.store.link(link["token"]).downloads == 0         # no use taken
    finally:
        await anon.session.close()


async def uses_of(client, sid: int, token: str) -> int:
    links = await (await client.get(f"/api/v1/sessions/{sid}/share-links")).json()
    return next((x["downloads"] for x in links if x["token"] == token), 0)


async def test_a_share_link_serves_its_own_meeting_while_the_database_is_restored_under_it(web_client, tmp_path):
    """The recorder's database restored again and again (a backup of another recorder with another meeting under
    the shared session id) while guests download through the link: every answer is the meeting the link was made
    for, or 410; never the other meeting's ZIP or recording (the meeting is read bound to the link's uuid, not
    checked on the listing and then read by its id)."""
    import io
    import threading
    import zipfile

    lib = tmp_path / "swapped"
    sid, uuid, fine, secret = restored_pair(lib)
    client, core = await web_client(lib, **{"export.formats": ["txt", "json"]})
    token = await csrf(client)
    r = await client.post(f"/api/v1/sessions/{sid}/share-links", json={"max_downloads": 1000},
                          headers={"X-CSRF-Token": token})
    link = await r.json()
    stop, swaps = threading.Event(), [0]

    guests = [await anonymous(client) for _ in range(4)]
    counts = {"right": 0, "wrong": 0, "gone": 0, "other": 0}

    def judge(what: str, status: int, body: bytes) -> str:
        if status == 410:
            return "gone"
        if status != 200:
            return "other"
        if what == "audio":
            return "right" if body == fine else "wrong" if body == secret else "other"
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            text = b"".join(z.read(n) for n in z.namelist())
        if b"layoffs" in text or b"Board meeting" in text:
            return "wrong"
        return "right" if b"Lunch is on Friday" in text else "other"

    async def guest(anon, n: int) -> None:
        for i in rounds(n, swaps):
            what = ("zip", "audio")[i % 2]
            r = await anon.get(f"{link['url']}/{what}")
            counts[judge(what, r.status, await r.read())] += 1

    swapper = threading.Thread(target=restoring, args=(lib, stop, swaps))
    swapper.start()
    try:
        await asyncio.gather(*(guest(g, 40) for g in guests))
    finally:
        stop.set()
        swapper.join()
        for g in guests:
            await g.session.close()
    assert swaps[0] > 100 and counts["right"] > 0, (swaps, counts)
    assert counts["wrong"] == 0, counts
    assert counts["other"] == 0, counts         # (neither the meeting nor 410: a run of 500s is no pass)
    assert sum(counts.values()) == 4 * 40, counts


def _judge_meeting(what: str, status: int, body: bytes, fine: bytes, secret: bytes) -> str:
    """One answer for meeting A (``fine``) while the database is restored under it: "right" (A's content), "wrong"
    (B's: "Board meeting: layoffs", its recording), "gone" (410: A's id names B now), "absent" (404 saying there is no
    such session: the database is B's at that moment, which has no A) or "other" (anything else, a 404 for a replaced
    meeting or a 500 among them)."""
    import io
    import zipfile

    if status == 410:
        return "gone"
    if status == 404:
        return "absent" if b"no session" in body else "other"
    if status != 200:
        return "other"
    if what == "audio":
        return "right" if body == fine else "wrong" if body == secret else "other"
    if what == "zip":
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            body = b"".join(z.read(n) for n in z.namelist())
    if b"layoffs" in body or b"Board meeting" in body or secret in body:
        return "wrong"
    return "right" if b"Lunch is on Friday" in body or b"All-hands" in body else "other"


async def test_a_meeting_named_by_uuid_is_never_another_one_while_the_database_is_restored(web_client, tmp_path):
    """The recorder's database restored again and again (another recorder's backup, another meeting under the same
    session id) while clients read a meeting by its uuid or short id: its page, transcript lines, documents, ZIP,
    recording and API answer are that meeting's, 410 (its id names another meeting now) or 404 (it is not in the
    database of the moment); never the other meeting's under this one's name (the key was resolved on the listing
    and the meeting then read by its id: a restore in between served the other one)."""
    import threading

    lib = tmp_path / "swapped"
    sid, uuid, fine, secret = restored_pair(lib)
    client, core = await web_client(lib, **{"export.formats": ["txt", "json"]})
    paths = [("page", "/sessions/{k}"), ("page", "/sessions/{k}/transcript"), ("api", "/api/v1/sessions/{k}"),
             ("txt", "/sessions/{k}/download/txt"), ("json", "/sessions/{k}/download/json"),
             ("zip", "/sessions/{k}/zip"), ("audio", "/sessions/{k}/audio")]
    for what, path in paths:            # (before any restore: the meeting itself)
        r = await client.get(path.format(k=uuid))
        assert _judge_meeting(what, r.status, await r.read(), fine, secret) == "right", path
    stop, swaps = threading.Event(), [0]

    counts = {"right": 0, "wrong": 0, "gone": 0, "absent": 0, "other": 0}
    wrong: list[str] = []

    async def reader(n: int, offset: int) -> None:
        for i in rounds(n, swaps):
            what, path = paths[(i + offset) % len(paths)]
            path = path.format(k=uuid if i % 3 else uuid.replace("-", "")[:8])    # its uuid, or its short id
            r = await client.get(path)
            got = _judge_meeting(what, r.status, await r.read(), fine, secret)
            counts[got] += 1
            if got in ("wrong", "other"):
                wrong.append(f"{path}: {r.status}")

    swapper = threading.Thread(target=restoring, args=(lib, stop, swaps))
    swapper.start()
    try:
        await asyncio.gather(*(reader(42, k) for k in range(4)))
    finally:
        stop.set()
        swapper.join()
    assert swaps[0] > 100 and counts["right"] > 0, (swaps, counts)
    assert counts["wrong"] == 0, (counts, wrong[:10])
    assert counts["other"] == 0, (counts, wrong[:10])       # (a replaced meeting is a 410, not a 404 or a 500)
    assert sum(counts.values()) == 4 * 42, counts


async def test_a_meeting_pages_links_open_that_meeting_only_after_a_restore(web_client, tmp_path):
    """The links on a meeting's page (its ZIP, recording, documents, transcript lines), and the recording's URL in
    its API answer, name the meeting, not the number it had: followed after the recorder's database was restored
    (the number now another meeting's), they answer 404 or 410, never the other meeting's files under the button of
    this one."""
    import os

    lib = tmp_path / "swapped"
    sid, uuid, fine, secret = restored_pair(lib)
    client, core = await web_client(lib, **{"export.formats": ["txt", "json"]})
    page = await (await client.get(f"/sessions/{sid}")).text()
    assert "All-hands" in page
    links = sorted(set(re.findall(r'(?:href|src|action)="(/sessions/[^"#]*)', page)))
    links += [f"/sessions/{m}/transcript" for m in re.findall(r'data-session="([^"]+)"', page)]
    links.append((await (await client.get(f"/api/v1/sessions/{sid}")).json())["audio"]["url"])
    kinds = {"zip": "zip", "audio": "audio"}
    assert any(x.endswith("/zip") for x in links) and any("/audio" in x for x in links), links
    assert any("/download/pdf" in x for x in links) and any("/download/txt" in x for x in links), links
    os.link(lib / "b.db", lib / "restoring.db")
    os.replace(lib / "restoring.db", lib / "silent_steno.db")       # (a restore: the file replaced whole)
    for link in links:
        if link.endswith("/share") or link.endswith("/email"):
            continue                    # (forms that post: a share link is bound to its meeting's uuid)
        r = await client.get(link.replace("&amp;", "&"))
        what = kinds.get(link.rsplit("/", 1)[-1].split("?")[0], "page")
        got = _judge_meeting(what, r.status, await r.read(), fine, secret)
        assert got in ("gone", "absent"), (link, r.status, got)


ALL_HANDS = "All-hands, fine to share"          # meeting A's title (restored_pair); B's: "Board meeting: layoffs"


def _link_to(page: str, title: str) -> str:
    """The path of the first link on a page (meetings list, history, search) titled ``title``; "" for none."""
    found = re.search(rf'href="(/sessions/[^"#]+)"[^>]*>{re.escape(title)}</a>', page)
    return found.group(1) if found else ""


def _tick_of(page: str, title: str) -> str:
    """The value of the meetings list's tick in the row of the meeting titled ``title``; "" for none."""
    row = next((r for r in page.split("<tr>") if f">{title}</a>" in r), "")
    found = re.search(r'<input type="checkbox" name="id" value="([^"]+)"', row)
    return found.group(1) if found else ""


async def _restorable_with_mail(web_client, smtp_server, tmp_path) -> tuple:
    """A daemon on a library restored_pair() made (its meeting exported and indexed), mail on, to a real SMTP server:
    (the library's folder, the meeting's id and uuid, the two meetings' texts, the web client, the core)."""
    lib = tmp_path / "swapped"
    sid, uuid, fine, secret = restored_pair(lib)
    server = await asyncio.to_thread(smtp_server, "none", False)
    client, core = await web_client(lib, **{"export.formats": ["txt", "json"], "email.enabled": True,
                                            "email.smtp_host": "127.0.0.1", "email.smtp_port": server.port,
                                            "email.sender": "steno@recorder.example"})
    await _exported_and_indexed(client, core, uuid, tmp_path / "exports")
    return lib, sid, uuid, fine, secret, client, core


async def _exported_and_indexed(client, core, uuid: str, folder) -> None:
    """Meeting A exported once (a row in the export history) and its words in the search index."""
    from tests.parts import until
    r = await client.post("/api/v1/exports", json={"sessions": [uuid], "formats": ["txt"], "target": str(folder)},
                          headers={"X-CSRF-Token": await csrf(client)})
    assert r.status == 202, await r.text()
    job = (await r.json())["id"]

    async def finished() -> bool:
        return (await (await client.get(f"/api/v1/jobs/{job}")).json())["state"] in ("completed", "failed")
    await until(finished, "the export to finish", 60)
    assert (await (await client.get(f"/api/v1/jobs/{job}")).json())["state"] == "completed"

    async def indexed() -> bool:
        return any(m.uuid == uuid for m in (await core.search("Lunch")).sessions)
    await until(indexed, "the meeting in the search index", 60)


async def test_the_list_history_and_search_pages_open_that_meeting_only_after_a_restore(web_client, smtp_server,
                                                                                          tmp_path):
    """The meetings list's links and ticks (and what a tick reaches: the ZIP, the mail form and its "Send", the
    export "Send to" asks for), the export history's links and the search's name a meeting as its own page does:
    followed or submitted after the recorder's database was restored (the meeting's number another meeting's now),
    they answer 404 or 410, never the other meeting under this one's title."""
    import os

    lib, sid, uuid, fine, secret, client, core = await _restorable_with_mail(web_client, smtp_server, tmp_path)
    listing = await (await client.get("/")).text()
    history = await (await client.get("/history")).text()
    found = await (await client.get("/search", params={"q": "Lunch"})).text()
    links = [_link_to(listing, ALL_HANDS)] + re.findall(r'href="(/sessions/[^"#]+)', history + found)
    assert len(links) >= 5 and all(links), links       # list; history: title, "Download again"; search: title, line
    tick = _tick_of(listing, ALL_HANDS)
    assert tick, listing
    mail_page = await (await client.get("/email", params={"id": tick})).text()
    assert ALL_HANDS in mail_page
    mailed = re.findall(r'<input type="hidden" name="id" value="([^"]+)">', mail_page)
    assert len(mailed) == 1, mail_page
    token = await csrf(client)

    os.link(lib / "b.db", lib / "restoring.db")
    os.replace(lib / "restoring.db", lib / "silent_steno.db")       # (a restore: the file replaced whole)
    for link in links:
        r = await client.get(link)
        got = _judge_meeting("page", r.status, await r.read(), fine, secret)
        assert got in ("gone", "absent"), (link, r.status, got)
    for what, path in [("zip", f"/zip?id={tick}"), ("page", f"/email?id={tick}")]:
        r = await client.get(path)
        got = _judge_meeting(what, r.status, await r.read(), fine, secret)
        assert got in ("gone", "absent"), (path, r.status, got)
    r = await client.post("/email", allow_redirects=False, data=[("csrf", token), ("recipients", "a@example.org")]
                          + [("id", k) for k in mailed])                        # the mail form's "Send"
    assert r.status in (404, 410), (r.status, [e.subject for e in core.outbox.list()])
    r = await client.post("/api/v1/exports", headers={"X-CSRF-Token": token},  # as "Send to" asks (static/app.js)
                          json={"sessions": [int(tick) if tick.isdigit() else tick], "formats": ["txt"],
                                "target": str(tmp_path / "exports")})
    assert r.status in (404, 410), (r.status, await r.text())
    assert core.outbox.list() == []


async def test_the_list_history_and_search_pages_never_open_another_meeting_while_the_database_is_restored(
        web_client, smtp_server, tmp_path):
    """The recorder's database restored again and again (another recorder's backup: another meeting under the same
    session id) while clients open the meetings list, the export history or the search, and follow the meeting's
    link there or tick it and download the ZIP or open the mail form: every answer is that meeting's, 410 or 404;
    never the other meeting's (the pages named meetings by number: a restore between the page and the click opened
    the meeting that took it)."""
    import threading

    lib, sid, uuid, fine, secret, client, core = await _restorable_with_mail(web_client, smtp_server, tmp_path)
    ways = [("/", "link"), ("/", "zip"), ("/", "mail"), ("/history", "link"), ("/search?q=Lunch", "link")]
    counts = {"right": 0, "wrong": 0, "gone": 0, "absent": 0, "other": 0, "unlisted": 0}
    wrong: list[str] = []

    async def clicker(n: int, offset: int) -> None:
        for i in rounds(n, swaps):
            source, way = ways[(i + offset) % len(ways)]
            page = await (await client.get(source)).text()
            if way == "link":
                what, path = "page", _link_to(page, ALL_HANDS)
            else:
                tick = _tick_of(page, ALL_HANDS)
                what, path = ("zip", f"/zip?id={tick}") if way == "zip" else ("page", f"/email?id={tick}")
                path = path if tick else ""
            if not path:                # (the page was made from B's database, or the index of the moment)
                counts["unlisted"] += 1
                continue
            r = await client.get(path)
            got = _judge_meeting(what, r.status, await r.read(), fine, secret)
            counts[got] += 1
            if got in ("wrong", "other"):
                wrong.append(f"{source} -> {path}: {r.status}")

    stop, swaps = threading.Event(), [0]
    swapper = threading.Thread(target=restoring, args=(lib, stop, swaps))
    swapper.start()
    try:
        await asyncio.gather(*(clicker(30, k) for k in range(4)))
    finally:
        stop.set()
        await asyncio.to_thread(swapper.join)
    followed = sum(counts.values()) - counts["unlisted"]
    assert swaps[0] > 100 and counts["right"] > 0 and followed >= 30, (swaps, counts)
    assert counts["wrong"] == 0, (counts, wrong[:10])
    assert counts["other"] == 0, (counts, wrong[:10])
    assert sum(counts.values()) == 4 * 30, counts


async def test_the_lists_links_and_ticks_name_each_meeting_alone_whatever_its_uuid(web_client, tmp_path):
    """A meeting whose uuid cannot name it alone keeps its id in the list's links and ticks (two sessions sharing a
    uuid; a uuid of digits, which a URL reads as an id; one the key rule cannot take; none), the others their uuid:
    every link opens the meeting of its row, every tick mails that meeting's title."""
    from tests.recorder_db import RecorderDB, loose_schema

    rec = RecorderDB(tmp_path / "odd", schema=loose_schema())
    ids = {"Plain": rec.session(title="Plain", uuid="ABCDEF12-1111-4222-8333-000000000abc"),
           "Twin one": rec.session(title="Twin one", uuid="0badc0de-1111-4222-8333-000000000001"),
           "Twin two": rec.session(title="Twin two", uuid="0badc0de-1111-4222-8333-000000000001"),
           "Digits": rec.session(title="Digits", uuid="1"),
           "Digits of none": rec.session(title="Digits of none", uuid="424242"),
           "Blank": rec.session(title="Blank", uuid=" with blanks "),
           "None": rec.session(title="None", uuid=None),
           "Eight": rec.session(title="Eight", uuid="abcdef12")}     # (Plain's short id: its own uuid wins)
    rec.close()
    client, core = await web_client(rec.root, **{"email.enabled": True, "email.smtp_host": "127.0.0.1",
                                                 "email.sender": "steno@recorder.example"})
    page = await (await client.get("/")).text()
    keys = {t: _link_to(page, t).removeprefix("/sessions/") for t in ids}
    assert keys == {"Plain": "ABCDEF12-1111-4222-8333-000000000abc", "Twin one": str(ids["Twin one"]),
                    "Twin two": str(ids["Twin two"]), "Digits": str(ids["Digits"]),
                    "Digits of none": str(ids["Digits of none"]), "Blank": str(ids["Blank"]),
                    "None": str(ids["None"]), "Eight": "abcdef12"}, keys
    for title, key in keys.items():
        shown = await (await client.get(f"/sessions/{key}")).text()
        assert f"<h1>{title}</h1>" in shown, (title, key)
        tick = _tick_of(page, title)
        if tick:
            assert tick == key, (title, tick)
            chosen = await (await client.get("/email", params={"id": tick})).text()
            assert re.findall(r'name="id" value="([^"]+)">([^<]*) <span', chosen) == [(key, title)], (title, tick)
