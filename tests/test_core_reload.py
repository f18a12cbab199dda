"""Core.reload (SIGHUP, steno-exportctl reload, D-Bus Reload) beside the page's downloads: never a stalled loop."""
from __future__ import annotations

import asyncio
import gc
import time

from steno_exportd import events as ev
from steno_exportd.web import make_app
from tests.configs import make_config
from tests.engine.test_cancel_render import _long_session
from tests.parts import LoopLag
from tests.recorder_db import RecorderDB
from tests.web.helpers import PASSWORD_HASH, DaemonLikeServer, started_core

BOUND = 0.1         # seconds any other caller may wait for the loop while a reload runs


async def test_a_reload_beside_a_download_stalls_no_other_caller(tmp_path, aiohttp_client):
    """A large library (a long meeting of 60,000 transcript lines: ~1 s to load) is being downloaded when the
    config is reloaded with another recorder.data_dir and a new web password: the reload's SQLite work (closing
    the library it replaces, ending the old password's logins) waits in a thread, never on the loop; the page
    answers other clients within BOUND all the while, the download completes, and the reload's result is the
    same (the new config in force, "config reloaded" published)."""
    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        long = await asyncio.to_thread(_long_session, rec, 60_000)
        over = {"recorder.db_path": str(rec.path), "http.enabled": True, "http.bind": ["127.0.0.1"],
                "http.auth.mode": "none"}
        core = await started_core(make_config(tmp_path, **over))
        try:
            client = await aiohttp_client(DaemonLikeServer(make_app(core)))
            assert (await client.get("/static/style.css")).status == 200
            await core.listing()
            changed = make_config(tmp_path, **over, **{"recorder.data_dir": str(rec.root),
                                                       "http.auth.password_hash": PASSWORD_HASH})
            seen: list[ev.Event] = []

            async def follow() -> None:
                async for e in core.events.subscribe():
                    seen.append(e)
            follower = asyncio.create_task(follow())
            await asyncio.sleep(0)                       # subscribed
            waits: list[float] = []

            async def other_client() -> None:
                while True:
                    t = time.perf_counter()
                    r = await client.get("/static/style.css")
                    await r.read()
                    waits.append(time.perf_counter() - t)
                    await asyncio.sleep(0.01)

            # a full collection of the long meeting's objects (the download's, not the reload's) stops every
            # thread for a moment: not counted, as tests/guard.py does not count it
            gc.disable()
            try:
                with LoopLag() as lag:
                    others = asyncio.create_task(other_client())
                    download = asyncio.create_task(client.get(f"/sessions/{long}/download/txt"))
                    await asyncio.sleep(0.2)                 # the meeting is being loaded (the library's lock held)
                    t0 = time.perf_counter()
                    await core.reload(changed)
                    took = time.perf_counter() - t0
                    r = await asyncio.wait_for(download, 60)
                    body = await r.text()
                    await asyncio.sleep(0.1)
                    others.cancel()
                    follower.cancel()
            finally:
                gc.enable()
            assert r.status == 200 and body.count("sentence ") == 60_000
            assert lag.worst < BOUND, (f"the reload ({took * 1000:.0f} ms) stalled the event loop for "
                                       f"{lag.worst * 1000:.0f} ms: every download and D-Bus call waited")
            assert waits and max(waits) < 5 * BOUND, f"another client waited {max(waits) * 1000:.0f} ms"
            assert core.cfg is changed and core.library.data_dir == rec.root
            assert ev.StatusChanged("config", "reloaded") in seen
        finally:
            await core.stop()
    finally:
        rec.close()

