"""Cron matching and the push triggers."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from steno_exportd import events, schedule
from steno_exportd.config import Config, SmbConfig, SmbRemote
from steno_exportd.errors import InvalidArgument

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


class FakeCore:
    def __init__(self, cfg):
        self.cfg = cfg
        self.events = events.EventBus()
        self.calls = []

    async def export_sessions(self, ids, formats, target, options):
        self.calls.append((ids, tuple(formats), target))


def _cfg():
    return Config(smb=SmbConfig(remotes=[
        SmbRemote(name="office", server="nas", share="s", schedule="30 3 * * *", push_on_new=True,
                  formats=["txt"]),
        SmbRemote(name="other", server="nas", share="s", schedule="0 4 * * *")]))


async def test_run_schedules_pushes_due_remotes_once_per_minute():
    core = FakeCore(_cfg())
    task = asyncio.create_task(schedule.run_schedules(core, clock=lambda: T.replace(second=1)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert core.calls == [("all", ("txt",), "smb:office")]


async def test_push_on_new_session():
    core = FakeCore(_cfg())
    task = asyncio.create_task(schedule.run_push_on_new(core))
    await asyncio.sleep(0)
    core.events.publish(events.SessionsChanged(changed=(1,)))
    core.events.publish(events.SessionsChanged(added=(7, 8)))
    for _ in range(50):
        if core.calls:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert core.calls == [([7, 8], ("txt",), "smb:office")]
