"""The one fake Core keeps the real Core's API, so an adapter written against Core runs on it."""
from __future__ import annotations

import asyncio
import inspect

from steno_exportd import events as ev
from steno_exportd.core import Core
from tests.configs import make_config
from tests.fakes import FakeCore, FakeLibrary, make_session


def _api(obj) -> dict[str, object]:
    """Public names of an object and, for its methods, their parameter names."""
    out = {}
    for name in dir(obj):
        if name.startswith("_"):
            continue
        value = getattr(obj, name)
        out[name] = tuple(inspect.signature(value).parameters) if inspect.ismethod(value) else "attribute"
    return out


def test_the_fake_core_has_every_public_name_and_signature_of_core(tmp_path):
    real = _api(Core(make_config(tmp_path)))
    fake = _api(FakeCore(make_config(tmp_path)))
    missing = {n: real[n] for n in real if n not in fake}
    assert not missing, f"tests/fakes.py FakeCore lacks {missing}"
    differ = {n: (real[n], fake[n]) for n in real if real[n] != fake[n]}
    assert not differ, f"FakeCore's methods differ from Core's (core, fake): {differ}"


async def test_an_export_is_recorded_and_its_job_written_or_held(tmp_path):
    held = FakeCore(make_config(tmp_path, **{"smb.remotes": [dict(name="office", server="nas", share="s")]}))
    job = await held.export_sessions("all", ["txt"], "smb:office")
    assert held.exports == [("all", ("txt",), "smb:office", False, False)]
    assert job.state == ev.JobState.QUEUED and job.sessions == (1, 2, 3)
    assert held.jobs.cancel(job.id).state == ev.JobState.CANCELLED

    lib = FakeLibrary([make_session(1), make_session(2, status="recording")])
    writer = FakeCore(make_config(tmp_path), library=lib, write_files=True, file_size=1000)
    await writer.start()
    seen = []

    async def follow():
        async for e in writer.events.subscribe():
            seen.append(e.job.state)
            if e.job.state.finished:
                return
    watcher = asyncio.create_task(follow())
    job = await writer.export_sessions(["1"], ["txt"], str(tmp_path), trusted=True)
    await watcher
    await writer.stop()
    assert seen[-1] == ev.JobState.COMPLETED and writer.written == [(str(tmp_path), [1])]
    assert (tmp_path / "SilentSteno" / make_session(1).uuid / "transcript.txt").stat().st_size == 1000
    assert [s.id for s in lib.list_sessions(exportable_only=True)] == [1]      # 2 is still recording
