"""Over email.max_message_mb with email.oversize = "link": the real daemon mails a share link instead of the
recording; the link downloads the very file an export writes, from the daemon's own web page, and expires."""
from __future__ import annotations

import hashlib
import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.request

import pytest

from steno_exportd import config, events as ev
from steno_exportd.core import Core
from tests.mail.conftest import finished
from tests.parts import wait_for
from tests.parts.daemon import make_library, write_config
from tests.parts.smtp import USER, free_port

TO = "alice@example.org"
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/s/([A-Za-z0-9_-]{24}))/audio\?dl=1")


class Browser:
    """A client with cookies (the page's CSRF cookie) that sends the page's CSRF token on POSTs."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        html = self.opener.open(base + "/", timeout=30).read().decode()
        self.csrf = re.search(r'<meta name="csrf" content="([^"]+)">', html).group(1)

    def get(self, url: str) -> tuple[int, bytes]:
        try:
            with self.opener.open(url if url.startswith("http") else self.base + url, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "X-CSRF-Token": self.csrf, "Origin": self.base})
        with self.opener.open(req, timeout=60) as r:
            return json.loads(r.read())


def test_a_recording_over_the_limit_comes_as_a_share_link_that_downloads_it_and_expires(tmp_path, daemon_factory,
                                                                                          smtp_server):
    server = smtp_server("starttls", auth=True)
    make_library(tmp_path, sessions=2)
    (tmp_path / "exports").mkdir()
    port = free_port()
    email = {k: json.dumps(v) for k, v in server.email_config(max_message_mb=0.1).items()}
    cfg = write_config(tmp_path / "c.toml", tmp_path, "session", **{f"email.{k}": v for k, v in email.items()}, **{
        "dbus.enabled": "false", "http.enabled": "true", "http.bind": '["127.0.0.1"]', "http.port": str(port),
        "http.auth.mode": '"none"',   # the admin's own page on loopback (closed by default: issue 22)
        "http.public_url": f'"http://127.0.0.1:{port}"',   # the name the mailed link carries (else <host>.local)
        # the shortest lifetime the config allows (36 s): the test sees the link expire
        "http.share_links.default_expiry_hours": "0.01", "http.share_links.default_max_downloads": "3"})
    daemon = daemon_factory(cfg)
    daemon.wait_ready(30)
    page = Browser(f"http://127.0.0.1:{port}")

    job = page.post("/api/v1/exports", {"sessions": [1], "formats": ["audio"], "target": str(tmp_path / "exports")})
    wait_for(lambda: json.loads(page.get(f"/api/v1/jobs/{job['id']}")[1])["state"] == "completed", timeout=60,
             what="the export")
    [exported] = [p for p in (tmp_path / "exports").rglob("audio.*") if p.is_file()]
    want = hashlib.sha256(exported.read_bytes()).hexdigest()
    assert exported.stat().st_size > 0.1 * 1024 * 1024 * 3 / 4        # base64 of it is over the limit

    sent_at = time.time()
    entry = page.post("/api/v1/sessions/1/email", {"recipients": [TO], "formats": ["txt", "audio"]})
    [mail] = wait_for(lambda: server.received, timeout=60, what="the mail at the server")
    assert mail.tls and mail.login == USER and mail.rcpt_tos == [TO]
    assert len(mail.data) <= 0.1 * 1024 * 1024
    assert set(mail.attachments()) == {"transcript.txt"}
    text, html = mail.text(), mail.html()
    [(page_url, token)] = set(LINK.findall(text))
    assert f'href="{page_url}/audio?dl=1"' in html and f'href="{page_url}"' in html
    assert f"audio.flac ({exported.stat().st_size / 1048576:.1f} MB): {page_url}/audio?dl=1" in text
    assert "Too large to attach" in text and "for 3 downloads" in text and "Left out" not in text
    def listed():       # the server has the whole message before it answers, and the daemon marks it sent after
        [e] = [e for e in json.loads(page.get("/api/v1/outbox")[1]) if e["id"] == entry["id"]]
        return e if e["state"] != "sending" else None
    e = wait_for(listed, timeout=30, what="the outbox entry to leave 'sending'")
    assert e["state"] == "sent" and e["left_out"] == ["audio.flac"]

    # a guest (no cookie of the page) downloads the very file the export wrote
    guest = urllib.request.build_opener()
    with guest.open(f"{page_url}/audio?dl=1", timeout=60) as r:
        assert r.status == 200 and hashlib.sha256(r.read()).hexdigest() == want
    [link] = json.loads(page.get("/api/v1/sessions/1/share-links")[1])
    assert (link["token"], link["downloads"], link["max_downloads"]) == (token, 1, 3)
    assert abs(link["expires"] - link["created"] - 36) < 0.5 and link["created"] >= sent_at - 1

    def gone():
        status, body = page.get(f"{page_url}/audio?dl=1")
        return status == 410 and b"expired" in body
    wait_for(gone, timeout=max(1.0, link["expires"] - time.time()) + 30, interval=0.5, what="the link to expire")
    assert time.time() >= link["expires"]
    assert page.get(page_url)[0] == 410


@pytest.mark.parametrize("keys, http_on, says", [
    ({"oversize": "omit"}, True, None),                                # the user chose: named, no link
    ({}, False, "web page is off (http.enabled)"),
])
async def test_without_a_link_the_files_are_named_and_the_body_says_why(keys, http_on, says, smtp, mail_core):
    server = await smtp()
    core = await mail_core(server, max_message_mb=0.1, **keys)
    if http_on:
        core.set_web_url("http://127.0.0.1:9")
    entry = await core.email_sessions([1], ["txt", "audio"], [TO])
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT and done.left_out == ("audio.flac",)
    [mail] = server.received
    for body in (mail.text(), mail.html()):
        assert "Left out" in body and "audio.flac" in body and "/s/" not in body
        assert (says in body) if says else ("No download link" not in body)
    assert core.access.store.links() == []


async def test_a_mailed_link_follows_http_public_url_even_after_a_reload_and_is_revocable(smtp, mail_core):
    server = await smtp()
    public = "https://steno.example.org/meetings/"
    core = await mail_core(server, max_message_mb=0.1, extra={"http": {"public_url": public}})
    core.set_web_url("http://127.0.0.1:9")                 # where the page listens: not what a mail may carry
    assert core.web_url == public.rstrip("/")

    entry = await core.email_sessions([1], ["txt", "audio"], [TO])
    assert (await finished(core, entry.id)).state == ev.OutboxState.SENT
    [mail] = server.received
    tokens = re.findall(r"https://steno\.example\.org/meetings/s/([A-Za-z0-9_-]{24})/audio\?dl=1", mail.text())
    assert len(set(tokens)) == 1 and "127.0.0.1" not in mail.text() + mail.html()
    [link] = core.access.store.links(1)                    # listed with the session's other share links
    assert (link.token, link.state, link.max_downloads) == (tokens[0], "active", 5)
    assert link.session_uuid == (await core.summary(1)).uuid     # it opens that meeting only, whatever takes its id
    assert core.access.store.revoke(link.token).state == "revoked"

    # a reload moves the page to another public name: the core's URL and the next mailed link follow it
    moved = "http://recorder.office.example:8080"
    await core.reload(config.replace(core.cfg, **{"http.public_url": moved}))
    assert core.web_url == moved
    entry = await core.email_sessions([2], ["audio"], [TO])
    assert (await finished(core, entry.id)).state == ev.OutboxState.SENT
    assert re.search(rf"{re.escape(moved)}/s/[A-Za-z0-9_-]{{24}}/audio\?dl=1", server.received[1].text())
    assert len(core.access.store.links(2)) == 1


async def test_the_web_url_follows_a_reload_of_http_public_url(tmp_path, demo_library):
    core = Core(config.from_dict({"recorder": {"db_path": str(demo_library)}, "state": {"dir": str(tmp_path)},
                                  "http": {"public_url": "https://a.example/"}}))
    assert core.web_url == ""                              # the page does not listen yet
    core.set_web_url("http://192.0.2.7:8080/")
    assert core.web_url == "https://a.example"
    await core.reload(config.replace(core.cfg, **{"http.public_url": "https://b.example"}))
    assert core.web_url == "https://b.example"
    await core.reload(config.replace(core.cfg, **{"http.public_url": ""}))
    assert core.web_url == "http://192.0.2.7:8080"        # no public name: where it listens
    core.set_web_url("")
    assert core.web_url == ""
