"""A real private dbus-daemon for tests: child process, allow-all policy, its own socket."""
from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.parts import require_tool, stop_process

CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    def __init__(self, tmp: Path) -> None:
        require_tool("dbus-daemon")
        conf = tmp / "bus.conf"
        conf.write_text(CONF.format(sock=tmp / "bus.sock"))
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.stop()
            pytest.fail("the private dbus-daemon did not start")

    def stop(self) -> None:
        stop_process(self.proc, 5)


@pytest.fixture
def private_bus(tmp_path: Path):
    """Address of a fresh private bus, stopped after the test."""
    d = tmp_path / "dbus"
    d.mkdir()
    bus = PrivateBus(d)
    try:
        yield bus.address
    finally:
        bus.stop()


def stop_with_answer(monkeypatch, member: str, caller: list[asyncio.Task]) -> list:
    """Every D-Bus call of this process gets its real answer; at the answer to a call of ``member`` the task
    ``caller[0]`` is cancelled in the same loop turn (a stop that comes with the answer: Python 3.11's
    asyncio.wait_for returned the answer and forgot such a stop). -> the calls of ``member`` answered (Messages)."""
    from dbus_fast.aio import MessageBus
    real_call = MessageBus.call
    answered: list = []

    async def answered_as_the_stop_comes(bus, msg):
        reply = await real_call(bus, msg)
        if msg.member == member:
            answered.append(msg)
            caller[0].cancel()
        return reply
    monkeypatch.setattr(MessageBus, "call", answered_as_the_stop_comes)
    return answered
