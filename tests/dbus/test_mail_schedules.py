"""EmailSessions, ListOutbox, ListSchedules and NextScheduledRun on the real daemon over a private bus, and
`steno-exportctl email/outbox/schedules` against it; a reload adds and removes schedules."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time

from croniter import croniter
from dateutil import tz
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus

from steno_exportd.dbus import MANAGER_IFACE, ROOT_PATH
from tests.dbus.test_service_daemon import ERR, call
from tests.parts import wait_for
from tests.parts.daemon import make_library, require_core, write_config


def ctl(bus: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", bus, *args],
                          capture_output=True, text=True, timeout=60)


def next_local(expr: str) -> int:
    """The next run of a cron expression from now, microseconds since the epoch (as the daemon says it)."""
    return int(croniter(expr, dt.datetime.now(tz.tzlocal())).get_next(float) * 1e6)


def schedule_block(name: str, cron: str, target: str) -> str:
    return f'\n[[schedules]]\nname = "{name}"\ncron = "{cron}"\ntarget = "{target}"\nformats = ["txt"]\n'


async def test_mail_and_schedules_over_dbus_and_exportctl(tmp_path, private_bus, daemon_factory, smtp_server):
    require_core()
    server = smtp_server("none", auth=False)
    def start():                     # blocking: off the event loop
        make_library(tmp_path, sessions=2)
        (tmp_path / "exports").mkdir()
        cfg = write_config(tmp_path / "c.toml", tmp_path, private_bus, **{
            "email.enabled": "true", "email.smtp_host": '"127.0.0.1"', "email.smtp_port": str(server.port),
            "email.sender": '"steno@recorder.example"'})
        base = cfg.read_text()
        cfg.write_text(base + schedule_block("nightly", "0 2 * * *", str(tmp_path / "exports")))
        d = daemon_factory(cfg)
        d.wait_ready(timeout=30)
        return cfg, base
    cfg, base = await asyncio.to_thread(start)

    bus = await MessageBus(bus_address=private_bus).connect()
    try:
        [items] = (await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSchedules")).body
        [s] = items
        assert s["name"].value == "nightly" and s["when"].value == "0 2 * * *"
        assert s["next_run"].value == next_local("0 2 * * *") and s["last_run"].value == 0
        r = await call(bus, ROOT_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                       [MANAGER_IFACE, "NextScheduledRun"])
        assert r.body[0].value == s["next_run"].value

        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "EmailSessions", "asasasa{sv}",
                       [["1"], ["txt"], ["eve@example.org\r\nBcc: all@example.org"], {}])
        assert r.message_type == MessageType.ERROR and r.error_name == ERR + "InvalidArgs"
        assert "line break or control character" in r.body[0]
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "EmailSessions", "asasasa{sv}",
                       [["1"], ["txt"], ["a@example.org"], {"bcc": Variant("s", "x")}])
        assert r.error_name == ERR + "InvalidArgs" and "'bcc'" in r.body[0]
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "EmailSessions", "asasasa{sv}",
                       [["1"], ["txt", "json"], ["Alice <alice@example.org>"], {}])
        assert r.message_type == MessageType.METHOD_RETURN, r.body
        msg_id = r.body[0]
        await asyncio.to_thread(wait_for, lambda: server.received, 30, what="the mail")
        assert server.received[0].rcpt_tos == ["alice@example.org"]

        async def listed():
            return {e["id"].value: e for e in (await call(bus, ROOT_PATH, MANAGER_IFACE, "ListOutbox")).body[0]}
        for _ in range(100):
            entry = (await listed())[msg_id]
            if entry["state"].value == "sent":
                break
            await asyncio.sleep(0.1)
        assert entry["state"].value == "sent" and entry["delivered"].value == ["Alice <alice@example.org>"]
        assert entry["sessions"].value == [1] and entry["attempts"].value == 1
    finally:
        bus.disconnect()

    def by_ctl():                    # steno-exportctl runs: blocking, off the event loop
        r = ctl(private_bus, "email", "--to", "bob@", "--sessions", "1")
        assert r.returncode == 2 and "not an email address: 'bob@'" in r.stderr, r.stderr
        r = ctl(private_bus, "email", "--to", "bob@example.org", "--sessions", "1", "--formats", "txt")
        assert r.returncode == 0 and r.stdout.startswith("message 2 queued"), r.stdout + r.stderr
        wait_for(lambda: len(server.received) == 2, 30, what="the ctl's mail")
        wait_for(lambda: [e["state"] for e in json.loads(ctl(private_bus, "outbox", "--json").stdout)] == ["sent", "sent"],
                 30, what="both messages listed as sent")
        r = ctl(private_bus, "outbox")
        assert r.returncode == 0 and "sent" in r.stdout and "bob@example.org" in r.stdout

        r = ctl(private_bus, "schedules", "--json")
        assert [x["name"] for x in json.loads(r.stdout)] == ["nightly"]
        r = ctl(private_bus, "schedules")
        when = dt.datetime.fromtimestamp(next_local("0 2 * * *") / 1e6).strftime("%Y-%m-%d %H:%M")
        assert r.returncode == 0 and f"next {when}" in r.stdout, r.stdout

        # a reload adds one schedule and removes the other
        cfg.write_text(base + schedule_block("hourly", "15 * * * *", str(tmp_path / "exports")))
        assert ctl(private_bus, "reload").returncode == 0
        items = json.loads(ctl(private_bus, "schedules", "--json").stdout)
        assert [(x["name"], x["next_run"]) for x in items] == [("hourly", next_local("15 * * * *"))]
        cfg.write_text(base + schedule_block("bad", "0 25 * * *", str(tmp_path / "exports")))
        r = ctl(private_bus, "reload")
        assert r.returncode == 1 and "invalid cron expression '0 25 * * *'" in r.stderr, r.stderr
        assert [x["name"] for x in json.loads(ctl(private_bus, "schedules", "--json").stdout)] == ["hourly"]
        cfg.write_text(base)
        assert ctl(private_bus, "reload").returncode == 0
        assert ctl(private_bus, "schedules").stdout == "no schedules\n"
    await asyncio.to_thread(by_ctl)


async def test_a_failed_message_is_retried_and_a_waiting_one_cancelled_over_dbus_and_exportctl(
        tmp_path, private_bus, daemon_factory, smtp_server):
    require_core()
    server = smtp_server("none", auth=False)
    # the first try is refused for good, the retry for now (it waits an hour for its next try), the third goes
    server.handler.data_answers = ["554 5.7.1 refused by policy", "451 4.3.0 busy, try later"]

    def start():                     # blocking: off the event loop
        make_library(tmp_path, sessions=2)
        cfg = write_config(tmp_path / "c.toml", tmp_path, private_bus, **{
            "email.enabled": "true", "email.smtp_host": '"127.0.0.1"', "email.smtp_port": str(server.port),
            "email.sender": '"steno@recorder.example"', "email.retry_initial_seconds": "3600"})
        daemon_factory(cfg).wait_ready(timeout=30)
    await asyncio.to_thread(start)

    bus = await MessageBus(bus_address=private_bus).connect()
    try:
        async def entry(msg_id: int, state: str) -> dict:
            for _ in range(300):
                found = {e["id"].value: e for e in (await call(bus, ROOT_PATH, MANAGER_IFACE, "ListOutbox")).body[0]}
                if found[msg_id]["state"].value == state:
                    return {k: v.value for k, v in found[msg_id].items()}
                await asyncio.sleep(0.1)
            raise AssertionError(f"message {msg_id} never {state}: {found[msg_id]}")

        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "EmailSessions", "asasasa{sv}",
                       [["1"], ["txt"], ["Alice <alice@example.org>"], {}])
        msg_id = r.body[0]
        failed = await entry(msg_id, "failed")
        assert "554 5.7.1 refused by policy" in failed["error"] and server.received == []

        # ids that name no message, and a failed message that is no longer waiting, are InvalidArgs with the reason
        for member, bad, words in (("RetryMail", 0, "no outbox message id"), ("CancelMail", 0, "no outbox message id"),
                                   ("RetryMail", msg_id + 100, f"no message {msg_id + 100} in the outbox"),
                                   ("CancelMail", msg_id + 100, f"no message {msg_id + 100} in the outbox"),
                                   ("CancelMail", msg_id, f"message {msg_id} is failed already")):
            r = await call(bus, ROOT_PATH, MANAGER_IFACE, member, "t", [bad])
            assert r.message_type == MessageType.ERROR and r.error_name == ERR + "InvalidArgs", (member, bad, r.body)
            assert words in r.body[0], (member, bad, r.body)

        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "RetryMail", "t", [msg_id])
        assert r.message_type == MessageType.METHOD_RETURN, r.body
        assert r.body[0]["state"].value == "composing" and r.body[0]["error"].value == ""
        waiting = await entry(msg_id, "queued")      # the second answer: 4xx, the next try in an hour
        assert "451 4.3.0" in waiting["error"] and waiting["attempts"] == 1
        assert waiting["next_attempt"] > (time.time() + 3000) * 1e6
    finally:
        bus.disconnect()

    def by_ctl():                    # steno-exportctl runs: blocking, off the event loop
        r = ctl(private_bus, "outbox", "cancel", str(msg_id))
        assert r.returncode == 0 and f"{msg_id:>4}  cancelled" in r.stdout, r.stdout + r.stderr
        attempts = server.handler.data_attempts
        assert attempts == 2 and server.received == []
        [listed] = json.loads(ctl(private_bus, "outbox", "--json").stdout)
        assert (listed["state"], listed["error"]) == ("cancelled", "cancelled")
        r = ctl(private_bus, "outbox", "cancel", str(msg_id))
        assert r.returncode == 2 and f"message {msg_id} is cancelled already" in r.stderr, r.stderr

        r = ctl(private_bus, "outbox", "retry", str(msg_id), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["state"] == "composing", r.stdout + r.stderr
        [mail] = wait_for(lambda: server.received, 30, what="the retried message")
        assert mail.rcpt_tos == ["alice@example.org"] and "transcript" in next(iter(mail.attachments()))
        wait_for(lambda: json.loads(ctl(private_bus, "outbox", "--json").stdout)[0]["state"] == "sent", 30,
                 what="the message listed as sent")
        r = ctl(private_bus, "outbox", "retry", str(msg_id))
        assert r.returncode == 2 and f"message {msg_id} was sent; there is nothing to retry" in r.stderr, r.stderr
        for args, words in ((["retry", "x1"], "not a whole number: 'x1'"), (["cancel", "0"], "no outbox message id"),
                            (["retry", "77"], "no message 77 in the outbox")):
            r = ctl(private_bus, "outbox", *args)
            assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
        assert server.handler.data_attempts == 3 and len(server.received) == 1
    await asyncio.to_thread(by_ctl)
