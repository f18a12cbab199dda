"""The shipped bus policy on a real system-type dbus-daemon: who may own the name and call the API."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.parts.daemon import REPO
from tests.parts import require, require_root, require_tool

POLICY = REPO / "config" / "dbus" / "org.silentsteno.Export1.conf"
SITE = next(p for p in sys.path if p.endswith("site-packages"))

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={sock}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""

OWNER = """
import asyncio, sys
from dbus_fast import NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method
class M(ServiceInterface):
    def __init__(self): super().__init__("org.silentsteno.Export1.Manager")
    @method()
    def ListSessions(self, f: "a{sv}") -> "aa{sv}": return []
async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    bus.export("/org/silentsteno/Export1", M())
    try:
        r = await bus.request_name("org.silentsteno.Export1", NameFlag.DO_NOT_QUEUE)
        print("owned" if r == RequestNameReply.PRIMARY_OWNER else f"reply {r}", flush=True)
    except Exception as e:
        print(f"denied {getattr(e, 'type', repr(e))}", flush=True); return
    await asyncio.sleep(60)
asyncio.run(main())
"""

CALLER = """
import asyncio, sys
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    iface, member, sig = sys.argv[2], sys.argv[3], sys.argv[4]
    body = {"a{sv}": [{}], "s": [sys.argv[5] if len(sys.argv) > 5 else ""], "": []}[sig]
    r = await bus.call(Message(destination="org.silentsteno.Export1", path="/org/silentsteno/Export1",
                               interface=iface, member=member, signature=sig, body=body))
    print("ok" if r.message_type == MessageType.METHOD_RETURN else r.error_name)
asyncio.run(main())
"""


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def accounts():
    """steno-export (the service user), steno-ui, a UI user in it and another user; removed if we made them."""
    require_root()
    require_tool("useradd", "userdel", "groupadd", "groupdel", "setpriv", "dbus-daemon", "/usr/bin/python3")
    made_users, made_groups = [], []
    suffix = str(os.getpid())[-6:]
    try:
        try:
            grp.getgrnam("steno-ui")
        except KeyError:
            _run(["groupadd", "--system", "steno-ui"])
            made_groups.append("steno-ui")
        try:
            pwd.getpwnam("steno-export")
        except KeyError:
            _run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", "steno-export"])
            made_users.append("steno-export")
        ui, other = f"stui{suffix}", f"stot{suffix}"
        _run(["useradd", "--no-create-home", "-s", "/usr/sbin/nologin", "-G", "steno-ui", ui])
        made_users.append(ui)
        _run(["useradd", "--no-create-home", "-s", "/usr/sbin/nologin", other])
        made_users.append(other)
        yield {"service": "steno-export", "ui": ui, "other": other}
    finally:
        for u in made_users:
            subprocess.run(["userdel", u], capture_output=True)
        for g in made_groups:
            subprocess.run(["groupdel", g], capture_output=True)


@pytest.fixture
def system_bus(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="steno-policy-", dir="/tmp"))
    d.chmod(0o755)
    conf = tmp_path / "system.conf"
    conf.write_text(BUS_CONF.format(sock=d / "bus.sock", policy=POLICY))
    p = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile", "--print-address=1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = p.stdout.readline().strip()
    try:
        require(bool(address), f"a dbus-daemon accepting our policy ({p.stderr.read() if not address else ''})")
        yield address
    finally:
        p.terminate()
        p.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def _as(user: str | None, script: str, *args: str, background: bool = False):
    cmd = ["/usr/bin/python3", "-c", script, *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups", *cmd]
    env = {"PYTHONPATH": SITE, "PATH": "/usr/bin:/bin", "HOME": "/"}
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60).stdout.strip()


def test_policy_only_service_user_owns_and_ui_group_calls(accounts, system_bus):
    denied = "denied org.freedesktop.DBus.Error.AccessDenied"
    assert _as(None, OWNER, system_bus) == denied, "root must not own the name"
    assert _as(accounts["other"], OWNER, system_bus) == denied
    owner = _as(accounts["service"], OWNER, system_bus, background=True)
    try:
        assert owner.stdout.readline().strip() == "owned"
        mgr = "org.silentsteno.Export1.Manager"
        assert _as(accounts["ui"], CALLER, system_bus, mgr, "ListSessions", "a{sv}") == "ok"
        assert _as(None, CALLER, system_bus, mgr, "ListSessions", "a{sv}") == "ok"
        assert _as(accounts["other"], CALLER, system_bus, mgr, "ListSessions", "a{sv}") == \
            "org.freedesktop.DBus.Error.AccessDenied"
        assert _as(accounts["other"], CALLER, system_bus, "org.freedesktop.DBus.Introspectable",
                   "Introspect", "") == "ok"
        # what `steno-exportctl status` reads is the recorder's business too (issue 16)
        assert _as(accounts["other"], CALLER, system_bus, "org.freedesktop.DBus.Properties",
                   "GetAll", "s", mgr) == "org.freedesktop.DBus.Error.AccessDenied"
        assert _as(accounts["ui"], CALLER, system_bus, "org.freedesktop.DBus.Properties",
                   "GetAll", "s", mgr) == "ok"
    finally:
        owner.kill()
        owner.wait()
