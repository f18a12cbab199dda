"""Closed by default and pairing, on the web page: a code from the core logs one browser in, and only it; wrong,
used, expired and guessed codes fail (guessing goes through the one limiter); revoking a browser ends it at once;
a paired browser sets the web password. The real Core and app, an aiohttp client per browser (with its own
cookies); the D-Bus side and Chromium are in tests/dbus/test_access_dbus.py."""
from __future__ import annotations

import asyncio
import datetime
import re
import subprocess
import sys

from tests.web.attacker import guess
from tests.web.helpers import anonymous, csrf, login_form

CLOSED = {"http.auth.mode": "password"}          # the shipped default, no password set
LIMITS = {"http.auth.max_failed_logins": 5, "http.auth.max_failed_network": 12, "http.auth.max_failed_global": 30,
          "http.auth.lockout_seconds": 300}


async def pair(client, code: str):
    """Type a code into the pairing screen as the page does; the answer, not followed."""
    html = await (await client.get("/pair")).text()
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    return await client.post("/pair", data={"code": code, "csrf": token, "next": "/"}, allow_redirects=False)


async def sees_meetings(client, title: str) -> bool:
    r = await client.get("/", allow_redirects=False)
    return r.status == 200 and title in await r.text()


async def test_with_no_password_every_browser_sees_only_the_pairing_screen(web_client, sessions):
    client, _ = await web_client(**CLOSED)
    title = next(iter(sessions.values())).title
    r = await client.get("/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"].startswith("/login")
    page = await (await client.get("/login")).text()
    assert 'action="/pair"' in page and 'name="password"' not in page and title not in page
    r = await client.get("/api/v1/sessions")
    assert r.status == 401
    tok = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = await client.post("/login", data={"password": "anything at all", "csrf": tok}, allow_redirects=False)
    assert r.status == 401 and "No web password is set yet" in await r.text()


async def test_a_code_logs_in_that_browser_and_only_it(web_client, sessions):
    client, core = await web_client(**CLOSED)
    title = next(iter(sessions.values())).title
    other = await anonymous(client)
    try:
        offer = core.start_pairing()
        assert re.fullmatch(r"\d{4}-\d{4}", offer.code)
        r = await pair(client, offer.code)
        assert r.status == 303, await r.text()
        assert await sees_meetings(client, title)
        assert not await sees_meetings(other, title)             # the other browser is still outside
        r = await pair(other, offer.code)                          # ... and the used code does not let it in
        assert r.status == 401 and not await sees_meetings(other, title)
        browsers = await core.paired_browsers()
        assert [b.kind for b in browsers] == ["pairing"]
    finally:
        await other.session.close()


async def test_expired_replaced_and_wrong_codes_fail(web_client, sessions):
    client, core = await web_client(**{**CLOSED, "http.auth.pairing_minutes": 0.05})    # 3 seconds
    title = next(iter(sessions.values())).title
    offer = core.start_pairing()
    await asyncio.sleep(3.5)
    assert (await pair(client, offer.code)).status == 401              # expired
    first = core.start_pairing()
    second = core.start_pairing()
    assert (await pair(client, first.code)).status == 401              # replaced by a newer code
    wrong = f"{(int(second.code.replace('-', '')) + 1) % 10 ** 8:08d}"
    assert (await pair(client, wrong)).status == 401                   # a wrong one
    assert not await sees_meetings(client, title)
    assert (await pair(client, second.code.replace("-", " "))).status == 303     # typed with a space: fine
    assert await sees_meetings(client, title)


async def test_guessing_codes_is_limited_like_passwords(web_client, sessions):
    client, core = await web_client(**CLOSED, **LIMITS)
    offer = core.start_pairing()
    base = f"http://127.0.0.1:{client.server.port}"
    counts = await guess(base, ["127.0.0.1"] * 40, path="/pair", field="code", secret="0000-0000")
    assert counts[401] <= 5 and counts[429] == 40 - counts[401], counts
    many = [f"127.{20 + i // 200}.{i % 200}.1" for i in range(80)]           # 80 addresses, 80 networks
    counts2 = await guess(base, many, path="/pair", field="code", secret="0000-0000")
    assert counts[401] + counts2[401] <= 30 and counts2[401] + counts2[429] == 80, (counts, counts2)
    r = await pair(client, offer.code)             # even the right code waits now: a guesser cannot tell
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


async def test_a_revoked_browser_loses_access_at_once(web_client, sessions):
    client, core = await web_client(**CLOSED)
    title = next(iter(sessions.values())).title
    other = await anonymous(client)
    try:
        assert (await pair(client, core.start_pairing().code)).status == 303
        assert (await pair(other, core.start_pairing().code)).status == 303
        assert await sees_meetings(client, title) and await sees_meetings(other, title)
        page = await (await client.get("/browsers")).text()
        ids = re.findall(r'<tr data-id="([0-9a-f]+)"', page)
        assert len(ids) == 2 and "(this browser)" in page
        for b in await core.paired_browsers():     # times as the rest of the site shows them: in the browser's locale
            for t in (b.created, b.last_seen):
                assert f'<time datetime="{_iso(t)}" data-style="datetime">' in page
        mine = re.search(r'<tr data-id="([0-9a-f]+)">\s*<td>paired \(this browser\)', page).group(1)
        theirs = next(i for i in ids if i != mine)
        r = await client.post(f"/browsers/{theirs}/revoke", data={"csrf": await csrf(client)},
                              allow_redirects=False)
        assert r.status == 303
        assert not await sees_meetings(other, title)                    # at once: the very next request
        assert (await other.get("/api/v1/sessions")).status == 401
        assert await sees_meetings(client, title)
        await core.revoke_browser(mine)                                  # the touchscreen revokes this one
        assert not await sees_meetings(client, title)
    finally:
        await other.session.close()


async def test_a_paired_browser_sets_the_web_password_and_it_logs_in(web_client, sessions):
    client, core = await web_client(**CLOSED)
    title = next(iter(sessions.values())).title
    assert (await pair(client, core.start_pairing().code)).status == 303
    r = await client.post("/password", data={"csrf": await csrf(client), "password": "a new secret 1",
                                             "again": "a new secret 1"}, allow_redirects=False)
    assert r.status == 303, await r.text()
    assert await sees_meetings(client, title)                            # the paired login stays
    other = await anonymous(client)
    try:
        html = await (await other.get("/login")).text()
        tok = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        assert 'name="password"' in html
        r = await other.post("/login", data={"password": "wrong one", "csrf": tok}, allow_redirects=False)
        assert r.status == 401
        r = await other.post("/login", data={"password": "a new secret 1", "csrf": tok}, allow_redirects=False)
        assert r.status == 303 and await sees_meetings(other, title)
    finally:
        await other.session.close()
    # kept in the state dir: a restarted daemon (a new core on the same state) takes the same password
    client2, _ = await web_client(**CLOSED)
    html = await (await client2.get("/login")).text()
    tok = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    r = await client2.post("/login", data={"password": "a new secret 1", "csrf": tok}, allow_redirects=False)
    assert r.status == 303


async def test_a_copied_cookie_of_a_paired_browser_ends_with_a_password_change(web_client, sessions):
    """THREATS: a logged-in user whose cookie was copied must not keep access after a password change. A paired
    browser's cookie, copied, kept it: a password change ended only logins made with a password. Now it ends paired
    browsers' logins too, from the touchscreen (D-Bus, the core) or from the page; the browser pairs again or logs in
    with the new password. The first password set (by a paired browser, on a recorder that had none) still keeps the
    paired browsers: there was no password to change."""
    client, core = await web_client(**CLOSED)
    title = next(iter(sessions.values())).title
    paired, thief, other = await anonymous(client), await anonymous(client), await anonymous(client)
    try:
        assert (await pair(paired, core.start_pairing().code)).status == 303
        await core.set_web_password("the first one 1")              # the first password: paired browsers stay
        assert await sees_meetings(paired, title)
        thief.session.cookie_jar.update_cookies(
            {"steno_session": next(c.value for c in paired.session.cookie_jar if c.key == "steno_session")})
        assert await sees_meetings(thief, title)
        await core.set_web_password("the owner's new one")          # the touchscreen changes it
        assert not await sees_meetings(thief, title)
        assert (await thief.get("/api/v1/sessions")).status == 401
        assert not await sees_meetings(paired, title)
        # paired again, copied again; changed from the page this time (by a browser that knows it)
        assert (await pair(paired, core.start_pairing().code)).status == 303
        thief.session.cookie_jar.update_cookies(
            {"steno_session": next(c.value for c in paired.session.cookie_jar if c.key == "steno_session")})
        assert await sees_meetings(thief, title)
        assert (await login_form(other, "the owner's new one")).status == 303
        r = await other.post("/password", data={"csrf": await csrf(other), "current": "the owner's new one",
                                                "password": "a third one 3", "again": "a third one 3"},
                             allow_redirects=False)
        assert r.status == 303, await r.text()
        assert (await thief.get("/api/v1/sessions")).status == 401
        assert not await sees_meetings(paired, title)
        assert (await login_form(paired, "a third one 3")).status == 303 and await sees_meetings(paired, title)
    finally:
        for c in (paired, thief, other):
            await c.session.close()


async def test_the_config_password_wins_and_pairing_can_be_switched_off(web_client, sessions):
    from tests.web.helpers import PASSWORD_HASH
    client, core = await web_client(**{**CLOSED, "http.auth.password_hash": PASSWORD_HASH,
                                       "http.auth.pairing": False})
    from steno_exportd.errors import StenoError
    import pytest
    with pytest.raises(StenoError, match="pairing is switched off"):
        core.start_pairing()
    with pytest.raises(StenoError, match="wins"):
        await core.set_web_password("another password")
    assert 'action="/pair"' not in await (await client.get("/login")).text()


def _check_config(tmp_path, text: str) -> subprocess.CompletedProcess:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return subprocess.run([sys.executable, "-m", "steno_exportd", "check-config", str(p)], capture_output=True,
                          text=True, timeout=60)


def test_check_config_refuses_an_open_lan_without_the_switch(tmp_path):
    r = _check_config(tmp_path, '[http]\nbind = ["0.0.0.0"]\n[http.auth]\nmode = "none"\n')
    assert r.returncode == 1 and "allow_open_lan" in r.stderr and "0.0.0.0" in r.stderr
    r = _check_config(tmp_path, '[http]\nbind = ["127.0.0.1", "::1"]\n[http.auth]\nmode = "none"\n')
    assert r.returncode == 0, r.stderr
    r = _check_config(tmp_path, '[http]\nbind = ["0.0.0.0"]\n[http.auth]\nmode = "none"\nallow_open_lan = true\n')
    assert r.returncode == 0, r.stderr
    r = _check_config(tmp_path, "")                     # the defaults: password mode, pairing on
    assert r.returncode == 0 and 'mode = "password"' in r.stdout and "pairing = true" in r.stdout, r.stderr


PROBE = r"""
import json, sys, urllib.error, urllib.request
class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k): return None
opener = urllib.request.build_opener(Stay)
out = []
for method, path in json.loads(sys.argv[2]):
    req = urllib.request.Request(sys.argv[1] + path, method=method, data=b"" if method == "POST" else None)
    try:
        r = opener.open(req, timeout=30)
        status, headers, body = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, dict(e.headers), e.read()
    out.append([method, path, status, headers.get("Location", ""), body.decode("utf-8", "replace")])
json.dump(out, sys.stdout)
"""


def _routes(session_id: int) -> list[tuple[str, str]]:
    """Every route of the page (from its own router), with real-looking parameters."""
    import types
    from steno_exportd import config
    from steno_exportd.web import make_app
    app = make_app(types.SimpleNamespace(cfg=config.from_dict({})))
    values = {"key": str(session_id), "fmt": "txt", "token": "x" * 24, "what": "zip", "id": "1"}
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if route.method == "HEAD" or not path:
            continue
        for k, v in values.items():
            path = path.replace("{" + k + "}", v)
        out.append((route.method, path + ("?ids=" + str(session_id) if path == "/zip" else "")))
    return out


def test_a_fresh_install_answers_no_remote_address_with_meeting_data(web_daemon, own_lib, ipv6_lan):
    """From another host on the LAN (a network namespace): every route is the pairing screen or a refusal."""
    from tests.web.helpers import lib_sessions
    ns = ipv6_lan(1)
    # the shipped defaults (mode = "password", pairing on, no password), listening on the LAN address
    d = web_daemon(own_lib, **{"http.bind": f'["127.0.0.1", "{ns.host_addr}"]', "http.auth.mode": '"password"'})
    sessions = lib_sessions(own_lib)
    secrets_ = [s.title for s in sessions.values()] + [g.text for s in sessions.values() for g in s.segments[:3]]
    sid = next(iter(sessions))
    routes = _routes(sid)
    assert len(routes) >= 30 and ("GET", "/sessions/1/audio".replace("1", str(sid))) in routes
    import json
    r = ns.run([sys.executable, "-c", PROBE, f"http://[{ns.host_addr}]:{d.port}", json.dumps(routes)])
    assert r.returncode == 0, r.stderr
    answers = json.loads(r.stdout)
    assert len(answers) == len(routes)
    for method, path, status, location, body in answers:
        where = f"{method} {path}: {status} {location}"
        assert not any(t and t in body for t in secrets_), where
        if path in ("/login", "/pair") and method == "GET":
            assert status == 200 and 'action="/pair"' in body, where
        elif path.startswith("/s/"):
            assert status in (403, 404), where             # a share link needs its token: none exists
        elif method == "GET" and not path.startswith("/api/") and not path.startswith("/static/"):
            assert status == 302 and location.startswith("/login"), where
        elif not path.startswith("/static/"):
            assert status in (401, 403), where
    assert "Traceback" not in d.log()
