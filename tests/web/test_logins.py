"""Every way a login should end: logout, a password change, "log out everywhere", a restart that keeps only
what was valid; a copied cookie dies with it."""
from __future__ import annotations

import re

from steno_exportd import config
from steno_exportd.access.passwords import hash_password
from tests.web.helpers import PASSWORD, PASSWORD_HASH, anonymous, login_form

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
