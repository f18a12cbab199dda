"""Cron matching and the push triggers."""
from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from steno_exportd import events
from steno_exportd.smb import triggers as schedule
from steno_exportd.errors import InvalidArgument
from tests.configs import make_config
from tests.fakes import FakeCore, make_session
from tests.parts import until

T = dt.datetime(2026, 11, 23, 3, 30)   # a Monday


@pytest.mark.parametrize("expr,when,ok", [
    ("* * * * *", T, True),
    ("30 3 * * *", T, True),
    ("31 3 * * *", T, False),
    ("*/15 * * * *", T, True),
    ("*/7 * * * *", T, False),
    ("0-30/10 1-5 * * *", T, True),
    ("30 3 * * 1", T, True),           # Monday
    ("30 3 * * 0,7", T, False),        # Sunday
    ("30 3 1 * 1", T, True),           # day OR weekday when both restricted
    ("30 3 1 * 2", T, False),
    ("30 3 23 11 *", T, True),
    ("30 3 * 12 *", T, False),
])
def test_matches(expr, when, ok):
    assert schedule.parse(expr).matches(when) is ok


@pytest.mark.parametrize("expr", ["* * * *", "60 * * * *", "a * * * *", "5-1 * * * *", "*/0 * * * *"])
def test_bad_expressions(expr):
    with pytest.raises(InvalidArgument):
        schedule.parse(expr)


def test_next_after():
    assert schedule.parse("0 2 * * *").next_after(T) == dt.datetime(2026, 11, 24, 2, 0)
    assert schedule.parse("*/20 * * * *").next_after(T) == dt.datetime(2026, 11, 23, 3, 40)
    assert schedule.parse("0 0 1 1 *").next_after(T) == dt.datetime(2027, 1, 1, 0, 0)


def _cfg(tmp_path):
    return make_config(tmp_path, **{"smb.remotes": [
        dict(name="office", server="nas", share="s", schedule="30 3 * * *", push_on_new=True, formats=["txt"]),
        dict(name="other", server="nas", share="s", schedule="0 4 * * *")]})


async def test_run_schedules_pushes_due_remotes_once_per_minute(tmp_path):
    core = FakeCore(_cfg(tmp_path))
    task = asyncio.create_task(schedule.run_schedules(core, clock=lambda: T.replace(second=1)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert core.exports == [("all", ("txt",), "smb:office", False)]


async def test_push_on_new_session(tmp_path):
    core = FakeCore(_cfg(tmp_path), n_sessions=6)
    task = asyncio.create_task(schedule.run_push_on_new(core))
    marks = tmp_path / "state" / "push" / "on-new.json"

    async def publish(ev, done):
        core.events.publish(ev)
        await until(done, f"the triggers to act on {ev}", 1, 0.01, in_thread=False)
    try:
        await asyncio.sleep(0)
        await publish(events.SessionsChanged(added=tuple(range(1, 7))), marks.exists)   # the first look
        assert core.exports == [] and json.loads(marks.read_text()) == {"office": 6}
        core.library.add(make_session(7), make_session(8, status="recording"))    # 8 still recording
        await publish(events.SessionsChanged(changed=(1,), added=(7, 8)), lambda: core.exports)
        assert core.exports == [([7], ("txt",), "smb:office", False)]
        core.library.add(make_session(8))
        await publish(events.SessionsChanged(changed=(8,)), lambda: len(core.exports) == 2)
        assert core.exports[1] == ([8], ("txt",), "smb:office", False)
        assert json.loads(marks.read_text()) == {"office": 8}
    finally:
        task.cancel()


def test_advance_stops_at_a_gap():
    assert schedule.advance(6, {7, 9}, {1, 6, 7, 8, 9}) == 7
    assert schedule.advance(6, {7, 8, 9}, {7, 8, 9}) == 9
