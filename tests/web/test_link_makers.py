"""A share link knows what made it: a browser login (which one) or the recorder itself (touchscreen, D-Bus, CLI).
"Log out everywhere", a new password and revoking a browser revoke the links those logins made, and cut the
downloads under them; links made at the recorder stay. Real Core and app; guests are fresh browsers."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import pytest

from steno_exportd import config
from steno_exportd.access.passwords import hash_password
from steno_exportd.mail import sender
from tests.parts import until
from tests.web.helpers import PASSWORD, PASSWORD_HASH, anonymous, login_form, slow_download, with_audio
from tests.web.test_logins import page_token
from tests.web.test_pairing import pair
from tests.web.test_share_caps import BIG, cut_then_refused, make_link

CLOSED = {"http.auth.mode": "password"}
PW = {**CLOSED, "http.auth.password_hash": PASSWORD_HASH}


async def guest_status(client, token: str) -> int:
    """What a guest with the link gets for the recording."""
    guest = await anonymous(client)
    try:
        r = await guest.get(f"/s/{token}/audio")
        await r.read()
        return r.status
    finally:
        await guest.session.close()


async def browsers(client, core, sid: int) -> tuple:
    """A browser logged in with the password and a paired one, each with a link it made; a link made on the
    touchscreen (the core's call, as D-Bus makes it)."""
    by_password, by_pairing = await anonymous(client), await anonymous(client)
    assert (await login_form(by_password, PASSWORD)).status == 303
    assert (await pair(by_pairing, core.start_pairing().code)).status == 303
    links = {"password": await make_link(by_password, sid, max_downloads=50),
             "pairing": await make_link(by_pairing, sid, max_downloads=50),
             "device": (await core.access.create_link(core.cfg, sid, "", 50)).public()}
    return by_password, by_pairing, links


# what each way of ending logins leaves usable: 200 (the link works) or 410 (revoked)
ENDS = {"logout": {"password": 200, "pairing": 200, "device": 200},      # its user gave the links out
        "everywhere": {"password": 410, "pairing": 410, "device": 200},
        "new password": {"password": 410, "pairing": 200, "device": 200},
        "new password in the config": {"password": 410, "pairing": 200, "device": 200},
        "browser revoked": {"password": 410, "pairing": 200, "device": 200},
        "new password in the config while stopped": {"password": 410, "pairing": 200, "device": 200}}


@pytest.mark.parametrize("how", list(ENDS))
async def test_links_made_by_browsers_end_with_their_logins_and_links_made_at_the_recorder_stay(
        web_client, sessions, caplog, how):
    in_config = how.startswith("new password in the config")
    client, core = await web_client(**(PW if in_config else CLOSED))
    if not in_config:
        await core.set_web_password(PASSWORD)
    s = with_audio(sessions)
    by_password, by_pairing, links = await browsers(client, core, s.id)
    try:
        caplog.set_level(logging.INFO, logger="steno_exportd")
        if how in ("logout", "everywhere"):
            r = await by_password.post("/logout", allow_redirects=False, data={
                "csrf": await page_token(by_password), **({"everywhere": "1"} if how == "everywhere" else {})})
            assert r.status == 303
        elif how == "new password":
            await core.set_web_password("another good password")
        elif how == "new password in the config":
            await core.reload(config.replace(core.cfg, **{"http.auth.password_hash": hash_password("changed")}))
        elif how == "new password in the config while stopped":     # edited, then a restart (no reload)
            await core.stop()
            client, core = await web_client(**{**PW, "http.auth.password_hash": hash_password("changed")})
        else:                                        # the touchscreen revokes the browser logged in by password
            (login,) = [x for x in await core.paired_browsers() if x.kind == "password"]
            await core.revoke_browser(login.id)
        got = {k: await guest_status(client, v["token"]) for k, v in links.items()}
        assert got == ENDS[how], how
        revoked = sum(1 for v in ENDS[how].values() if v == 410)
        if revoked:
            assert f"{revoked} share links" in caplog.text, caplog.text
    finally:
        await by_password.session.close()
        await by_pairing.session.close()


async def test_the_page_and_the_api_say_what_made_each_link(web_client, sessions):
    client, core = await web_client(**CLOSED)
    await core.set_web_password(PASSWORD)
    s = with_audio(sessions)
    by_password, by_pairing, links = await browsers(client, core, s.id)
    try:
        listed = {x["token"]: x for x in await (await by_pairing.get(f"/api/v1/sessions/{s.id}/share-links")).json()}
        assert {k: listed[v["token"]]["made_by"] for k, v in links.items()} == \
            {"password": "password", "pairing": "pairing", "device": "device"}
        (mine,) = [x for x in await core.paired_browsers() if x.kind == "pairing"]
        assert listed[links["pairing"]["token"]]["made_by_login"] == mine.id
        page = await (await by_password.get(f"/sessions/{s.id}")).text()
        assert page.count("Made by this browser") == 1 and page.count("Made by a paired browser") == 1
        assert page.count("Made by the recorder (touchscreen, D-Bus or CLI)") == 1
    finally:
        await by_password.session.close()
        await by_pairing.session.close()


async def test_a_download_under_a_link_made_by_a_copied_cookie_stops_at_log_out_everywhere(web_client, own_lib):
    """The copier's guest reads a large recording slowly; the owner logs out everywhere: the download is cut
    (the link is revoked, as when revoked by hand) and a retry from where it stopped is refused."""
    from tests.web.test_hostile_files import grow, recordings
    sid, path = next(iter(recordings(own_lib).items()))
    grow(path, BIG)
    client, core = await web_client(own_lib, **CLOSED)
    await core.set_web_password(PASSWORD)
    owner, thief = await anonymous(client), await anonymous(client)
    try:
        assert (await login_form(owner, PASSWORD)).status == 303
        thief.session.cookie_jar.update_cookies(
            {"steno_session": next(c.value for c in owner.session.cookie_jar if c.key == "steno_session")})
        link = await make_link(thief, sid, max_downloads=5)
        download = await slow_download(client.server.port, f"{link['url']}/audio")

        async def everywhere() -> None:
            r = await owner.post("/logout", data={"csrf": await page_token(owner), "everywhere": "1"},
                                 allow_redirects=False)
            assert r.status == 303
        await cut_then_refused(client, f"{link['url']}/audio", download, everywhere, "revoked")
    finally:
        await owner.session.close()
        await thief.session.close()


async def test_links_made_while_no_login_was_needed_end_with_log_out_everywhere(web_client, sessions):
    """Any guest on the LAN could make a link while http.auth.mode was "none"; the owner who then sets a password
    and logs out everywhere (the action of someone who suspects a leak) ends those links too."""
    client, core = await web_client()                       # no login: the page makes links for anyone
    s = with_audio(sessions)
    guest = await anonymous(client)
    try:
        token = (await make_link(guest, s.id, max_downloads=50))["token"]
    finally:
        await guest.session.close()
    device = (await core.access.create_link(core.cfg, s.id, "", 50)).public()["token"]
    await core.stop()
    client, core = await web_client(**PW)                   # the admin closes the page: a restart with a password
    owner = await anonymous(client)
    try:
        assert (await login_form(owner, PASSWORD)).status == 303
        assert await guest_status(client, token) == 200
        r = await owner.post("/logout", allow_redirects=False,
                             data={"csrf": await page_token(owner), "everywhere": "1"})
        assert r.status == 303
        assert (await guest_status(client, token), await guest_status(client, device)) == (410, 200)
    finally:
        await owner.session.close()


# mail to a real SMTP server; every recording is over the limit, so a message carries a share link instead
MAIL = {"email.enabled": True, "email.smtp_host": "127.0.0.1", "email.sender": "steno@recorder.example",
        "email.max_message_mb": 0.01, "email.oversize": "link"}
MAILED_LINK = re.compile(r"/s/([A-Za-z0-9_-]{24})/audio\?dl=1")


async def ask_mail(browser, route: str, sid: int, to: str, core, server) -> None:
    """The browser asks for session ``sid``'s recording by mail to ``to``: by the session page's form, the API,
    the list page's selection form, or the outbox page's "Send again" of a message that failed."""
    token = await page_token(browser)
    if route == "api":
        r = await browser.post(f"/api/v1/sessions/{sid}/email", headers={"X-CSRF-Token": token},
                               json={"recipients": [to], "formats": ["audio"]})
        assert r.status == 202, await r.text()
        return
    if route == "retry":
        server.handler.data_answers = ["554 5.7.1 refused by policy"]
        entry = await core.email_sessions([sid], ["audio"], [to])
        await until(lambda: core.outbox.get(entry.id).state == "failed", "the message failed", in_thread=False)
        path, fields = f"/email/outbox/{entry.id}/retry", []
    else:
        path, fields = {"form": (f"/sessions/{sid}/email", []), "selection": ("/email", [("id", str(sid))])}[route]
        fields += [("recipients", to), ("formats", "audio")]
    r = await browser.post(path, allow_redirects=False, data=[("csrf", token), *fields])
    assert r.status == 303, await r.text()


@pytest.mark.parametrize("route, how", [("form", "everywhere"), ("api", "everywhere"), ("selection", "everywhere"),
                                        ("retry", "everywhere"), ("form", "new password")])
async def test_a_link_mailed_for_a_copied_cookie_ends_with_its_login_and_one_mailed_at_the_recorder_stays(
        web_client, smtp_server, sessions, route, how):
    """A copied cookie has the recording mailed out (too large to attach: the mail carries a share link), or a
    failed message sent again; the owner logs out everywhere or sets a new password: that link no longer serves
    the recording. A mail asked for at the recorder (the core's call, as D-Bus and the schedules make it) keeps
    its link."""
    server = await asyncio.to_thread(smtp_server, "none", False)
    client, core = await web_client(**CLOSED, **MAIL, **{"email.smtp_port": server.port})
    core.set_web_url(f"http://127.0.0.1:{client.server.port}")      # what serve() tells the daemon's core
    await core.set_web_password(PASSWORD)
    s = with_audio(sessions)
    task = asyncio.create_task(sender.run(core))
    owner, thief = await anonymous(client), await anonymous(client)
    try:
        assert (await login_form(owner, PASSWORD)).status == 303
        thief.session.cookie_jar.update_cookies(
            {"steno_session": next(c.value for c in owner.session.cookie_jar if c.key == "steno_session")})
        await ask_mail(thief, route, s.id, "eve@example.org", core, server)
        await core.email_sessions([s.id], ["audio"], ["owner@example.org"])
        await until(lambda: len(server.received) == 2, "both mails at the server", timeout=60, in_thread=False)
        tokens = {m.rcpt_tos[0]: MAILED_LINK.search(m.text()).group(1) for m in server.received}
        assert {to: await guest_status(client, t) for to, t in tokens.items()} == \
            {"eve@example.org": 200, "owner@example.org": 200}
        if how == "everywhere":
            r = await owner.post("/logout", allow_redirects=False,
                                 data={"csrf": await page_token(owner), "everywhere": "1"})
            assert r.status == 303
        else:
            await core.set_web_password("another good password")
        assert {to: await guest_status(client, t) for to, t in tokens.items()} == \
            {"eve@example.org": 410, "owner@example.org": 200}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await owner.session.close()
        await thief.session.close()
