"""Sloppy edges: hostile ids and parameters, malformed requests, foreign Host and Origin, what the server says
about itself. Inputs from tests/web/corpus/."""
from __future__ import annotations

import json
import logging
import re
import socket
import sys
from pathlib import Path

import pytest

from tests.web.helpers import csrf, raw, request, corpus, with_audio

ID_PATHS = ("/sessions/{}", "/api/v1/sessions/{}", "/sessions/{}/audio", "/sessions/{}/zip", "/zip?id={}",
            "/sessions/{}/download/txt", "/api/v1/sessions/{}/audit", "/api/v1/jobs/{}", "/s/{}", "/s/{}/zip",
            "/api/v1/sessions/{}/share-links")
NOT_ASCII_DIGITS = ("%D9%A1", "%DB%B1", "%EF%BC%91", "%E0%A5%A7", "%F0%9D%9F%8F", "1234567890123456789012345",
                    "99999999999999999999")


def quiet(caplog) -> None:
    """No ERROR line and no traceback: a client's mistake is not the daemon's."""
    bad = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
           if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad


async def test_hostile_ids_are_400_or_404_never_a_500_nor_another_session(web_client, caplog):
    client, _ = await web_client()
    port = client.server.port
    for key in corpus("ids.txt"):
        for template in ID_PATHS:
            path = template.format(key)
            status, _, body = await raw(port, request("GET", path, port))
            assert status in (400, 404), (path, status, body[:200])
            if key in NOT_ASCII_DIGITS and "/s/" not in path:
                assert status == 400, (path, status)         # a Unicode digit is not session 1
    quiet(caplog)


async def test_hostile_list_parameters_are_400(web_client, caplog):
    client, _ = await web_client()
    port = client.server.port
    for q in corpus("queries.txt"):
        for path in ("/api/v1/sessions", "/"):
            status, _, body = await raw(port, request("GET", f"{path}?{q}", port))
            assert status == 400, (path, q, status, body[:200])
    quiet(caplog)


def raw_requests(port: int) -> list[tuple[bytes, set[int]]]:
    """The corpus of raw requests: (bytes to send, the statuses allowed; empty: any 4xx or a closed connection)."""
    text = (Path(__file__).parent / "corpus" / "requests.txt").read_text()
    text = "\n".join(x for x in text.splitlines() if not x.startswith("#"))
    out = []
    for block in (b.strip("\n") for b in text.split("----\n")):
        expect: set[int] = set()
        if block.startswith("expect:"):
            first, _, block = block.partition("\n")
            expect = {int(x) for x in first.split()[1:]}
        head, _, body = block.partition("\n\n")
        data = (head.replace("\n", "\r\n") + "\r\n\r\n" + body).replace("{HOST}", f"127.0.0.1:{port}")
        raw_bytes = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data.encode("latin-1"))
        out.append((raw_bytes, expect))
    return out


@pytest.mark.parametrize("networks", [["127.0.0.0/8"], ["10.0.0.0/8"]], ids=["allowed", "refused network"])
async def test_malformed_requests_are_4xx_without_a_traceback(web_client, caplog, networks):
    caplog.set_level(logging.DEBUG)
    client, _ = await web_client(**{"http.auth.allowed_networks": networks})
    port = client.server.port
    for data, expect in raw_requests(port):
        status, headers, answer = await raw(port, data, timeout=5)
        if expect and networks == ["127.0.0.0/8"]:
            assert status in expect, (data, status, answer[:300])
        else:
            assert status == 0 or 400 <= status < 500, (data, status, answer[:300])
        if status:
            assert "python" not in headers.get("server", "").lower(), headers
    quiet(caplog)
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks


async def test_every_post_answers_a_multipart_body_without_boundary_with_400(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    port = client.server.port
    token = await csrf(client)
    cookies = "; ".join(f"{c.key}={c.value}" for c in client.session.cookie_jar)
    for path in ("/login", "/logout", f"/sessions/{s.id}/share", "/share/x/revoke", "/s/x", "/api/v1/exports",
                 f"/api/v1/sessions/{s.id}/share-links", "/api/v1/share-links/x/revoke", "/api/v1/jobs/1/cancel",
                 "/api/v1/devices/x/eject"):
        # no token in a header: the form is read to find it, and a form without boundary is a 400
        status, _, body = await raw(port, request("POST", path, port, {"Content-Type": "multipart/form-data",
                                                                       "Cookie": cookies}, b"--x\r\n\r\n"))
        assert status == 400, (path, status, body[:200])
        # with the token: whatever the handler makes of it, never a server error
        status, _, body = await raw(port, request("POST", path, port, {
            "Content-Type": "multipart/form-data", "X-CSRF-Token": token, "Cookie": cookies}, b"--x\r\n\r\n"))
        assert 300 <= status < 500, (path, status, body[:200])


async def test_a_multipart_body_with_broken_part_headers_is_a_400_not_a_traceback(web_client, sessions, caplog):
    client, _ = await web_client()
    s = with_audio(sessions)
    port = client.server.port
    cookies = "; ".join(f"{c.key}={c.value}" for c in client.session.cookie_jar)
    junk = b"--zz\r\n\x00\x01 no header here\r\n\r\nbody\r\n--zz--\r\n"
    for path in ("/login", f"/sessions/{s.id}/share", f"/sessions/{s.id}/email"):
        status, _, body = await raw(port, request("POST", path, port, {
            "Content-Type": "multipart/form-data; boundary=zz", "Cookie": cookies}, junk))
        assert status == 400, (path, status, body[:200])
    quiet(caplog)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_a_foreign_host_is_refused_in_every_mode(web_client):
    hostname = socket.gethostname()
    for mode in ({}, {"http.auth.mode": "password", "http.auth.password_hash": "scrypt$16384$8$1$AA==$AA=="}):
        client, _ = await web_client(**{**mode, "http.host_names": ["steno.office.example"]})
        port = client.server.port
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "", "localhost.evil",
                     f"{hostname}.evil", "[::1]:1", "10.1.2.3"):
            for path in ("/", "/api/v1/sessions", "/s/abc", "/login", "/static/app.js"):
                status, _, _ = await raw(port, request("GET", path, port, host=host))
                assert status in (400, 421), (host, path, status)
        for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", f"{hostname}.local:{port}",
                     f"{hostname}:{port}", f"STENO.office.example:{port}", f"{hostname.upper()}.LOCAL"):
            status, _, _ = await raw(port, request("GET", "/api/v1/status", port, host=host))
            assert status in (200, 401), (host, status)


async def test_state_changing_requests_from_a_foreign_origin_are_refused(web_client, sessions, tmp_path):
    client, _ = await web_client()
    port = client.server.port
    token = await csrf(client)
    cookies = "; ".join(f"{c.key}={c.value}" for c in client.session.cookie_jar)
    body = b'{"sessions": [1], "formats": ["txt"], "target": "%s"}' % str(tmp_path / "exports").encode()
    base = {"X-CSRF-Token": token, "Cookie": cookies, "Content-Type": "application/json"}
    for foreign in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": f"http://evil.example:{port}"},
                    {"Origin": f"https://127.0.0.1:{port}"}, {"Referer": "http://evil.example/page"},
                    {"Origin": f"http://127.0.0.1:{port}.evil.example"}):
        status, _, answer = await raw(port, request("POST", "/api/v1/exports", port, {**base, **foreign}, body))
        assert status == 403, (foreign, status, answer[:200])
    for same in ({"Origin": f"http://127.0.0.1:{port}"}, {"Referer": f"http://127.0.0.1:{port}/sessions/1"}, {}):
        status, _, answer = await raw(port, request("POST", "/api/v1/exports", port, {**base, **same}, body))
        assert status == 202, (same, status, answer[:200])


async def test_the_server_header_names_no_versions(web_client):
    client, _ = await web_client()
    port = client.server.port
    for data in (request("GET", "/", port), request("GET", "/nope", port), b"BAD\r\n\r\n",
                 request("GET", "/", port, host="evil.example")):
        status, headers, _ = await raw(port, data)
        server = headers.get("server", "")
        assert status and "python" not in server.lower() and "aiohttp" not in server.lower(), (data, headers)


async def test_an_overlong_request_line_is_answered_in_the_apis_error_shape(web_client, caplog):
    client, _ = await web_client()
    port = client.server.port
    for path in ("/api/v1/sessions?q=" + "%F1%9C%81%B5" * 1000, "/" + "a" * 9000):
        status, headers, body = await raw(port, request("GET", path, port))
        assert status in (400, 414, 431) and headers["content-type"].startswith("application/json"), (status, headers)
        assert json.loads(body)["status"] == status
    quiet(caplog)


async def test_export_options_that_are_not_an_object_are_a_400(web_client, sessions, tmp_path):
    """Found by the OpenAPI fuzzing test in CI: "options": true made the API's error message itself fail (a 500
    with a traceback in the log)."""
    client, _ = await web_client()
    port = client.server.port
    token = await csrf(client)
    cookies = "; ".join(f"{c.key}={c.value}" for c in client.session.cookie_jar)
    base = {"X-CSRF-Token": token, "Cookie": cookies, "Content-Type": "application/json"}
    for options in (True, 5, "verify", [1, 2], {"bogus": 1}):
        body = json.dumps({"sessions": [1], "formats": ["txt"], "target": str(tmp_path / "exports"),
                           "options": options}).encode()
        status, _, answer = await raw(port, request("POST", "/api/v1/exports", port, base, body))
        assert status == 400 and b"options" in answer, (options, status, answer[:200])


LINK_LOCAL_PROBE = """
import json, socket, sys
addr, port, hosts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
out = []
for host in hosts:
    family, kind, proto, _, sa = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.settimeout(10)
        s.connect(sa)
        s.sendall(f"GET /login HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n".encode())
        head = b""
        while b"\\r\\n" not in head and (chunk := s.recv(4096)):
            head += chunk
    out.append(int(head.split()[1]) if head.startswith(b"HTTP/") else 0)
json.dump(out, sys.stdout)
"""


def test_a_link_local_address_with_its_zone_in_host_is_the_recorders_own(web_daemon, own_lib, ipv6_lan):
    """A laptop on the LAN that reaches the recorder at its IPv6 link-local address (no DHCP, no mDNS) names it
    with the zone of its own interface: http://[fe80::1%25eth0]:8080/ (RFC 6874), and sends that in Host. The
    zone only says which of the client's interfaces leads there, yet the Host check compared it too and answered
    421 "does not answer to that host name". The address must still be the one the client connected to, and no
    other name passes (DNS rebinding)."""
    from tests.parts.netns import _ip
    from tests.web.helpers import PASSWORD_HASH
    ns = ipv6_lan(1)
    _ip("addr", "add", "fe80::1/64", "dev", ns.host_if, "nodad")                 # the recorder's link-local address
    _ip("addr", "add", "fe80::2/64", "dev", ns.ns_if, "nodad", ns=ns.name)      # the laptop's
    d = web_daemon(own_lib, **{"http.bind": f'["fe80::1%{ns.host_if}"]', "http.auth.mode": '"password"',
                               "http.auth.password_hash": f'"{PASSWORD_HASH}"'})
    zone = ns.ns_if
    hosts = {f"[fe80::1%25{zone}]:{d.port}": 200, f"[fe80::1%25{zone}]": 200, f"[fe80::1]:{d.port}": 200,
             f"[FE80::1%25{zone}]:{d.port}": 200,
             f"[fe80::2%25{zone}]:{d.port}": 421, f"[fe80::1:1%25{zone}]:{d.port}": 421,  # not the address it reached
             f"evil.example:{d.port}": 421, f"[fe80::1%25{zone}].evil.example:{d.port}": (400, 421),
             f"[fe80::1].evil.example:{d.port}": (400, 421), f"[fe80::1%25{zone}%25x]:{d.port}": (400, 421),
             f"fe80::1%25{zone}:{d.port}": (400, 421)}                                   # (no brackets)
    r = ns.run([sys.executable, "-c", LINK_LOCAL_PROBE, f"fe80::1%{zone}", str(d.port), json.dumps(list(hosts))])
    assert r.returncode == 0, r.stderr
    got = dict(zip(hosts, json.loads(r.stdout)))
    wrong = {h: s for h, s in got.items() if s not in (hosts[h] if isinstance(hosts[h], tuple) else (hosts[h],))}
    # before: {'[fe80::1%25sn..]:port': 421, '[fe80::1%25sn..]': 421, '[FE80::1%25sn..]:port': 421}
    assert not wrong, wrong
    assert "Traceback" not in d.log()
