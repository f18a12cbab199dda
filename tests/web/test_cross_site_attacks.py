"""A web page elsewhere, opened by a user on the LAN, and a logged-in browser whose cookie was copied: what they
could still read or change. Real requests to the real app; Chromium where the browser's own behaviour matters."""
from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import threading
import time
import urllib.request

import pytest

from tests.parts.chromium import chromium_page  # noqa: F401
from tests.parts import wait_for
from tests.web.helpers import PASSWORD, PASSWORD_HASH, anonymous, csrf, login_form, raw, request, with_audio
from tests.web.test_hostile_files import recordings
from tests.web.test_share_caps import make_link

CLOSED = {"http.auth.mode": "password"}          # the shipped default: the password set from a browser or the UI


async def test_private_answers_are_never_kept_by_a_cache(web_client, sessions):
    """Meeting data (API JSON, downloads, a share link's download) goes to no browser or proxy cache: a proxy
    would hand a share link's file on after its revocation, a browser its meetings after logout."""
    client, _ = await web_client()
    s = with_audio(sessions)
    link = await make_link(client, s.id, max_downloads=5)
    port = client.server.port
    cookies = "; ".join(f"{c.key}={c.value}" for c in client.session.cookie_jar)
    for path in ("/api/v1/sessions", f"/api/v1/sessions/{s.id}", f"/api/v1/sessions/{s.id}/share-links",
                 "/api/v1/jobs", "/api/v1/status", f"/api/v1/sessions/{s.id}/audit", "/api/v1/nope",
                 f"/sessions/{s.id}/audio", f"/sessions/{s.id}/download/txt", f"/sessions/{s.id}/zip",
                 f"/zip?id={s.id}", f"/s/{link['token']}/audio", f"/s/{link['token']}/zip"):
        status, headers, _ = await raw(port, request("GET", path, port, {"Cookie": cookies}))
        assert status in (200, 404), (path, status)
        assert "no-store" in headers.get("cache-control", ""), (path, headers.get("cache-control"))
    status, headers, _ = await raw(port, request("GET", "/static/app.js", port))      # the same for everyone
    assert status == 200 and "no-store" not in headers.get("cache-control", "")


async def test_a_copied_cookie_cannot_change_the_password(web_client):
    """Whoever copied a logged-in cookie must not turn it into the password: set a new one, the owner is locked
    out and "log out everywhere" no longer ends the copier's access (they log in again)."""
    client, core = await web_client(**CLOSED)
    await core.set_web_password(PASSWORD)
    owner = await anonymous(client)
    thief = await anonymous(client)
    try:
        assert (await login_form(owner, PASSWORD)).status == 303
        thief.session.cookie_jar.update_cookies(
            {"steno_session": next(c.value for c in owner.session.cookie_jar if c.key == "steno_session")})
        token = await csrf(thief)
        r = await thief.post("/password", data={"csrf": token, "password": "the thief's own",
                                                "again": "the thief's own"}, allow_redirects=False)
        assert r.status == 403 and "current password" in await r.text(), r.status
        r = await thief.post("/password", data={"csrf": token, "current": "a guess at it",
                                                "password": "the thief's own", "again": "the thief's own"},
                             allow_redirects=False)
        assert r.status == 403 and "current password" in await r.text(), r.status
        other = await anonymous(client)
        try:
            assert (await login_form(other, PASSWORD)).status == 303        # the owner's password still works
            assert (await login_form(other, "the thief's own")).status == 401
        finally:
            await other.session.close()
        # the owner, who knows it, still changes it from the page
        r = await owner.post("/password", data={"csrf": await csrf(owner), "current": PASSWORD,
                                                "password": "a better one 2", "again": "a better one 2"},
                             allow_redirects=False)
        assert r.status == 303, await r.text()
        assert (await login_form(owner, "a better one 2")).status == 303
    finally:
        await owner.session.close()
        await thief.session.close()



async def test_a_copied_cookie_keeps_no_access_through_a_share_link_it_made(web_client, sessions):
    """Whoever copied a logged-in cookie makes a share link (a year, 1000 downloads) before the owner notices:
    "log out everywhere" and a new password end the cookie, but the link still hands out the meeting."""
    client, core = await web_client(**CLOSED)
    await core.set_web_password(PASSWORD)
    s = with_audio(sessions)
    owner, thief = await anonymous(client), await anonymous(client)
    try:
        assert (await login_form(owner, PASSWORD)).status == 303
        thief.session.cookie_jar.update_cookies(
            {"steno_session": next(c.value for c in owner.session.cookie_jar if c.key == "steno_session")})
        link = await make_link(thief, s.id, hours=24 * 366, max_downloads=1000)
        r = await owner.post("/logout", data={"csrf": await csrf(owner), "everywhere": "1"}, allow_redirects=False)
        assert r.status == 303
        await core.set_web_password("the owner's new one")
        assert (await thief.get("/api/v1/sessions")).status == 401          # the cookie is dead ...
        r = await thief.get(f"/s/{link['token']}/audio")
        assert r.status == 410, f"... but its share link still serves the recording ({r.status})"
    finally:
        await owner.session.close()
        await thief.session.close()


# what Chromium sends when a page of another site makes the user's browser ask: an <img>, <audio> or
# fetch(no-cors), an <iframe>, a link the user follows (the page cannot read any answer: no CORS)
FROM_ELSEWHERE = {
    "img": {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image",
            "Referer": "http://evil.example/"},
    "iframe": {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    "link": {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
             "Sec-Fetch-User": "?1"}}
OWN_PAGE = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
TYPED = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}    # or bookmarked


def downloads_of(sid: int) -> list[str]:
    return [f"/sessions/{sid}/audio?dl=1", f"/sessions/{sid}/download/txt", f"/sessions/{sid}/zip", f"/zip?id={sid}"]


async def test_a_page_elsewhere_adds_no_download_to_the_audit_log_while_the_page_needs_no_login(
        web_client, sessions, caplog):
    """http.auth.mode = "none": no cookie stands between another site's page and the recorder's downloads. What
    it makes the user's browser ask for is refused (one log line for many), and the session's audit log lists
    only the downloads the user made: from the page itself, typed or bookmarked, or by a share link (opened
    from a mail or a chat, elsewhere by design)."""
    client, core = await web_client()
    s = with_audio(sessions)
    port = client.server.port
    caplog.set_level(logging.INFO, logger="steno_exportd")
    got = {}
    for _ in range(3):
        for kind, headers in FROM_ELSEWHERE.items():
            for path in downloads_of(s.id):
                status, _, body = await raw(port, request("GET", path, port, headers))
                got[kind, path] = status, b"another site" in body
    audit = await (await client.get(f"/api/v1/sessions/{s.id}/audit")).json()
    assert audit == [], f"downloads another site asked for are in the audit log: {audit[:4]}"
    assert set(got.values()) == {(403, True)}, got
    assert len([r for r in caplog.records if "cross-site GET" in r.getMessage()]) == 1, caplog.text

    # a link from elsewhere to the page itself opens it
    assert (await raw(port, request("GET", f"/sessions/{s.id}", port, FROM_ELSEWHERE["link"])))[0] == 200
    for headers in (OWN_PAGE, TYPED, {}):          # {}: a client that sends no fetch metadata (curl, an old browser)
        assert (await raw(port, request("GET", f"/sessions/{s.id}/audio?dl=1", port, headers)))[0] == 200
    link = await make_link(client, s.id, max_downloads=5)
    assert (await raw(port, request("GET", f"/s/{link['token']}/audio", port, FROM_ELSEWHERE["link"])))[0] == 200
    audit = await (await client.get(f"/api/v1/sessions/{s.id}/audit")).json()
    assert sorted(x["via"][:10] for x in audit) == ["page"] * 3 + ["share link"], audit


async def test_a_share_links_token_is_never_written_whole_into_the_log(web_client, sessions, caplog):
    """A share link's PIN form posted from another site's page is refused and logged: the log names the link by
    the first 6 characters of its token, as every other line does, never the whole token (the journal is read by
    admins the link was never given to)."""
    client, core = await web_client()
    s = with_audio(sessions)
    port = client.server.port
    caplog.set_level(logging.INFO, logger="steno_exportd")
    link = await make_link(client, s.id, max_downloads=5, pin="482113")
    token = link["token"]
    status, _, _ = await raw(port, request("POST", f"/s/{token}", port,
                                           {"Origin": "http://evil.example", "Content-Type":
                                            "application/x-www-form-urlencoded", "Content-Length": "10"},
                                           b"pin=482113"))
    assert status == 403
    lines = [r.getMessage() for r in caplog.records]
    assert [x for x in lines if "cross-site POST /s/" + token[:6] in x], lines
    assert not [x for x in lines if token in x], lines


# Chromium last: its (module-scoped) Playwright loop would stop the async tests above from starting theirs
def test_after_logout_the_browser_does_not_play_a_recording_from_its_cache(web_daemon, own_lib, chromium_page):
    """A shared computer: the user listened to a meeting and logged out; the next person opens the recording's
    address from the history. It must be the login page, not the meeting from Chromium's cache."""
    sid, path = next(iter(recordings(own_lib).items()))
    month = time.time() - 30 * 86400            # recorded a month ago: a cache may keep it for days (RFC 9111 4.2.2)
    os.utime(path, (month, month))
    d = web_daemon(own_lib, **{"http.auth.mode": '"password"', "http.auth.password_hash": f'"{PASSWORD_HASH}"'})
    page = chromium_page
    page.context.clear_cookies()
    page.goto(d.url + "/")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(d.url + "/")
    audio = f"{d.url}/sessions/{sid}/audio"
    assert page.goto(audio).status == 200
    page.goto(d.url + "/")
    page.click("form[action='/logout'] button[type=submit]")
    page.wait_for_url("**/login")
    page.goto(audio)
    assert "/login" in page.url, f"after logout Chromium still shows {page.url} (from its cache)"


class _EvilPage(http.server.BaseHTTPRequestHandler):
    """Another site's page: it makes the visitor's browser ask the recorder for downloads."""
    html = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def evil_site(html: str):
    """The page on a host of its own (127.0.0.2: another site to Chromium than the recorder's 127.0.0.1)."""
    handler = type("Evil", (_EvilPage,), {"html": html.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_page_elsewhere_opened_in_chromium_adds_no_download_to_the_audit_log(web_daemon, own_lib, chromium_page):
    """The real daemon with no login (mode "none", its default on loopback); the user opens another site's page
    in Chromium; it embeds the recorder's downloads. The audit log a user reads stays empty."""
    sid = next(iter(recordings(own_lib)))
    d = web_daemon(own_lib)
    tags = "".join(f'<img src="{d.url}{p}">' for p in downloads_of(sid))
    tags += f'<iframe src="{d.url}/sessions/{sid}/zip"></iframe>'
    tags += f'<script>fetch("{d.url}/sessions/{sid}/download/txt", {{mode: "no-cors"}}).finally(() => ' \
            'document.title = "fetched")</script>'
    with evil_site(f"<!doctype html><title>cats</title>{tags}") as url:
        chromium_page.goto(url, wait_until="load")
        chromium_page.wait_for_function("document.title === 'fetched'", timeout=30_000)

    def audit() -> list:
        with urllib.request.urlopen(f"{d.url}/api/v1/sessions/{sid}/audit", timeout=30) as r:
            return json.loads(r.read())
    wait_for(lambda: audit() or "cross-site GET" in d.log(), timeout=30, what="the requests at the daemon")
    assert audit() == [], f"downloads another site asked for are in the audit log: {audit()}\n{d.log()[-3000:]}"
    assert d.log().count("cross-site GET") == 1, d.log()

