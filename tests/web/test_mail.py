"""Send by email from the web page (form and API) to a real SMTP server; the outbox and schedules as JSON."""
from __future__ import annotations

import asyncio
import datetime
import re
from html import escape as html_escape, unescape as html_unescape

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
        sid, uuid = next((s.id, s.uuid) for s in (await core.listing()).sessions if s.exportable)
        html = await (await client.get(f"/sessions/{sid}")).text()
        assert "Send by email" in html and f'action="/sessions/{uuid}/email"' in html     # (named by its uuid)
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


def _selection_form(html: str) -> str:
    return re.search(r'<form method="get" action="/zip" id="selection">(.*?)</form>', html, re.S).group(1)


async def test_send_selected_meetings_by_email_from_the_list_without_javascript(web_client, smtp_server):
    server, client, core = await _mail_client(web_client, smtp_server)
    task = asyncio.create_task(sender.run(core))
    try:
        # the list page: a second submit button of the selection form (ticked boxes, no script) opens the mail form
        form = _selection_form(await (await client.get("/")).text())
        assert '<button type="submit" formaction="/email">Send selected by email</button>' in form
        # every page links the outbox (the mail page with nothing selected lists it)
        assert '<a href="/email">Mail</a>' in await (await client.get("/history")).text()
        assert 'id="outbox"' in await (await client.get("/email")).text()
        # ticks and the mail form name meetings by their uuids (as their pages' links do)
        keys = re.findall(r'<input type="checkbox" name="id" value="([0-9a-f-]{36})"', form)[:2]
        assert len(keys) == 2
        listing = await core.listing()
        ids = [str(listing.resolve(k)) for k in keys]
        assert [listing.by_id[int(i)].uuid for i in ids] == keys
        page = await (await client.get("/email", params=[("id", k) for k in keys])).text()
        mail_form = re.search(r'<form method="post" action="/email" class="card">(.*?)</form>', page, re.S).group(1)
        assert re.findall(r'<input type="hidden" name="id" value="([^"]+)">', mail_form) == keys
        titles = [(await core.session(int(i))).title for i in ids]
        for t in titles:
            assert html_escape(t) in mail_form
        token = re.search(r'name="csrf" value="([^"]+)"', mail_form).group(1)
        checked = re.findall(r'name="formats" value="(\w+)" checked', mail_form)
        assert checked == [f for f in re.findall(r'name="formats" value="(\w+)"', mail_form)
                           if f in core.cfg.export.formats]
        fields = [("id", k) for k in keys] + [("recipients", "alice@example.org\r\nbob@example.org"),
                                              ("formats", "txt"), ("formats", "json")]

        # refused like every other form: no token, a stale token, another site; nothing queued
        for data, headers in [(fields, {}), ([("csrf", "x" * len(token))] + fields, {}),
                              ([("csrf", token)] + fields, {"Origin": "http://evil.example"})]:
            r = await client.post("/email", data=data, headers=headers, allow_redirects=False)
            assert r.status == 403, (headers, r.status)
        assert core.outbox.list() == []

        r = await client.post("/email", data=[("csrf", token)] + fields, allow_redirects=False)
        assert r.status == 303
        [entry] = core.outbox.list()
        assert r.headers["Location"] == f"/email?sent={entry.id}"
        assert entry.sessions == tuple(int(i) for i in ids) and entry.kind == "sessions"
        await until(lambda: server.received, "the mail at the server", timeout=60, in_thread=False)
        [mail] = server.received
        assert sorted(mail.rcpt_tos) == ["alice@example.org", "bob@example.org"]
        assert mail.message["Subject"] == f"2 meetings: {titles[0]} and 1 more"
        short = [(await core.session(int(i))).summary.short_id for i in ids]
        assert sorted(mail.attachments()) == sorted(f"{s} {n}" for s in short for n in ("session.json",
                                                                                         "transcript.txt"))
        for t in titles:
            assert t in mail.text()
        await until(lambda: core.outbox.get(entry.id).state == "sent", "the message marked sent", in_thread=False)
        page = await (await client.get(r.headers["Location"])).text()
        assert f"Message {entry.id} (" in page
        row = (f"<tr data-id=\"{entry.id}\"><td>{entry.id}</td><td>{html_escape(entry.subject)}</td>"
               "<td>alice@example.org, bob@example.org</td><td>sent</td>")
        created = datetime.datetime.fromtimestamp(entry.created).astimezone().isoformat(timespec="seconds")
        assert row + f'<td><time datetime="{created}" data-style="datetime">' in page   # the site's one time format
    finally:
        task.cancel()


async def test_bad_selections_are_clear_4xx_and_queue_nothing(web_client, smtp_server):
    server, client, core = await _mail_client(web_client, smtp_server)
    token = await csrf(client)
    sid = str(next(s.id for s in (await core.listing()).sessions if s.exportable))
    good = [("csrf", token), ("id", sid), ("recipients", "alice@example.org")]
    for data, status, words in [
            ([("csrf", token), ("recipients", "alice@example.org")], 400, "select at least one meeting"),
            ([("csrf", token), ("recipients", "a@example.org")] + [("id", sid)] * 101, 400, "at most 100"),
            ([("csrf", token), ("id", "../1"), ("recipients", "a@example.org")], 400, "not a session id"),
            ([("csrf", token), ("id", "424242"), ("recipients", "a@example.org")], 404, "424242"),
            (good[:2] + [("recipients", "alice@example.org\r\nBcc: eve@evil.example")], 400, "Bcc"),
            (good[:2] + [("recipients", "")], 400, "no recipients"),
            (good[:2] + [("recipients", "a@example.org," * 2000)], 400, "too many addresses"),
            (good + [("formats", "exe")], 404, "'exe'")]:
        r = await client.post("/email", data=data, allow_redirects=False)
        assert r.status == status, (data[-1], r.status, await r.text())
        assert words in html_unescape(await r.text()), (data[-1], await r.text())
    r = await client.get("/email", params=[("id", sid)] * 101)
    assert r.status == 400 and "at most 100" in await r.text()
    assert core.outbox.list() == [] and server.received == []

    off_client, off_core = await web_client(**{"email.enabled": False})
    off_list = await (await off_client.get("/")).text()
    assert "Send selected by email" not in off_list and '<a href="/email">Mail</a>' not in off_list
    assert "Email is off" in await (await off_client.get("/email", params={"id": sid})).text()
    r = await off_client.post("/email", data=[("csrf", await csrf(off_client))] + good[1:], allow_redirects=False)
    assert r.status == 400 and "email is off" in await r.text()


async def test_the_outbox_page_retries_a_failed_message_and_refuses_bad_ids(web_client, smtp_server):
    server, client, core = await _mail_client(web_client, smtp_server)
    server.handler.data_answers = ["554 5.7.1 refused by policy"]
    task = asyncio.create_task(sender.run(core))
    try:
        sid = next(s.id for s in (await core.listing()).sessions if s.exportable)
        entry = await core.email_sessions([sid], ["txt"], ["alice@example.org"])
        await until(lambda: core.outbox.get(entry.id).state == "failed", "the message failed", in_thread=False)
        page = await (await client.get("/email")).text()
        row = re.search(rf'<tr data-id="{entry.id}">(.*?)</tr>', page, re.S).group(1)
        assert "554 5.7.1 refused by policy" in row and ">Send again</button>" in row and ">Cancel<" not in row
        action = f"/email/outbox/{entry.id}/retry"
        assert f'action="{action}"' in row

        r = await client.post(action, allow_redirects=False)
        assert r.status == 403 and core.outbox.get(entry.id).state == "failed"     # no CSRF token
        token = await csrf(client)
        for path, status, words in [(f"/email/outbox/{entry.id}/cancel", 400, "is failed already"),
                                    ("/email/outbox/0/retry", 400, "no outbox message id"),
                                    ("/email/outbox/%C2%B2/retry", 400, "no outbox message id"),   # a superscript 2
                                    ("/email/outbox/99999/retry", 400, "no message 99999 in the outbox"),
                                    (f"/email/outbox/{entry.id}/resend", 404, "")]:
            r = await client.post(path, data={"csrf": token}, allow_redirects=False)
            assert r.status == status and words in await r.text(), (path, r.status)
        assert core.outbox.get(entry.id).state == "failed" and server.handler.data_attempts == 1

        r = await client.post(action, data={"csrf": token}, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/email#outbox"
        await until(lambda: core.outbox.get(entry.id).state == "sent", "the retried message sent", in_thread=False)
        [mail] = server.received
        assert mail.rcpt_tos == ["alice@example.org"]
        row = re.search(rf'<tr data-id="{entry.id}">(.*?)</tr>',
                        await (await client.get("/email")).text(), re.S).group(1)
        assert "<td>sent</td>" in row and "<form" not in row      # nothing left to retry or cancel
    finally:
        task.cancel()


async def test_a_meeting_mailed_is_never_another_one_while_the_database_is_restored(web_client, smtp_server, tmp_path):
    """The recorder's database restored again and again (another recorder's backup: another meeting under the same
    session id) while the page's "Send by email" form and the API mail a meeting named by its uuid: every message
    asked for carries that meeting or fails saying it is no longer on this recorder; none carries the other meeting
    (the meeting was resolved, then the message queued by its number and its uuid taken from a fresh listing: a
    restore in between put the other meeting's uuid in the row, and the message carried the other meeting). Its
    recording, too large to attach, goes as a share link: that link serves this meeting's recording only."""
    import threading

    from tests.recorder_db import restored_pair, restoring, rounds

    lib = tmp_path / "swapped"
    sid, uuid, fine, secret = restored_pair(lib)
    server, client, core = await _mail_client(web_client, smtp_server, lib=lib, **{"email.max_message_mb": 0.01,
                                                                                    "email.oversize": "link"})
    core.set_web_url(f"http://127.0.0.1:{client.server.port}")      # (what serve() tells the daemon's core)
    task = asyncio.create_task(sender.run(core))
    token = await csrf(client)
    stop, swaps = threading.Event(), [0]
    answers = {"queued": 0, "gone": 0, "absent": 0, "other": 0}

    async def asker(n: int, offset: int) -> None:
        for i in rounds(n, swaps):
            key = uuid if (i + offset) % 3 else uuid.replace("-", "")[:8]      # its uuid, or its short id
            if (i + offset) % 2:
                r = await client.post(f"/sessions/{key}/email", allow_redirects=False,
                                      data=[("csrf", token), ("recipients", f"r{offset}-{i}@example.org"),
                                            ("formats", "txt"), ("formats", "audio")])
            else:
                r = await client.post(f"/api/v1/sessions/{key}/email", headers={"X-CSRF-Token": token},
                                      json={"recipients": [f"r{offset}-{i}@example.org"], "formats": ["txt", "audio"]})
            body = await r.text()
            answers["queued" if r.status in (202, 303) else "gone" if r.status == 410
                    else "absent" if r.status == 404 and "no session" in body else "other"] += 1

    swapper = threading.Thread(target=restoring, args=(lib, stop, swaps))   # (ends on a's: what is composed after
    swapper.start()                                                         # the restores is the meeting)
    try:
        try:
            await asyncio.gather(*(asker(16, k) for k in range(4)))
        finally:
            stop.set()
            await asyncio.to_thread(swapper.join)
        entries = core.outbox.list()
        assert len(entries) == answers["queued"], (answers, len(entries))
        await until(lambda: all(core.outbox.get(e.id).state.finished for e in entries), "every message sent or failed",
                    timeout=120, in_thread=False)
    finally:
        task.cancel()
    mails = {"right": 0, "wrong": 0, "other": 0}
    for mail in server.received:
        text = b"".join(mail.attachments().values()) + mail.text().encode() + str(mail.message["Subject"]).encode()
        linked = [await client.get(f"/s/{t}/audio") for t in re.findall(r"/s/([A-Za-z0-9_-]{24})/audio", mail.text())]
        served = [(r.status, await r.read()) for r in linked]       # (the database is a's again: the meeting's)
        mails["wrong" if b"layoffs" in text or b"Board meeting" in text or any(b != fine for _, b in served)
              else "right" if b"Lunch is on Friday" in text and served and all(st == 200 for st, _ in served)
              else "other"] += 1
    failed = [core.outbox.get(e.id) for e in entries if core.outbox.get(e.id).state == "failed"]
    assert swaps[0] > 100 and answers["queued"] > 0, (swaps, answers)
    assert mails["wrong"] == 0, (mails, answers)
    assert mails["other"] == 0 and answers["other"] == 0, (mails, answers)
    assert all("no longer on this recorder" in e.error for e in failed), [e.error for e in failed][:5]
    assert not any("layoffs" in e.subject or "Board meeting" in e.subject for e in core.outbox.list())
    assert mails["right"] + len(failed) == answers["queued"], (mails, len(failed), answers)
