"""mDNS announcement of the recorder's share through a real avahi-daemon on the real system bus."""
from __future__ import annotations

import asyncio
import logging
import secrets

from steno_exportd.samba.announce import Announcer
from tests.parts import in_thread, until
from tests.parts.dbus import private_bus, stop_with_answer  # noqa: F401 - private_bus: a fixture


def _name() -> str:
    return f"steno-test-{secrets.token_hex(3)}"


async def test_announced_while_on_withdrawn_when_off(avahi):
    name = _name()
    a = Announcer()
    task = asyncio.create_task(a.run())
    try:
        a.set(True, name)
        await until(lambda: name in avahi.names(), "the share on mDNS")
        entries = [e for e in await asyncio.to_thread(avahi.browse) if e["name"] == name]
        assert {e["port"] for e in entries} == {445}
        await until(lambda: name in avahi.names("_device-info._tcp"), "the Finder device entry")
        assert any("model=MacSamba" in e["txt"] for e in await asyncio.to_thread(avahi.browse, "_device-info._tcp")
                   if e["name"] == name)
        a.set(False, name)
        await until(lambda: name not in avahi.names(), "the announcement to go")
        renamed = _name()
        a.set(True, name)
        await until(lambda: name in avahi.names(), "announced again")
        a.set(True, renamed)                     # the configured name changed
        await until(lambda: renamed in avahi.names() and name not in avahi.names(), "the new name only")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await until(lambda: renamed not in avahi.names(), "withdrawn when the daemon stops")


async def test_follows_avahi_stopped_and_started(avahi, caplog):
    caplog.set_level(logging.INFO, logger="steno_exportd.samba.announce")
    name = _name()
    await asyncio.to_thread(avahi.stop)
    a = Announcer()
    task = asyncio.create_task(a.run())
    try:
        a.set(True, name)
        await until(lambda: "avahi-daemon is not running" in caplog.text, "a clear log line")
        assert not task.done()
        await asyncio.to_thread(avahi.start)     # avahi comes up later: announced without a restart
        await until(lambda: name in avahi.names(), "the share once avahi runs")
        await asyncio.to_thread(avahi.stop)      # and after an avahi restart, again
        await asyncio.to_thread(avahi.start)
        await until(lambda: name in avahi.names(), "the share after avahi restarted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "Traceback" not in caplog.text


async def test_a_name_taken_on_the_network_gets_avahis_alternative(avahi):
    """Two recorders with the same name on one LAN: the second shows as 'steno #2', not nothing."""
    name = _name()
    async with in_thread(avahi.other_host(name)):
        a = Announcer()
        task = asyncio.create_task(a.run())
        try:
            a.set(True, name)
            await until(lambda: a.published == f"{name} #2", "the alternative name", 30)
            await until(lambda: f"{name} #2" in avahi.names(), "announced under the alternative")
            assert {e["host"] for e in await asyncio.to_thread(avahi.browse)
                    if e["name"] == name} == {"steno-other-host.local"}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_host_whose_name_is_not_utf8_is_announced_under_it_as_text(avahi, caplog, monkeypatch):
    """Announced under the host name by default; the kernel takes any bytes as one, and one not UTF-8 (Python's
    surrogate escapes) could not be sent over D-Bus: the share was never announced ("share not announced over
    mDNS: 'utf-8' codec can't encode"), Finder never listed the recorder. Now it is announced under the host's
    name as text (identity.host_name())."""
    import socket
    caplog.set_level(logging.INFO, logger="steno_exportd.samba.announce")
    prefix = _name()
    monkeypatch.setattr(socket, "gethostname", lambda: f"{prefix}\udcff42")
    a = Announcer()
    task = asyncio.create_task(a.run())
    try:
        a.set(True)
        await until(lambda: any(n.startswith(prefix) for n in avahi.names()) or "not announced" in caplog.text,
                    "the share on mDNS")
        assert "not announced" not in caplog.text, caplog.text
        assert a.published == f"{prefix}\ufffd42"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await until(lambda: not any(n.startswith(prefix) for n in avahi.names()), "withdrawn when the daemon stops")


async def test_a_stop_that_comes_with_the_bus_answer_ends_the_announcer(private_bus, monkeypatch):
    """The daemon stops in the very loop turns in which the bus answers whether avahi runs: the announcer ends.
    Python 3.11's asyncio.wait_for, which it waited with, returned the answer and forgot the stop: the announcer went
    on to wait for the next change, for ever, and the daemon's stop with it. (A private bus without avahi: the
    answer is "not running".)"""
    a = Announcer(bus_address=private_bus)
    task: list[asyncio.Task] = []
    asked = stop_with_answer(monkeypatch, "NameHasOwner", task)     # the real bus's answer, the stop in its turn
    try:
        task.append(asyncio.create_task(a.run()))
        a.set(True, _name())
        await asyncio.wait(task, timeout=30)
        assert [m.body[0] for m in asked] == ["org.freedesktop.Avahi"]
        assert task[0].cancelled(), f"the stop was lost: the announcer is {task[0]}"
    finally:
        task[0].cancel()
        await asyncio.gather(task[0], return_exceptions=True)
