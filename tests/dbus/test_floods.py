"""A steno-ui member (or root by mistake) flooding the daemon with ExportSessions from several connections:
what may wait is bounded, the rest is refused at once with a human message, and another caller is still
answered. The real daemon on a real private bus."""
from __future__ import annotations

import asyncio
import signal
import time

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from steno_exportd.dbus import BUS_NAME, MANAGER_IFACE, ROOT_PATH
from steno_exportd.core import MAX_WAITING_JOBS
from tests.parts.daemon import make_library, write_config

BUSY = "org.silentsteno.Export1.Error.Busy"
CONNECTIONS, CALLS = 4, 100       # per connection: under the bus's limit of pending replies (128)


async def _call(bus: MessageBus, member: str, sig: str = "", body: list = (), timeout: float = 30.0,
                path: str = ROOT_PATH, iface: str = MANAGER_IFACE) -> tuple[Message, float]:
    t0 = time.perf_counter()
    r = await asyncio.wait_for(bus.call(Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                                                signature=sig, body=list(body))), timeout)
    return r, time.perf_counter() - t0


async def test_an_export_flood_from_several_connections_queues_a_bounded_number(tmp_path, private_bus,
                                                                                daemon_factory):
    lib = await asyncio.to_thread(make_library, tmp_path / "lib", sessions=40)
    out = tmp_path / "exports"
    out.mkdir()
    cfg = write_config(tmp_path / "config.toml", tmp_path, private_bus,
                       **{"recorder.db_path": f'"{lib}"', "export.max_concurrent_jobs": "1"})
    d = daemon_factory(cfg)
    await asyncio.to_thread(d.wait_ready, timeout=60)
    flooders = [await MessageBus(bus_address=private_bus).connect() for _ in range(CONNECTIONS)]
    other = await MessageBus(bus_address=private_bus).connect()
    try:
        listed = (await _call(other, "ListSessions", "a{sv}", [{}]))[0].body[0]
        ids = [str(x["id"].value) for x in listed]
        assert len(ids) == 40
        body = [ids, ["txt", "json", "md", "html", "csv"], str(out), {}]
        flood = asyncio.gather(*[_call(b, "ExportSessions", "asassa{sv}", body) for b in flooders
                                 for _ in range(CALLS)])
        waits = []
        while not flood.done():
            r, took = await _call(other, "ListSessions", "a{sv}", [{"limit": Variant("u", 1)}], timeout=10)
            assert r.message_type == MessageType.METHOD_RETURN, r.body
            waits.append(took)
        answers = [r for r, _ in await flood]
        accepted = [r for r in answers if r.message_type == MessageType.METHOD_RETURN]
        refused = [r for r in answers if r.message_type == MessageType.ERROR]
        assert len(accepted) + len(refused) == CONNECTIONS * CALLS
        assert len(accepted) <= MAX_WAITING_JOBS, f"{len(accepted)} exports queued by one caller"
        assert refused and {r.error_name for r in refused} == {BUSY}, {(r.error_name, r.body[0]) for r in refused}
        text = refused[0].body[0]
        assert "waiting" in text and "try again" in text and len(text) < 200, text
        print(f"{len(accepted)} accepted, {len(refused)} refused; another caller waited at most {max(waits):.3f} s")
        assert max(waits) < 1.0, f"another caller waited {max(waits):.2f} s during the flood"
        objs = (await _call(other, "GetManagedObjects", path=ROOT_PATH,
                            iface="org.freedesktop.DBus.ObjectManager"))[0].body[0]
        assert len([p for p in objs if "/jobs/" in p]) <= MAX_WAITING_JOBS
        log = d.log()
        assert "Traceback" not in log and len(log.splitlines()) < 200, log[-3000:]
    finally:
        for b in [*flooders, other]:
            b.disconnect()
        # a hundred queued exports would make a polite stop wait for them: this test is about the queue
        d.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(d.proc.wait, 10)


async def test_calls_in_flight_when_the_daemon_stops_are_answered_and_leave_no_traceback(tmp_path, private_bus,
                                                                                         daemon_factory):
    """SIGTERM while a caller has 100 calls outstanding: each gets an answer (its result, or an error when the
    daemon has gone), the daemon exits at once and cleanly, and its log holds no traceback."""
    lib = await asyncio.to_thread(make_library, tmp_path / "lib", sessions=20)
    out = tmp_path / "exports"
    out.mkdir()
    cfg = write_config(tmp_path / "config.toml", tmp_path, private_bus, **{"recorder.db_path": f'"{lib}"'})
    d = daemon_factory(cfg)
    await asyncio.to_thread(d.wait_ready, timeout=60)
    bus = await MessageBus(bus_address=private_bus).connect()
    try:
        ids = [str(x["id"].value) for x in (await _call(bus, "ListSessions", "a{sv}", [{}]))[0].body[0]]
        calls = [_call(bus, "ExportSessions", "asassa{sv}", [ids, ["txt", "json"], str(out), {}]) for _ in range(20)]
        calls += [_call(bus, "SearchSessions", "su", ["meeting", 50]) for _ in range(40)]
        calls += [_call(bus, "ListSessions", "a{sv}", [{}]) for _ in range(40)]
        outstanding = asyncio.gather(*calls)
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(d.proc.wait, 30)
        took = time.monotonic() - t0
        answers = [r for r, _ in await outstanding]
    finally:
        bus.disconnect()
    assert rc == 0 and took < 10, (rc, took)
    assert len(answers) == 100
    kinds = {(r.message_type, r.error_name) for r in answers}
    assert kinds <= {(MessageType.METHOD_RETURN, None), (MessageType.ERROR, "org.freedesktop.DBus.Error.NoReply")}, kinds
    log = d.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-4000:]
