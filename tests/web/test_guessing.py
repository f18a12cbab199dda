"""Guessing a password or a share PIN: concurrently, from one address, from many (IPv4 and IPv6)."""
from __future__ import annotations

import json
import sys

from tests.parts import require_tool
from tests.web.attacker import guess
from tests.web.helpers import PASSWORD, PASSWORD_HASH, csrf, login_form, with_audio

LIMITS = {"http.auth.max_failed_logins": 5, "http.auth.max_failed_network": 12, "http.auth.max_failed_global": 30,
          "http.auth.lockout_seconds": 300}
PW = {"http.auth.mode": "password", "http.auth.password_hash": PASSWORD_HASH, **LIMITS}


def base(client) -> str:
    return f"http://127.0.0.1:{client.server.port}"


async def test_concurrent_wrong_passwords_from_one_address_get_no_more_guesses(web_client):
    client, _ = await web_client(**PW)
    counts = await guess(base(client), ["127.0.0.1"] * 40)
    assert counts[401] <= 5 and counts[429] == 40 - counts[401], counts     # checked (401) vs refused (429)
    r = await login_form(client, PASSWORD)
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0            # locked out, even the right one


async def test_rotating_loopback_addresses_get_no_more_guesses(web_client):
    client, _ = await web_client(**PW)
    one_net = [f"127.0.9.{i}" for i in range(1, 41)]                         # 40 addresses in one /24
    first = await guess(base(client), one_net)
    assert first[401] <= 12 and first[401] + first[429] == 40, first
    many_nets = [f"127.{10 + i // 200}.{i % 200}.1" for i in range(120)]     # 120 addresses, 120 /24s
    counts = await guess(base(client), many_nets)
    assert first[401] + counts[401] <= 30 and counts[401] + counts[429] == 120, (first, counts)


def test_rotating_ipv6_addresses_of_one_64_get_no_more_guesses(web_daemon, own_lib, ipv6_lan):
    require_tool("ip")
    ns = ipv6_lan(60)
    d = web_daemon(own_lib, **{"http.bind": f'["127.0.0.1", "{ns.host_addr}"]', "http.auth.mode": '"password"',
                               "http.auth.password_hash": f'"{PASSWORD_HASH}"',
                               **{k: str(v) for k, v in LIMITS.items()}})
    r = ns.run([sys.executable, "-m", "tests.web.attacker", f"http://[{ns.host_addr}]:{d.port}",
                ",".join(ns.addresses)])
    assert r.returncode == 0, r.stderr
    counts = {int(k): v for k, v in json.loads(r.stdout).items()}
    assert counts.get(401, 0) <= 12 and counts.get(401, 0) + counts.get(429, 0) == 60, counts
    assert "Traceback" not in d.log()


async def make_link(client, sid: int, **body) -> tuple[int, dict]:
    r = await client.post(f"/api/v1/sessions/{sid}/share-links", json=body, headers={"X-CSRF-Token": await csrf(client)})
    return r.status, await r.json()


async def test_share_pins_have_six_digits_and_a_link_locks_itself_after_wrong_pins(web_client, sessions):
    client, _ = await web_client(**{**LIMITS, "http.share_links.max_wrong_pins": 8})
    s = with_audio(sessions)
    status, body = await make_link(client, s.id, pin="4711")
    assert status == 400 and "6" in body["error"]
    status, link = await make_link(client, s.id, pin="271828")
    assert status == 201
    # wrong PINs from many addresses (each under its own limit): the link itself counts them
    counts = await guess(base(client), [f"127.20.{i}.1" for i in range(20)], path=link["url"], field="pin",
                         secret="000000")
    assert counts[403] <= 8 and counts[403] + counts[410] + counts[429] == 20, counts
    counts = await guess(base(client), ["127.21.0.1"], path=link["url"], field="pin", secret="271828")
    assert counts[410] == 1, counts                       # locked: even the right PIN no longer opens it
    links = await (await client.get(f"/api/v1/sessions/{s.id}/share-links")).json()
    assert links[0]["state"] == "locked (wrong PINs)", links


async def test_concurrent_wrong_pins_from_one_address_get_no_more_guesses(web_client, sessions):
    client, _ = await web_client(**{**LIMITS, "http.share_links.max_wrong_pins": 100})
    s = with_audio(sessions)
    _, link = await make_link(client, s.id, pin="314159")
    counts = await guess(base(client), ["127.0.0.1"] * 30, path=link["url"], field="pin", secret="000000")
    assert counts[403] <= 5 and counts[429] == 30 - counts[403], counts
