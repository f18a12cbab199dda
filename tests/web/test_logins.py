"""Every way a login should end: logout, a password change, "log out everywhere", a restart that keeps only
what was valid; a copied cookie dies with it, and so do the downloads and event streams it holds open."""
from __future__ import annotations

import asyncio
import re

import pytest

from steno_exportd import config
from steno_exportd.access.passwords import hash_password
from tests.web.helpers import (PASSWORD, PASSWORD_HASH, anonymous, leave, login_form, read_on, slow_download,
                               with_audio)

PW = {"http.auth.mode": "password", "http.auth.password_hash": PASSWORD_HASH}


def cookie(client) -> str:
    return next(c.value for c in client.session.cookie_jar if c.key == "steno_session")


async def works(client, value: str) -> bool:
    """Does this cookie, copied into a fresh browser, open the API?"""
    other = await anonymous(client)
    try:
        other.session.cookie_jar.update_cookies({"steno_session": value})
        status = (await other.get("/api/v1/sessions")).status
        assert status in (200, 401), status
        return status == 200
    finally:
        await other.session.close()


async def logged_in(client) -> tuple[object, str]:
    browser = await anonymous(client)
    r = await login_form(browser, PASSWORD)
    assert r.status == 303, await r.text()
    return browser, cookie(browser)


async def page_token(browser) -> str:
    html = await (await browser.get("/devices")).text()
    return re.search(r'<meta name="csrf" content="([^"]+)">', html).group(1)


async def test_a_copied_cookie_dies_at_logout(web_client):
    client, _ = await web_client(**PW)
    browser, value = await logged_in(client)
    assert await works(client, value)
    r = await browser.post("/logout", data={"csrf": await page_token(browser)}, allow_redirects=False)
    assert r.status == 303
    assert not await works(client, value)
    await browser.session.close()


async def test_a_password_change_ends_every_login(web_client):
    client, core = await web_client(**PW)
    browser, value = await logged_in(client)
    new = hash_password("another good password")
    await core.reload(config.replace(core.cfg, **{"http.auth.password_hash": new}))
    assert not await works(client, value)
    assert (await browser.get("/api/v1/sessions")).status == 401
    assert (await login_form(browser, PASSWORD)).status == 401
    assert (await login_form(browser, "another good password")).status == 303
    await browser.session.close()


async def test_log_out_everywhere_ends_every_login(web_client):
    client, _ = await web_client(**PW)
    (a, va), (b, vb) = await logged_in(client), await logged_in(client)
    r = await a.post("/logout", data={"csrf": await page_token(a), "everywhere": "1"}, allow_redirects=False)
    assert r.status == 303
    assert not await works(client, va) and not await works(client, vb)
    await a.session.close()
    await b.session.close()


async def test_a_restart_keeps_valid_logins_and_only_those(web_client):
    client, _ = await web_client(**PW)
    keep, kept = await logged_in(client)
    gone, ended = await logged_in(client)
    await gone.post("/logout", data={"csrf": await page_token(gone)}, allow_redirects=False)
    await keep.session.close()
    await gone.session.close()
    restarted, _ = await web_client(**PW)                  # a new core and page on the same state dir
    assert await works(restarted, kept)
    assert not await works(restarted, ended)
    changed, _ = await web_client(**{**PW, "http.auth.password_hash": hash_password("changed while stopped")})
    assert not await works(changed, kept)                  # the password changed while the daemon was down


async def end_login(how: str, client, core, browser) -> None:
    """End the browser's login the way a user (or the touchscreen, over D-Bus: the same core calls) does."""
    if how == "logout":
        r = await browser.post("/logout", data={"csrf": await page_token(browser)}, allow_redirects=False)
        assert r.status == 303
    elif how == "everywhere":
        other, _ = await logged_in(client)
        r = await other.post("/logout", data={"csrf": await page_token(other), "everywhere": "1"},
                             allow_redirects=False)
        assert r.status == 303
        await other.session.close()
    elif how == "new password":                       # the touchscreen's SetWebPassword
        await core.set_web_password("another good password")
    elif how == "new password in the config":        # edited, then systemctl reload
        await core.reload(config.replace(core.cfg, **{"http.auth.password_hash": hash_password("changed")}))
    elif how == "browser revoked":                    # the touchscreen's RevokeBrowser
        (login,) = await core.paired_browsers()
        await core.revoke_browser(login.id)


@pytest.mark.parametrize("how", ["logout", "everywhere", "new password", "new password in the config",
                                 "browser revoked"])
async def test_a_download_and_the_event_stream_end_with_their_login(web_client, own_lib, how):
    """A copied cookie downloads a large recording slowly and follows the live events; the login ends. The
    download went on to its last byte and the event stream stayed open (keepalives every 15 s, every job)."""
    from tests.web.test_hostile_files import grow, recordings
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, 64 << 20)
    if how == "new password in the config":
        client, core = await web_client(own_lib, **PW)
    else:
        client, core = await web_client(own_lib, **{"http.auth.mode": "password"})
        await core.set_web_password(PASSWORD)
    browser, value = await logged_in(client)
    port = client.server.port
    opened = []
    try:
        opened.append(reader := await slow_download(port, f"/sessions/{sid}/audio", value))
        opened.append(events := await slow_download(port, "/api/v1/events", value, first=0))
        assert reader[2] == events[2] == "HTTP/1.1 200 OK"
        length = reader[3]
        await end_login(how, client, core, browser)
        after, ended = await read_on(reader[0], length - (1 << 20))
        _, stream_ended = await read_on(events[0], 1 << 20, timeout=5)
    finally:
        for _, writer, _, _ in opened:
            leave(writer, reset=True)
        await browser.session.close()
    assert (ended and after < 8 << 20, stream_ended) == (True, True), \
        f"{after >> 20} MiB of {length >> 20} read after the login ended; event stream ended: {stream_ended}"
    assert not await works(client, value)


async def pdf_asked_then_logged_out(client, browser, value: str, sid: int, held, release) -> bytes:
    """The raw answer to a PDF asked for with this login's cookie, the user logging out once ``held()`` (the PDF's
    render or open is held) and ``release`` (a threading.Event) set after."""
    from tests.parts import until
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(f"GET /sessions/{sid}/download/pdf HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Cookie: steno_session={value}\r\nConnection: close\r\n\r\n".encode())
        await until(held, "the PDF to be held", timeout=60, in_thread=False)
        r = await browser.post("/logout", data={"csrf": await page_token(browser)}, allow_redirects=False)
        assert r.status == 303
        release.set()
        return await asyncio.wait_for(reader.read(), 60)
    finally:
        release.set()
        leave(writer, reset=True)
        await browser.session.close()


@pytest.mark.parametrize("cache_mb", [256, 0], ids=["cached", "cache-off"])
async def test_a_document_whose_login_ended_while_it_was_rendered_is_not_sent(web_client, own_lib, monkeypatch,
                                                                              cache_mb):
    """THREATS: a copied cookie keeps no access after logout. It asks for a meeting's PDF not made before (a
    render of minutes for a long meeting); the user logs out while it is rendered. When the render ends, that
    request gets a 401 and not one byte of the PDF (the render itself is kept for the cache)."""
    from tests.web.helpers import held_renders
    from tests.web.test_hostile_files import recordings

    submitted, release = held_renders(monkeypatch)              # the render is held until the login has ended
    sid = next(iter(recordings(own_lib)))
    client, _ = await web_client(own_lib, **PW, **{"http.cache_max_mb": cache_mb})
    browser, value = await logged_in(client)
    answer = await pdf_asked_then_logged_out(client, browser, value, sid, lambda: bool(submitted), release)
    assert b"%PDF" not in answer and answer.startswith(b"HTTP/1.1 401"), answer[:300]
    assert not await works(client, value)


async def test_a_cached_document_whose_login_ended_while_it_was_opened_is_not_sent(web_client, own_lib, monkeypatch):
    """THREATS: a copied cookie keeps no access after logout. The PDF it asks for is opened from the render cache in
    a thread (which waits when the default threads are busy); the user logs out meanwhile. That request gets a 401,
    not the PDF (a small file is in the socket whole before the stream's watch has checked the login)."""
    import threading

    from tests.web.test_hostile_files import recordings

    from steno_exportd.web import downloads

    sid = next(iter(recordings(own_lib)))
    client, _ = await web_client(own_lib, **PW)
    browser, value = await logged_in(client)
    opening, go = threading.Event(), threading.Event()

    class HeldRef(downloads.SourceRef):         # the open is held until the user has logged out
        def open(self):
            opening.set()
            go.wait(60)
            return super().open()
    monkeypatch.setattr(downloads, "SourceRef", HeldRef)
    answer = await pdf_asked_then_logged_out(client, browser, value, sid, opening.is_set, go)
    assert b"%PDF" not in answer and answer.startswith(b"HTTP/1.1 401"), answer[:300]


async def test_a_share_link_guest_entering_the_right_pin_again_and_again_logs_no_browser_out(web_client, sessions,
                                                                                             monkeypatch):
    """Logins are capped (the least recently seen go first); a PIN entered on a share link's page is a login too.
    A colleague holding a link and its PIN re-entered it (the right PIN is never throttled) past the cap: every
    browser on the recorder was logged out, paired ones until the touchscreen paired them again. Her PINs may
    crowd out only the PIN grants of her own link."""
    from steno_exportd.access import store

    monkeypatch.setattr(store, "MAX_LOGINS", 30)        # the cap is 1,000: the same at a thirtieth of the guesses
    client, core = await web_client(**PW)
    browser, value = await logged_in(client)
    r = await browser.post(f"/api/v1/sessions/{with_audio(sessions).id}/share-links", json={"pin": "424242"},
                           headers={"X-CSRF-Token": await page_token(browser)})
    assert r.status == 201, await r.text()
    link = await r.json()
    guest = await anonymous(client)
    try:
        html = await (await guest.get(link["url"])).text()
        form = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        for _ in range(store.MAX_LOGINS + 5):
            r = await guest.post(link["url"], data={"pin": "424242", "csrf": form})
            assert r.status == 200 and "Download the meeting" in await r.text()
        assert await works(client, value)                                       # the browser is still logged in
        r = await guest.get(link["url"] + "/audio")                           # and the guest's last PIN holds
        assert r.status == 200 and len(await r.read()) == with_audio(sessions).audio.size
        held = await asyncio.to_thread(core.access.store.logins)
        assert len(held) <= store.MAX_LOGINS + 1, len(held)                     # nor does the table grow
    finally:
        await guest.session.close()
        await browser.session.close()
