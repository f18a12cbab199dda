"""The whole D-Bus API against the real daemon subprocess (real core, real library) on a private bus."""
from __future__ import annotations

import asyncio
import re
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from steno_exportd.dbus import BUS_NAME, JOB_IFACE, MANAGER_IFACE, ROOT_PATH
from tests.parts.daemon import REPO, make_library, require_core, write_config

ERR = "org.silentsteno.Export1.Error."


async def call(bus, path, iface, member, sig="", body=(), dest=BUS_NAME):
    return await bus.call(Message(destination=dest, path=path, interface=iface, member=member,
                                  signature=sig, body=list(body)))


def _norm(el: ET.Element) -> str:
    """An interface element, children sorted, for comparison."""
    def key(e: ET.Element) -> str:
        return e.tag + repr(sorted(e.attrib.items()))
    def walk(e: ET.Element) -> tuple:
        return (e.tag, tuple(sorted(e.attrib.items())), tuple(sorted((walk(c) for c in e), key=repr)))
    return repr(walk(el))


def documented_interfaces() -> dict[str, str]:
    text = (REPO / "docs" / "dbus-api.md").read_text()
    out = {}
    for block in re.findall(r"```xml\n(.*?)```", text, re.S):
        el = ET.fromstring(block)
        out[el.get("name")] = _norm(el)
    return out


@pytest.fixture
def setup(tmp_path, private_bus, daemon_factory):
    require_core()
    make_library(tmp_path, sessions=4)
    (tmp_path / "exports").mkdir()
    cfg = write_config(tmp_path / "config.toml", tmp_path, private_bus)
    d = daemon_factory(cfg)
    d.wait_ready(timeout=30)
    return tmp_path, private_bus, d


async def _client(address):
    bus = await MessageBus(bus_address=address).connect()
    await call(bus, "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", ["type='signal'"],
               dest="org.freedesktop.DBus")
    return bus


async def test_ready_means_name_owned_and_introspection_matches_docs(setup):
    tmp, address, d = setup
    bus = await _client(address)
    try:
        r = await call(bus, "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s", [BUS_NAME],
                       dest="org.freedesktop.DBus")
        assert r.body == [True]
        docs = documented_interfaces()
        r = await call(bus, ROOT_PATH, "org.freedesktop.DBus.Introspectable", "Introspect")
        live = {el.get("name"): _norm(el) for el in ET.fromstring(r.body[0]).findall("interface")}
        assert "org.freedesktop.DBus.ObjectManager" in live
        assert live[MANAGER_IFACE] == docs[MANAGER_IFACE]
        sessions = (await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}", [{}])).body[0]
        from steno_exportd.library import Library
        lib = Library(tmp / "library" / "silent_steno.db")
        expected = {x.id for x in lib.list_sessions()}
        lib.close()
        assert {v["id"].value for v in sessions} == expected and len(expected) >= 4
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}",
                       [[str(sessions[0]["id"].value)], ["txt"], str(tmp / "exports"), {}])
        assert r.message_type == MessageType.METHOD_RETURN, r.body
        r = await call(bus, r.body[0], "org.freedesktop.DBus.Introspectable", "Introspect")
        live = {el.get("name"): _norm(el) for el in ET.fromstring(r.body[0]).findall("interface")}
        assert live[JOB_IFACE] == docs[JOB_IFACE]
        # Device objects need a stick: the documented XML is compared with the exported class instead.
        from steno_exportd.dbus.objects import Device
        assert _norm(Device(None, {}).introspect().to_xml()) == docs["org.silentsteno.Export1.Device"]
    finally:
        bus.disconnect()


async def test_typed_errors(setup):
    tmp, address, d = setup
    bus = await _client(address)
    try:
        out = str(tmp / "exports")
        cases = [
            ("GetSession", "s", ["999999"], "NotFound"),
            ("ExportSessions", "asassa{sv}", [["999999"], ["txt"], out, {}], "NotFound"),
            ("ExportSessions", "asassa{sv}", [["1"], ["nosuchformat"], out, {}], "NotFound"),
            ("ExportSessions", "asassa{sv}", [["1"], ["txt"], ROOT_PATH + "/devices/nope", {}], "NotFound"),
            ("ExportSessions", "asassa{sv}", [["1"], ["txt"], str(tmp), {}], "NotAuthorized"),
            ("ExportSessions", "asassa{sv}", [["1"], ["txt"], "/etc", {}], "NotAuthorized"),
            ("ExportSessions", "asassa{sv}", [[], ["txt"], out, {}], "InvalidArgs"),
            ("ListSessions", "a{sv}", [{"nope": Variant("b", True)}], "InvalidArgs"),
        ]
        for member, sig, body, err in cases:
            r = await call(bus, ROOT_PATH, MANAGER_IFACE, member, sig, body)
            assert r.message_type == MessageType.ERROR and r.error_name == ERR + err, (member, body, r.body)
            assert r.body and r.body[0], "errors carry a readable message"
        assert d.proc.poll() is None
    finally:
        bus.disconnect()


def test_a_duration_past_int64_still_lists_every_session(tmp_path, private_bus, daemon_factory):
    """The recorder wrote 1e19 (a REAL) as a duration: D-Bus's 'x' holds at most 2**63 - 1, and marshalling
    the listing failed, so the touchscreen got an error instead of any session."""
    def change(conn):
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("UPDATE sessions SET duration_seconds = 1e19 WHERE id = 2")
    session = _lists_every_session(tmp_path, private_bus, daemon_factory, change)
    assert any("duration_seconds" in p for p in session["problems"].value)


def _lists_every_session(tmp_path, private_bus, daemon_factory, change) -> dict:
    """A daemon on a library of 4 sessions, the second one ``change``d in the database: ListSessions lists them
    all and GetSession answers for the second. Its dictionary."""
    import sqlite3
    require_core()
    db = make_library(tmp_path, sessions=4)
    with sqlite3.connect(db) as conn:
        change(conn)
        every = [row[0] for row in conn.execute("SELECT id FROM sessions")]
    (tmp_path / "exports").mkdir()
    d = daemon_factory(write_config(tmp_path / "config.toml", tmp_path, private_bus))
    d.wait_ready(timeout=30)

    async def check():
        bus = await _client(private_bus)
        try:
            r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}", [{}])
            assert r.message_type == MessageType.METHOD_RETURN, r.body
            assert sorted(s["id"].value for s in r.body[0]) == sorted(every)
            r = await call(bus, ROOT_PATH, MANAGER_IFACE, "GetSession", "s", ["2"])
            assert r.message_type == MessageType.METHOD_RETURN, r.body
            return r.body[0]
        finally:
            bus.disconnect()
    session = asyncio.run(check())
    assert d.proc.poll() is None
    return session


def test_a_nul_in_a_title_still_lists_every_session(tmp_path, private_bus, daemon_factory):
    """SQLite text may hold NUL; a D-Bus string may not."""
    def change(conn):
        conn.execute("UPDATE sessions SET title = ?, location = ? WHERE id = 2", ("Budget\x00review", "Room\x001"))
        conn.execute("UPDATE participants SET name = ? WHERE session_id = 2", ("Al\x00ice",))
    _lists_every_session(tmp_path, private_bus, daemon_factory, change)


async def test_export_object_manager_and_rate_bounded_progress(setup):
    tmp, address, d = setup
    bus = await _client(address)
    signals: list = []
    bus.add_message_handler(lambda m: signals.append((time.monotonic(), m)) if m.message_type == MessageType.SIGNAL else None)
    try:
        sessions = (await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}",
                               [{"exportable_only": Variant("b", True)}])).body[0]
        # the demo library has a session whose recording is missing: that one would fail the job
        from steno_exportd.library import Library
        lib = Library(tmp / "library" / "silent_steno.db")
        ids = [str(s["id"].value) for s in sessions if lib.get_session(s["id"].value).audio is not None]
        lib.close()
        assert len(ids) >= 3
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}",
                       [ids, ["txt", "html", "json", "audio"], str(tmp / "exports"), {}])
        assert r.message_type == MessageType.METHOD_RETURN, r.body
        job = r.body[0]
        objs = (await call(bus, ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")).body[0]
        assert JOB_IFACE in objs[job], "the job is on the ObjectManager while it runs"
        deadline = time.monotonic() + 60
        while not any(m.member == "Completed" and m.path == job for _, m in signals):
            assert time.monotonic() < deadline, "no Completed signal"
            await asyncio.sleep(0.05)
        done = [m for _, m in signals if m.member == "Completed" and m.path == job][0]
        assert done.body[0] is True, done.body
        props = (await call(bus, job, "org.freedesktop.DBus.Properties", "GetAll", "s", [JOB_IFACE])).body[0]
        assert props["State"].value == "completed" and props["Progress"].value == 1.0
        assert len(props["Results"].value) == len(ids)
        changes = [(t, m) for t, m in signals if m.member == "PropertiesChanged" and m.path == job]
        assert changes, "PropertiesChanged seen"
        progress = [t for t, m in changes if "BytesDone" in m.body[1] and "State" not in m.body[1]]
        if len(progress) > 2:
            assert (len(progress) - 1) / (progress[-1] - progress[0]) <= 4.5
        assert any(m.member == "InterfacesAdded" and m.body[0] == job and m.path == ROOT_PATH for _, m in signals)
        # linger (2 s in the test config), then InterfacesRemoved and gone from the ObjectManager
        deadline = time.monotonic() + 10
        while not any(m.member == "InterfacesRemoved" and m.body[0] == job for _, m in signals):
            assert time.monotonic() < deadline, "the finished job never left the bus"
            await asyncio.sleep(0.1)
        objs = (await call(bus, ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")).body[0]
        assert job not in objs
        assert list((tmp / "exports").rglob("*.txt"))
    finally:
        bus.disconnect()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.parent != root}   # session files only: manifests live at the root


async def test_sigterm_mid_export_exits_0_without_partial_files(setup, daemon_factory):
    tmp, address, d = setup
    bus = await _client(address)
    ref, out = tmp / "exports" / "ref", tmp / "exports" / "cut"
    try:
        ids = [str(s["id"].value) for s in (await call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}",
                [{"exportable_only": Variant("b", True)}])).body[0]]
        fmts = ["txt", "json", "audio"]
        for target in (ref, out):
            target.mkdir()
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [ids, fmts, str(ref), {}])
        job = r.body[0]
        deadline = time.monotonic() + 60
        while (await call(bus, job, "org.freedesktop.DBus.Properties", "Get", "ss",
                          [JOB_IFACE, "State"])).body[0].value not in ("completed", "failed"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        r = await call(bus, ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [ids, fmts, str(out), {}])
        job = r.body[0]
        deadline = time.monotonic() + 30
        while (await call(bus, job, "org.freedesktop.DBus.Properties", "Get", "ss",
                          [JOB_IFACE, "State"])).body[0].value == "queued":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        bus.disconnect()
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert await asyncio.to_thread(d.wait_exit, 5) == 0
    assert time.monotonic() - t0 < 5
    reference = _files(ref)
    for rel, data in _files(out).items():
        if rel in reference:
            assert data == reference[rel], f"{rel}: a partial file under its final name"


def test_demo_mode_private_bus_and_ctl(tmp_path):
    """`run --demo` with dbus.bus = "session" and no session bus: a private bus, and ctl reaches the daemon."""
    import os
    import subprocess
    import sys
    from tests.parts import require_tool, wait_for
    require_core()
    require_tool("dbus-daemon")
    make_library(tmp_path, sessions=3)
    cfg = write_config(tmp_path / "config.toml", tmp_path, "session")
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "steno_exportd", "--config", str(cfg), "run", "--demo"],
                             stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        line = wait_for(lambda: re.search(r"steno-exportctl --bus (\S+) status", out.read_text()),
                        timeout=30, what="the demo's steno-exportctl hint")
        r = subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", line.group(1), "sessions", "--json"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        listed = __import__("json").loads(r.stdout)
        from steno_exportd.library import Library
        lib = Library(tmp_path / "library" / "silent_steno.db")
        assert {x["id"] for x in listed} == {x.id for x in lib.list_sessions()}
        lib.close()
    finally:
        os.killpg(p.pid, signal.SIGINT)     # Ctrl-C at a terminal: the whole foreground process group
        assert p.wait(10) == 0, out.read_text()
    shown = out.read_text()
    assert "Traceback" not in shown and "ERROR" not in shown.split("stopping", 1)[-1], shown


def test_a_stop_after_the_bus_went_away_is_quiet(tmp_path, daemon_factory):
    """The bus daemon gone first (a demo's Ctrl-C reaches its private bus too; a restarted dbus): the daemon's
    stop says nothing of a lost message and exits 0 (it tried to release its name on the closed socket)."""
    from tests.parts import wait_for
    from tests.parts.dbus import PrivateBus
    require_core()
    make_library(tmp_path, sessions=2)
    (tmp_path / "dbus").mkdir()
    bus = PrivateBus(tmp_path / "dbus")
    try:
        d = daemon_factory(write_config(tmp_path / "config.toml", tmp_path, bus.address))
        d.wait_ready(timeout=30)
    finally:
        bus.stop()
    wait_for(lambda: "connection to the" in d.log(), timeout=10, what="one line: the bus was lost")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(10) == 0, d.log()
    after = d.log().split("stopping", 1)[-1]
    assert "Traceback" not in after and "ERROR" not in after, after


async def test_a_call_running_past_the_stop_grace_ends_in_one_line(tmp_path, private_bus, daemon_factory):
    """SIGTERM while a D-Bus call is still working (ListSessions waiting out the recorder's lock, its retries
    with backoff: ~12 s): the stop waits service.STOP_GRACE for it, then the call is ended with one log line
    naming it, no traceback, and the daemon exits 0 within its stop bound."""
    import sqlite3

    from steno_exportd.dbus.service import STOP_GRACE
    require_core()
    db = await asyncio.to_thread(make_library, tmp_path, 3)
    c = sqlite3.connect(db)                 # a rollback journal: the recorder's EXCLUSIVE lock blocks readers
    c.execute("PRAGMA journal_mode=DELETE")
    c.close()
    (tmp_path / "exports").mkdir()
    cfg = write_config(tmp_path / "config.toml", tmp_path, private_bus,
                       **{"recorder.lock_timeout": "0.2", "export.retries": "6"})
    d = daemon_factory(cfg)
    await asyncio.to_thread(d.wait_ready, 30)
    bus = await MessageBus(bus_address=private_bus).connect()
    recorder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        recorder.execute("BEGIN EXCLUSIVE")
        slow = asyncio.ensure_future(call(bus, ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}", [{}]))
        await asyncio.sleep(1.0)
        assert not slow.done(), "the call was not slow"
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        assert await asyncio.to_thread(d.wait_exit, 10) == 0, d.log()
        took = time.monotonic() - t0
        assert STOP_GRACE <= took < 5, f"stopped after {took:.1f} s (grace {STOP_GRACE} s, bound 5 s)"
        r = await asyncio.wait_for(slow, 5)
        assert r.message_type == MessageType.ERROR and r.error_name == ERR + "Failed" and "stopping" in r.body[0], \
            (r.error_name, r.body)
    finally:
        recorder.close()
        bus.disconnect()
    after = d.log().split("stopping", 1)[-1]
    assert "Traceback" not in after, after
    lines = [x for x in after.splitlines() if "ListSessions" in x]
    assert len(lines) == 1 and "still running" in lines[0], after
