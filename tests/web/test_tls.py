"""HTTPS: a self-signed certificate made once and kept, or the admin's own; cookies are Secure then."""
from __future__ import annotations

import logging
import re
import ssl

import aiohttp
import pytest

from steno_exportd.web import serve
from steno_exportd.web.tls import fingerprint
from tests.configs import make_config
from tests.web.helpers import PASSWORD, PASSWORD_HASH, free_port, on_library, started_core


async def login_over_tls(url: str, cafile: str) -> str:
    """Log in through https (the certificate checked against cafile); the session cookie's Set-Cookie."""
    ctx = ssl.create_default_context(cafile=cafile)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url + "/login") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
            assert "Secure" in r.headers["Set-Cookie"]                     # the CSRF cookie too
        async with http.post(url + "/login", data={"password": PASSWORD, "csrf": token},
                             allow_redirects=False) as r:
            assert r.status == 303
            return r.headers["Set-Cookie"]


async def test_a_self_signed_certificate_is_made_once_and_cookies_are_secure(tmp_path, demo_lib, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    cfg = make_config(tmp_path, **on_library(demo_lib, **{"http.port": port, "http.tls.mode": "self-signed",
                                             "http.auth.mode": "password", "http.auth.password_hash": PASSWORD_HASH}))
    cert = tmp_path / "state" / "tls" / "cert.pem"
    core = await started_core(cfg)
    try:
        async with serve(core) as url:
            assert url.startswith("https://")
            cookie = await login_over_tls(f"https://127.0.0.1:{port}", str(cert))
            assert "steno_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
            async with aiohttp.ClientSession() as plain:                  # no plain HTTP on the port
                try:
                    async with plain.get(f"http://127.0.0.1:{port}/") as r:
                        assert r.status >= 400
                except aiohttp.ClientError:
                    pass
        first = fingerprint(cert)
        assert (tmp_path / "state" / "tls" / "key.pem").stat().st_mode & 0o077 == 0
        async with serve(core):                                           # a restart keeps the certificate
            assert fingerprint(cert) == first
        assert any(first in r.getMessage() for r in caplog.records)       # the log says what a phone should see
    finally:
        await core.stop()


async def test_the_admins_own_certificate_is_used(tmp_path, demo_lib):
    from steno_exportd.web.tls import self_signed
    own_cert, own_key = self_signed(tmp_path / "admin")                   # stands in for the office CA's files
    port = free_port()
    cfg = make_config(tmp_path, **on_library(demo_lib, **{"http.port": port, "http.tls.mode": "files",
                                             "http.tls.cert_file": str(own_cert), "http.tls.key_file": str(own_key),
                                             "http.auth.mode": "password", "http.auth.password_hash": PASSWORD_HASH}))
    core = await started_core(cfg)
    try:
        async with serve(core):
            assert "Secure" in await login_over_tls(f"https://127.0.0.1:{port}", str(own_cert))
        assert not (tmp_path / "state" / "tls").exists()
    finally:
        await core.stop()


@pytest.mark.parametrize("host,names", [("Café", {"xn--caf-dma", "xn--caf-dma.local"}),
                                        ("desk\udcff42", set()), ("desk/42", set()), ("steno", {"steno", "steno.local"})])
def test_a_host_name_of_any_bytes_still_gets_a_certificate_naming_what_browsers_ask_for(tmp_path, monkeypatch, host,
                                                                                       names):
    """The kernel takes any bytes as a host name (sethostname(2)); one not ASCII ("Café") or not UTF-8 stopped
    the self-signed certificate being made (cryptography wants DNS names as IDNA A-labels: ValueError), so the web
    page did not start at all with http.tls.mode = "self-signed". Now the certificate names the host as browsers
    look it up (IDNA, lower case, and <name>.local) where it can be one, and only localhost and the loopback
    addresses where it cannot (a '/', bytes not UTF-8): never a name no browser would ever match."""
    import socket

    from cryptography import x509

    from steno_exportd.web.tls import self_signed
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    cert, key = self_signed(tmp_path / "tls")
    crt = x509.load_pem_x509_certificate(cert.read_bytes())
    dns = set(crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
              .get_values_for_type(x509.DNSName))
    assert dns == names | {"localhost"}
    assert ssl.create_default_context(cafile=str(cert))                   # a certificate a client can load
