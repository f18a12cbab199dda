"""A core with a real recorder library and the real mail adapter running, sending to a real aiosmtpd."""
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from steno_exportd import config, render
from steno_exportd.core import Core
from steno_exportd.mail import sender
from tests.parts import until
from tests.parts.daemon import make_library


@pytest.fixture(scope="session")
def demo_library(tmp_path_factory):
    """A demo recorder library (read-only for the tests: copy it before changing anything)."""
    return make_library(tmp_path_factory.mktemp("library"), sessions=3)


@pytest.fixture
def smtp(smtp_server):
    """smtp_server for async tests: `await smtp(...)` starts the server off the event loop (it waits for it)."""
    async def start(*args, **kw):
        return await asyncio.to_thread(smtp_server, *args, **kw)
    return start


@pytest.fixture
async def mail_core(tmp_path, demo_library):
    """mail_core(server, extra={section: {...}}, library=None, clock=None, **email_keys) -> a started Core (the
    demo library unless another is given; the schedules' clock if given) with the mail adapter running; stopped after the test."""
    cores: list[tuple[Core, asyncio.Task]] = []

    async def start(server=None, extra: dict | None = None, library=None, clock=None, **email) -> Core:
        data = {"recorder": {"db_path": str(demo_library)}, "state": {"dir": str(tmp_path / "state")},
                "export": {"allowed_dirs": [str(tmp_path)]}, "http": {"enabled": False}}
        data["email"] = (server.email_config(**email) if server is not None else email)
        for section, keys in (extra or {}).items():
            if isinstance(keys, list):          # an array of tables: [[schedules]]
                data[section] = keys
            else:
                data.setdefault(section, {}).update(keys)
        core = Core(config.from_dict(data), library=library, clock=clock or time.time)
        await core.start()
        cores.append((core, asyncio.create_task(sender.run(core))))
        return core

    yield start
    for core, task in cores:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await core.stop()
    await asyncio.to_thread(render.shutdown)     # the PDF/DOCX worker process, if a test rendered one


def scripted_config(tmp_path, db_path: str, port: int, **email) -> dict:
    """The config of a core whose mail goes, without TLS or a login, to a server a test scripts on loopback ``port``
    (the test runs the mail adapter itself: sender.run)."""
    return {"recorder": {"db_path": db_path}, "state": {"dir": str(tmp_path / "state")}, "http": {"enabled": False},
            "email": dict(enabled=True, smtp_host="127.0.0.1", smtp_port=port, security="none",
                          sender="steno@recorder.example", retry_initial_seconds=0.2, retry_max_seconds=1.0,
                          timeout=30.0, **email)}


async def finished(core: Core, entry_id: int, timeout: float = 30.0):
    """The outbox entry once it is sent or failed."""
    return await until(lambda: core.outbox.get(entry_id) if core.outbox.get(entry_id).state.finished else None,
                       f"message {entry_id} sent or failed", timeout=timeout, in_thread=False)


async def through_scripted(talk, smtp, mail_core, username: str, to: list[str]) -> tuple:
    """Session 1's transcript mailed to ``to`` through a server on loopback that ``talk`` (an asyncio stream
    handler) plays, without TLS: (its outbox entry once sent or failed, the server's port)."""
    server = await asyncio.start_server(talk, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        core = await mail_core(None, **{**(await smtp("none", False)).email_config(), "smtp_port": port,
                                        "security": "none", "username": username})
        entry = await core.email_sessions([1], ["txt"], to)
        return await finished(core, entry.id), port
    finally:
        server.close()
        await server.wait_closed()
