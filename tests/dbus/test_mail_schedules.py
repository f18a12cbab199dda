"""EmailSessions, ListOutbox, ListSchedules and NextScheduledRun on the real daemon over a private bus, and
`steno-exportctl email/outbox/schedules` against it; a reload adds and removes schedules."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys

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


async def actl(bus: str, *args: str) -> subprocess.CompletedProcess:
    """ctl off the event loop (the daemon under test answers on it too)."""
    return await asyncio.to_thread(ctl, bus, *args)


def next_local(expr: str) -> int:
    """The next run of a cron expression from now, microseconds since the epoch (as the daemon says it)."""
    return int(croniter(expr, dt.datetime.now(tz.tzlocal())).get_next(float) * 1e6)


def schedule_block(name: str, cron: str, target: str) -> str:
    return f'\n[[schedules]]\nname = "{name}"\ncron = "{cron}"\ntarget = "{target}"\nformats = ["txt"]\n'


async def test_mail_and_schedules_over_dbus_and_exportctl(tmp_path, private_bus, daemon_factory, smtp_server):
    require_core()
    server = smtp_server("none", auth=False)
    await asyncio.to_thread(make_library, tmp_path, sessions=2)
    (tmp_path / "exports").mkdir()
    cfg = write_config(tmp_path / "c.toml", tmp_path, private_bus, **{
        "email.enabled": "true", "email.smtp_host": '"127.0.0.1"', "email.smtp_port": str(server.port),
        "email.sender": '"steno@recorder.example"'})
    base = cfg.read_text()
    cfg.write_text(base + schedule_block("nightly", "0 2 * * *", str(tmp_path / "exports")))
    d = await asyncio.to_thread(daemon_factory, cfg)
    await asyncio.to_thread(d.wait_ready, timeout=30)

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

    r = await actl(private_bus, "email", "--to", "bob@", "--sessions", "1")
    assert r.returncode == 2 and "not an email address: 'bob@'" in r.stderr, r.stderr
    r = await actl(private_bus, "email", "--to", "bob@example.org", "--sessions", "1", "--formats", "txt")
    assert r.returncode == 0 and r.stdout.startswith("message 2 queued"), r.stdout + r.stderr
    await asyncio.to_thread(wait_for, lambda: len(server.received) == 2, 30, what="the ctl's mail")
    await asyncio.to_thread(
        wait_for, lambda: [e["state"] for e in json.loads(ctl(private_bus, "outbox", "--json").stdout)] == ["sent", "sent"],
        30, what="both messages listed as sent")
    r = await actl(private_bus, "outbox")
    assert r.returncode == 0 and "sent" in r.stdout and "bob@example.org" in r.stdout

    r = await actl(private_bus, "schedules", "--json")
    assert [x["name"] for x in json.loads(r.stdout)] == ["nightly"]
    r = await actl(private_bus, "schedules")
    when = dt.datetime.fromtimestamp(next_local("0 2 * * *") / 1e6).strftime("%Y-%m-%d %H:%M")
    assert r.returncode == 0 and f"next {when}" in r.stdout, r.stdout

    # a reload adds one schedule and removes the other
    cfg.write_text(base + schedule_block("hourly", "15 * * * *", str(tmp_path / "exports")))
    assert (await actl(private_bus, "reload")).returncode == 0
    items = json.loads((await actl(private_bus, "schedules", "--json")).stdout)
    assert [(x["name"], x["next_run"]) for x in items] == [("hourly", next_local("15 * * * *"))]
    cfg.write_text(base + schedule_block("bad", "0 25 * * *", str(tmp_path / "exports")))
    r = await actl(private_bus, "reload")
    assert r.returncode == 1 and "invalid cron expression '0 25 * * *'" in r.stderr, r.stderr
    assert [x["name"] for x in json.loads((await actl(private_bus, "schedules", "--json")).stdout)] == ["hourly"]
    cfg.write_text(base)
    assert (await actl(private_bus, "reload")).returncode == 0
    assert (await actl(private_bus, "schedules")).stdout == "no schedules\n"
