"""A web page elsewhere, opened by a user on the LAN, and a logged-in browser whose cookie was copied: what they
could still read or change. Real requests to the real app; Chromium where the browser's own behaviour matters."""
from __future__ import annotations

import os
import time

import pytest

from tests.parts.chromium import chromium_page  # noqa: F401
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
