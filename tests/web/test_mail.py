"""Send by email from the web page (form and API) to a real SMTP server; the outbox and schedules as JSON."""
from __future__ import annotations

import asyncio
import datetime
import re

from croniter import croniter

from steno_exportd.mail import sender
from tests.parts import until
from tests.web.helpers import csrf


async def _mail_client(web_client, smtp_server, **over):
    server = await asyncio.to_thread(smtp_server, "none", False)
    client, core = await web_client(**{"email.enabled": True, "email.smtp_host": "127.0.0.1",
                                       "email.smtp_port": server.port, "email.sender": "steno@recorder.example",
                                       "email.retry_initial_seconds": 0.2}, **over)
    return server, client, core


async def test_send_by_email_on_a_session_page_reaches_the_server(web_client, smtp_server):
    server, client, core = await _mail_client(web_client, smtp_server)
    task = asyncio.create_task(sender.run(core))
    try:
        sid = next(s.id for s in (await core.listing()).sessions if s.exportable)
        html = await (await client.get(f"/sessions/{sid}")).text()
        assert "Send by email" in html and f'action="/sessions/{sid}/email"' in html
        form = [("recipients", "alice@example.org\nBob <bob@example.org>"), ("formats", "txt"), ("formats", "json")]
        r = await client.post(f"/sessions/{sid}/email", data=form, allow_redirects=False)
        assert r.status == 403 and core.outbox.list() == []          # no CSRF token: refused, nothing queued
        token = await csrf(client)
        r = await client.post(f"/sessions/{sid}/email", data=[("csrf", token)] + form, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == f"/sessions/{sid}#email"
        await until(lambda: server.received, "the mail at the server", timeout=60, in_thread=False)
        [mail] = server.received
        assert sorted(mail.rcpt_tos) == ["alice@example.org", "bob@example.org"]
        assert sorted(n.rsplit(".", 1)[1] for n in mail.attachments()) == ["json", "txt"]
        await until(lambda: core.outbox.list()[0].state == "sent", "the message marked sent", in_thread=False)
        html = await (await client.get(f"/sessions/{sid}")).text()
        assert re.search(r"alice@example.org, Bob &lt;bob@example.org&gt;</td><td[^>]*>sent</td>", html)

        headers = {"X-CSRF-Token": token}
        r = await client.post(f"/api/v1/sessions/{sid}/email", headers=headers,
                              json={"recipients": ["carol@example.org"], "formats": ["txt"]})
        assert r.status == 202
        entry = await r.json()
        assert entry["state"] == "composing" and entry["sessions"] == [sid]
        await until(lambda: len(server.received) == 2, "the API's mail", timeout=60, in_thread=False)
        listed = await (await client.get("/api/v1/outbox")).json()
        assert [e["id"] for e in listed] == [1, entry["id"]]
        assert (await (await client.get("/api/v1/schedules")).json()) == []
    finally:
        task.cancel()


async def test_bad_mail_requests_are_clear_4xx_and_queue_nothing(web_client, smtp_server):
    server, client, core = await _mail_client(web_client, smtp_server)
    sid = next(s.id for s in (await core.listing()).sessions if s.exportable)
    token = await csrf(client)
    headers = {"X-CSRF-Token": token}
    for body, words in [({"recipients": ["x@example.org\r\nBcc: eve@evil.example"]}, "control character"),
                        ({"recipients": ["alice@"]}, "alice@"),
                        ({"recipients": "alice@example.org"}, "recipients: a list of strings"),
                        ({"recipients": ["a@example.org"] * 51}, "too many recipients"),
                        ({"recipients": ["a@example.org"], "bcc": ["e@example.org"]}, "unknown keys ['bcc']"),
                        ({"recipients": ["a@example.org"], "formats": ["exe"]}, "'exe'")]:
        r = await client.post(f"/api/v1/sessions/{sid}/email", headers=headers, json=body)
        # an unknown format is NotFound, as for an export (the message lists the formats)
        assert r.status == (404 if "formats" in body else 400), (body, r.status)
        assert words in (await r.json())["error"], (body, await r.json())
    r = await client.post("/api/v1/sessions/99999/email", headers=headers, json={"recipients": ["a@example.org"]})
    assert r.status == 404
    r = await client.post(f"/sessions/{sid}/email", data={"csrf": token, "recipients": "a@example.org," * 2000})
    assert r.status == 400 and "too many addresses" in await r.text()
    assert core.outbox.list() == [] and server.received == []


async def test_schedules_with_their_next_run_on_the_page_and_the_api(web_client, tmp_path):
    client, core = await web_client(schedules=[{"name": "nightly", "cron": "0 2 * * *", "target": str(tmp_path),
                                                "formats": ["txt"]}])
    expected = croniter("0 2 * * *", datetime.datetime.now().astimezone()).get_next(float)
    [s] = await (await client.get("/api/v1/schedules")).json()
    assert (s["name"], s["when"], s["next_run"], s["last_run"]) == ("nightly", "0 2 * * *", expected, 0.0)
    html = await (await client.get("/devices")).text()
    moment = datetime.datetime.fromtimestamp(expected).astimezone().isoformat(timespec="seconds")
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", html.split('id="schedules"')[1])]
    assert cells[:5] == ["nightly", "0 2 * * *", str(tmp_path), cells[3], "never"], cells
    assert f'<time datetime="{moment}"' in html                  # the next run, in the browser's own locale
