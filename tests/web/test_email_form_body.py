"""The session page's "Send by email" form read like every other form: within http.body_timeout, bounded in
size, a malformed body a 400 — also when the CSRF token comes in the header (the form is then read by the
handler itself, not by the CSRF check)."""
from __future__ import annotations

import asyncio
import time

from tests.web.helpers import csrf

MAIL = {"email.enabled": True, "email.smtp_host": "127.0.0.1", "email.smtp_port": 9,
        "email.sender": "steno@recorder.example"}


async def _session_and_token(web_client, **over):
    client, core = await web_client(**MAIL, **over)
    sid = next(s.id for s in (await core.listing()).sessions if s.exportable)
    return client, core, sid, await csrf(client)


async def _trickle(first: bytes, more: bytes):
    """A body that starts and then comes one byte per half second: 10 s, were the server to keep reading."""
    yield first
    for _ in range(20):
        await asyncio.sleep(0.5)
        yield more


async def test_a_form_that_trickles_in_gets_408_within_body_timeout(web_client):
    client, core, sid, token = await _session_and_token(web_client, **{"http.body_timeout": 1.0})
    started = time.monotonic()
    body = _trickle(b"recipients=alice%40example.org", b"x")
    r = await client.post(f"/sessions/{sid}/email", data=body, allow_redirects=False,
                          headers={"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"})
    took = time.monotonic() - started
    assert r.status == 408 and "too slowly" in await r.text(), (r.status, await r.text())
    assert took < 5, f"answered after {took:.1f} s"
    assert core.outbox.list() == []


async def test_a_malformed_or_huge_form_is_a_clear_4xx(web_client):
    client, core, sid, token = await _session_and_token(web_client, **{"http.max_body_kb": 64})
    headers = {"X-CSRF-Token": token}
    broken = await client.post(f"/sessions/{sid}/email", data=b"recipients=\xff\xfe@example.org",
                               allow_redirects=False,
                               headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert broken.status == 400, (broken.status, await broken.text())
    assert "form could not be read" in await broken.text()
    # a body that is no form at all: no addresses (a 400 naming them), never a 500
    other = await client.post(f"/sessions/{sid}/email", data=b'{"recipients": "a@b.example"}',
                              allow_redirects=False, headers={**headers, "Content-Type": "application/json"})
    assert other.status == 400, (other.status, await other.text())
    # last: the server answers before reading it all, and closes the connection
    huge = await client.post(f"/sessions/{sid}/email", data={"recipients": "a" * (1 << 20)},
                             allow_redirects=False, headers=headers)
    assert huge.status == 413, (huge.status, await huge.text())
    assert core.outbox.list() == []


async def test_the_mail_apis_json_body_is_read_like_every_other_body(web_client, caplog):
    """POST /api/v1/sessions/{key}/email read its JSON with aiohttp's request.json(), not the shared reader: a body
    nested 5,000 deep raised a RecursionError past its handler (a 500 and a traceback in the log for each request),
    and a body that trickled in was read for as long as it came (no http.body_timeout). Now both are 4xx like the
    other JSON endpoints', nothing queued, no traceback."""
    client, core, sid, token = await _session_and_token(web_client, **{"http.body_timeout": 1.0})
    headers = {"X-CSRF-Token": token, "Content-Type": "application/json"}
    deep = await client.post(f"/api/v1/sessions/{sid}/email", data=b"[" * 5000 + b"]" * 5000, headers=headers)
    assert deep.status == 400, (deep.status, await deep.text())
    assert "not valid JSON" in (await deep.json())["error"]
    started = time.monotonic()
    body = _trickle(b'{"recipients": ["alice@example.org"', b" ")
    slow = await client.post(f"/api/v1/sessions/{sid}/email", data=body, headers=headers)
    took = time.monotonic() - started
    assert slow.status == 408 and "too slowly" in await slow.text(), (slow.status, await slow.text())
    assert took < 5, f"answered after {took:.1f} s"
    assert core.outbox.list() == []
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info], \
        [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
