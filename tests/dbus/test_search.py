"""SearchSessions over D-Bus and `steno-exportctl search`: the real daemon on a private bus, a real
recorder database, the index the daemon builds and keeps current by itself."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from steno_exportd.dbus import BUS_NAME, MANAGER_IFACE, ROOT_PATH
from tests.parts import until
from tests.parts.daemon import REPO, require_core, write_config
from tests.recorder_db import meeting, meetings_to_search

INVALID = "org.silentsteno.Export1.Error.InvalidArgs"


@pytest.fixture
def searching(tmp_path, private_bus, daemon_factory):
    """(daemon, bus address, recorder DB) with every meeting indexed."""
    require_core()
    rec = meetings_to_search(tmp_path / "library")
    (tmp_path / "exports").mkdir()
    d = daemon_factory(write_config(tmp_path / "config.toml", tmp_path, private_bus))
    d.wait_ready(timeout=30)
    try:
        yield d, private_bus, rec
    finally:
        rec.close()


async def search(bus, query, limit=20, timeout=10.0):
    """SearchSessions -> the reply message (a method return or an error) and its round trip."""
    t0 = time.perf_counter()
    r = await bus.call(Message(destination=BUS_NAME, path=ROOT_PATH, interface=MANAGER_IFACE,
                               member="SearchSessions", signature="su", body=[query, limit]))
    return r, time.perf_counter() - t0


def plain(v):
    return {k: plain(x.value) for k, x in v.items()} if isinstance(v, dict) else \
        [plain(x) for x in v] if isinstance(v, list) else v


async def found(bus, query, limit=20):
    r, _ = await search(bus, query, limit)
    assert r.message_type == MessageType.METHOD_RETURN, (query, r.body)
    sessions, total, pending = r.body
    return [plain(s) for s in sessions], total, pending


async def indexed(bus) -> None:
    """Wait until the daemon has indexed the recorder's meetings (it starts on its own at start-up)."""
    async def current():
        _, total, pending = await found(bus, "budget")
        return total == 1 and pending == 0
    await until(current, "the daemon to index the recorder", timeout=30)


def marked(hit) -> list[str]:
    return [hit["snippet"][a:b] for a, b in hit["marks"]]


async def test_search_sessions_finds_words_said_accents_and_scripts(searching):
    d, address, rec = searching
    bus = await MessageBus(bus_address=address).connect()
    try:
        await indexed(bus)

        sessions, total, _ = await found(bus, "photosynthesis")
        assert total == 1 and [s["id"] for s in sessions] == [rec.ids["budget"]]
        s = sessions[0]
        assert s["title"] == "Budget review" and s["matches"] == 1 and s["uuid"]
        hit = s["hits"][0]
        assert (hit["kind"], hit["seconds"], hit["speaker"]) == ("transcript", 1234.5, "Carla")
        assert marked(hit) == ["photosynthesis"]

        sessions, _, _ = await found(bus, "zurich")            # typed without the accent
        assert [s["id"] for s in sessions] == [rec.ids["intl"]]
        spoken = [h for h in sessions[0]["hits"] if h["kind"] == "transcript"]
        assert spoken and spoken[0]["seconds"] == 42.0 and marked(spoken[0]) == ["Zürich"]

        sessions, _, _ = await found(bus, "начнем")           # ё typed as е
        hit = sessions[0]["hits"][0]
        assert (sessions[0]["id"], hit["seconds"], hit["speaker"], marked(hit)) == \
            (rec.ids["intl"], 3.0, "Анна", ["Начнём"])

        sessions, total, _ = await found(bus, "meeting", limit=1)   # said in two meetings; one asked for
        assert total == 2 and len(sessions) == 1

        sessions, total, _ = await found(bus, '"budget sheet"')
        assert total == 1 and "<script>" in sessions[0]["hits"][0]["snippet"]   # plain text, as said

        # the recorder goes on recording: the daemon finds the new meeting by itself
        new = meeting(rec, "Garden walk", [(17.0, "Ivy", "The gazebo needs paint.")])

        async def gazebo():
            return (await found(bus, "gazebo"))[0]
        sessions = await until(gazebo, "the new meeting in the index", timeout=30)
        assert [s["id"] for s in sessions] == [new] and sessions[0]["hits"][0]["seconds"] == 17.0
    finally:
        bus.disconnect()


@pytest.mark.parametrize("query, limit, message", [
    ("x" * 100_000, 20, "search text too long (100,000 characters; at most 200)"),
    ("", 20, "nothing to search for: type a word"),
    ("*** -- ()", 20, "nothing to search for: type a word"),
    (" ".join(f"w{i}" for i in range(13)), 20, "too many words (13; at most 12)"),
    ("budget", 0, "limit must be a whole number from 1 to 50, not 0"),
    ("budget", 51, "limit must be a whole number from 1 to 50, not 51"),
    ("budget", 2**32 - 1, "limit must be a whole number from 1 to 50, not 4294967295"),
])
async def test_bad_search_arguments_are_invalid_args_with_the_reason(searching, query, limit, message):
    d, address, _ = searching
    bus = await MessageBus(bus_address=address).connect()
    try:
        r, took = await search(bus, query, limit)
        assert r.message_type == MessageType.ERROR and r.error_name == INVALID, r.body
        assert r.body == [message]
        assert took < 1.0, f"refusing took {took:.3f}s"      # the target is ~10 ms; the machine is shared
        await indexed(bus)                                    # and the daemon goes on answering (the index
        sessions, total, _ = await found(bus, "budget")       # may still be being built: pending > 0)
        assert total == 1 and sessions[0]["title"] == "Budget review"
        assert d.proc.poll() is None
    finally:
        bus.disconnect()


async def ctl(address, *args):
    """steno-exportctl search, run in a thread (a child's whole run would block the loop)."""
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "steno_exportd.exportctl", "--bus", address, "search", *args],
                                   capture_output=True, text=True, timeout=30, cwd=REPO)


async def test_exportctl_search(searching):
    d, address, rec = searching
    bus = await MessageBus(bus_address=address).connect()
    try:
        await indexed(bus)
    finally:
        bus.disconnect()

    r = await ctl(address, "zurich", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["total"] == 1 and out["pending"] == 0
    assert out["sessions"][0]["id"] == rec.ids["intl"] and out["sessions"][0]["title"] == "Встреча с партнёрами"
    spoken = [h for h in out["sessions"][0]["hits"] if h["kind"] == "transcript"][0]
    assert spoken["seconds"] == 42.0 and spoken["speaker"] == "José"

    r = await ctl(address, "photosynthesis")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[0] == str(rec.ids["budget"]) and "Budget review" in lines[0] and "(1 match)" in lines[0]
    assert lines[1].strip() == "0:20:34 Carla: Let us talk about [photosynthesis] in the lab."
    assert lines[-1] == "1 session(s) found"

    r = await ctl(address, "meeting", "--limit", "1")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "2 session(s) found, showing 1", r.stdout

    r = await ctl(address, "quokka")
    assert r.returncode == 0 and r.stdout == "0 session(s) found\n"

    for args, message in ((["x" * 300], "search text too long (300 characters; at most 200)"),
                          (["budget", "--limit", "99"], "limit must be a whole number from 1 to 50, not 99"),
                          (["!!!"], "nothing to search for: type a word")):
        r = await ctl(address, *args)
        assert r.returncode == 2 and r.stderr == f"steno-exportctl: {message}\n" and not r.stdout, (args, r)
    r = await ctl(address, "budget", "--limit", "-1")
    assert r.returncode == 2 and "not a whole number: '-1'" in r.stderr and "Traceback" not in r.stderr
