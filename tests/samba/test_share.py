"""The recorder's read-only Samba share, against a real smbd on a loopback port."""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess

import pytest

from steno_exportd.samba import share as samba
from steno_exportd.samba import adapter
from steno_exportd.config import SambaConfig
from steno_exportd.errors import ConfigError
from tests.parts import until, wait_for
from tests.parts.smbdata import client_kw, close, connected, make_export_tree, read_remote
from tests.fakes import FakeCore


REPO = pathlib.Path(__file__).resolve().parents[2]
ACCESS_DENIED = 0xC0000022


def share_dir(smbd) -> str:
    return str(smbd.root.parent / "export")


HELPER = "/usr/lib/steno-exportd/samba-share-user"     # the unit's path of packaging/samba/steno-exportd-samba-user


def _cfg(root, smbd, **kw) -> SambaConfig:
    """Guests allowed (no longer the default: tests/samba/test_share_user.py) unless a test says otherwise."""
    base = dict(enabled=True, guest_ok=True, share_name="meetings", export_dir=str(root / "export"),
                snippet_path=str(root / "steno-exportd.conf"), smb_conf=str(smbd.conf),
                reload_command=smbd.reload_command(), close_command=smbd.close_command())
    return SambaConfig(**{**base, **kw})


@pytest.fixture
def served(smb_tmp, smbd_factory):
    """smbd including our snippet; an export tree; the share applied."""
    snippet = smb_tmp / "steno-exportd.conf"
    smbd = smbd_factory(include=str(snippet))
    smbd.start()
    sums = make_export_tree(smb_tmp / "export")
    (smb_tmp / "export" / f"{samba.TEMP_PREFIX}half-written").write_bytes(b"x")
    return smb_tmp, smbd, sums


def _check_share(smbd, sums, kw):
    import smbclient
    from smbprotocol.exceptions import SMBOSError

    share = f"\\\\127.0.0.1\\meetings"
    names = sorted(smbclient.listdir(share, **kw))
    assert names == sorted({r.split("/")[0] for r in sums} | {"SHA256SUMS"})   # temp file vetoed
    listed = {}
    for line in read_remote(share + "\\SHA256SUMS", kw).decode().splitlines():
        h, rel = line.split("  ", 1)
        listed[rel] = h
    assert listed == sums
    for rel, h in listed.items():
        assert hashlib.sha256(read_remote(share + "\\" + rel.replace("/", "\\"), kw)).hexdigest() == h
    with pytest.raises(SMBOSError) as ei:
        with smbclient.open_file(share + "\\new.txt", mode="wb", **kw) as f:
            f.write(b"nope")
    assert ei.value.ntstatus == ACCESS_DENIED
    with pytest.raises(SMBOSError) as ei:
        smbclient.remove(share + "\\SHA256SUMS", **kw)
    assert ei.value.ntstatus == ACCESS_DENIED
    assert not os.path.exists(share_dir(smbd) + "/new.txt")


def test_snippet_is_valid_and_serves_guests_read_only(served):
    root, smbd, sums = served
    cfg = _cfg(root, smbd)
    res = samba.apply(cfg, enabled=True, hostname="steno")
    assert res.changed and res.reloaded
    text = (root / "steno-exportd.conf").read_text()
    assert "read only = yes" in text and "wide links = no" in text and "veto files" in text
    samba.validate(text, cfg)                       # testparm clean
    with connected(smbd.port) as kw:
        _check_share(smbd, sums, kw)
    assert samba.apply(cfg, enabled=True, hostname="steno").changed is False


def test_named_users_only(served):
    from smbprotocol.exceptions import LogonFailure, SMBOSError
    import smbclient

    root, smbd, sums = served
    user = smbd.add_user("s3cret-pw")
    cfg = _cfg(root, smbd, guest_ok=False, valid_users=[user])
    samba.apply(cfg, enabled=True)
    with connected(smbd.port, user, "s3cret-pw") as kw:
        _check_share(smbd, sums, kw)
    with pytest.raises(LogonFailure):
        client_kw(smbd.port, user, "wrong")
    with connected(smbd.port) as gkw:          # a guest logs on but may not open the share
        with pytest.raises(SMBOSError) as ei:
            smbclient.listdir("\\\\127.0.0.1\\meetings", **gkw)
        assert ei.value.ntstatus == ACCESS_DENIED, hex(ei.value.ntstatus)


def test_sharing_off_removes_share(served):
    from smbprotocol.exceptions import SMBOSError
    import smbclient

    root, smbd, sums = served
    cfg = _cfg(root, smbd)
    samba.apply(cfg, enabled=True)
    samba.apply(cfg, enabled=False)
    with connected(smbd.port) as kw:
        with pytest.raises(SMBOSError):   # share gone (smbclient reports it after a DFS lookup)
            smbclient.listdir("\\\\127.0.0.1\\meetings", **kw)


def _still_open(kw) -> bool:
    import smbclient
    from smbprotocol.exceptions import SMBException
    try:
        smbclient.listdir("\\\\127.0.0.1\\meetings", **kw)
        return True
    except SMBException:       # access denied, not found, or STATUS_NETWORK_NAME_DELETED (closed under the client)
        return False


def test_users_connected_when_sharing_goes_off_lose_it(served):
    """smbd keeps a removed share for users already connected; switching off disconnects them."""
    root, smbd, sums = served
    cfg = _cfg(root, smbd)
    samba.apply(cfg, enabled=True)
    with connected(smbd.port) as kw:
        assert _still_open(kw)
        samba.apply(cfg, enabled=False)
        wait_for(lambda: not _still_open(kw), 20, 0.1,      # smbcontrol returns before smbd acts
                 what="the guest connected before sharing went off to lose the meetings")
        assert samba.CLOSED + "meetings" in (root / "steno-exportd.conf").read_text()
    samba.apply(cfg, enabled=True)       # and back on: a new connection is served again
    with connected(smbd.port) as kw:
        _check_share(smbd, sums, kw)


def test_guests_connected_lose_the_share_when_it_is_limited_to_users(served):
    root, smbd, sums = served
    user = smbd.add_user("s3cret-pw")
    samba.apply(_cfg(root, smbd), enabled=True)
    with connected(smbd.port) as kw:
        assert _still_open(kw)
        samba.apply(_cfg(root, smbd, guest_ok=False, valid_users=[user]), enabled=True)
        wait_for(lambda: not _still_open(kw), 20, 0.1,
                 what="the guest to lose access once the share is limited to named users")
    with connected(smbd.port, user, "s3cret-pw") as ukw:
        _check_share(smbd, sums, ukw)


def test_systemd_reload_unit_disconnects_users_of_a_closed_share(served):
    """The root unit used under the hardened service: its commands, run against the test smbd."""
    import re
    import shlex
    root, smbd, sums = served
    cfg = _cfg(root, smbd, reload_command=[])           # as shipped with the systemd units
    unit = (REPO / "systemd" / "steno-exportd-samba-reload.service").read_text()
    cmds = [ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert cmds
    default = SambaConfig().snippet_path
    assert all(default in c or "reload-config" in c for c in cmds)

    def run_unit():
        for c in cmds:
            c = c.replace("$$", "$").replace(default, str(root / "steno-exportd.conf"))
            c = c.replace(HELPER, str(REPO / "packaging" / "samba" / "steno-exportd-samba-user"))
            c = re.sub(r"(\S*smbcontrol) smbd", rf"\1 -s {shlex.quote(str(smbd.conf))} smbd", c)
            subprocess.run(shlex.split(c), check=True, timeout=60)

    samba.apply(cfg, enabled=True)
    run_unit()
    with connected(smbd.port) as kw:
        assert _still_open(kw)
        samba.apply(cfg, enabled=False)
        run_unit()
        wait_for(lambda: not _still_open(kw), 20, 0.1, what="the connected guest to lose the share")


def test_files_written_under_the_service_umask_are_read_as_the_forced_user(served):
    """The shipped unit has UMask=0027: the export is 0640/0750, owned by the service user. Guests
    (smbd's `nobody`) read it through `force user` = that user; without it they are refused."""
    import pwd
    import smbclient
    from smbprotocol.exceptions import SMBOSError

    root, smbd, sums = served
    owner = smbd.add_user("unused-pw")
    uid, gid = pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid
    for dirpath, dirnames, filenames in os.walk(root / "export"):
        os.chown(dirpath, uid, gid)
        os.chmod(dirpath, 0o750)
        for f in filenames:
            os.chown(os.path.join(dirpath, f), uid, gid)
            os.chmod(os.path.join(dirpath, f), 0o640)
    samba.apply(_cfg(root, smbd), enabled=True)                # not forced: guests are refused
    with connected(smbd.port) as kw:
        with pytest.raises(SMBOSError):
            smbclient.listdir("\\\\127.0.0.1\\meetings", **kw)
    samba.apply(_cfg(root, smbd, force_user=owner), enabled=True)
    assert f"force user = {owner}" in (root / "steno-exportd.conf").read_text()
    with connected(smbd.port) as kw:
        _check_share(smbd, sums, kw)                            # and still read-only


def test_failed_reload_puts_the_previous_snippet_back_and_retries(served):
    root, smbd, sums = served
    samba.apply(_cfg(root, smbd), enabled=True)
    before = (root / "steno-exportd.conf").read_text()
    with pytest.raises(samba.TargetError, match="samba reload failed"):
        samba.apply(_cfg(root, smbd, reload_command=["false"]), enabled=False)
    assert (root / "steno-exportd.conf").read_text() == before   # what smbd still serves
    res = samba.apply(_cfg(root, smbd), enabled=False)          # smbd answers again: applied now
    assert res.changed and res.reloaded
    assert "Sharing is off" in (root / "steno-exportd.conf").read_text()


def test_failed_first_reload_leaves_no_snippet_so_the_next_sync_applies_it(served):
    """Sharing switched on for the first time while smbd does not answer: not "unchanged" next time."""
    root, smbd, sums = served
    snippet = root / "steno-exportd.conf"
    snippet.unlink(missing_ok=True)
    with pytest.raises(samba.TargetError, match="samba reload failed"):
        samba.apply(_cfg(root, smbd, reload_command=["false"]), enabled=True)
    assert not snippet.exists()
    res = samba.apply(_cfg(root, smbd), enabled=True)
    assert res.changed and res.reloaded
    with connected(smbd.port) as kw:
        _check_share(smbd, sums, kw)


def test_the_shipped_path_unit_reloads_smbd_and_closes_the_share(served, user_manager, tmp_path):
    """Under a real systemd: the hardened daemon only writes the snippet (reload_command = []);
    the .path unit sees it and its root .service reloads smbd, then disconnects a closed share."""
    import re
    import shlex

    root, smbd, sums = served
    snippet = root / "steno-exportd.conf"
    default = SambaConfig().snippet_path
    smbcontrol = shutil.which("smbcontrol")
    for name in ("steno-exportd-samba-reload.path", "steno-exportd-samba-reload.service"):
        text = (REPO / "systemd" / name).read_text().replace(default, str(snippet))
        text = re.sub(r"/usr/bin/smbcontrol smbd", f"{smbcontrol} -s {shlex.quote(str(smbd.conf))} smbd", text)
        text = text.replace(HELPER, str(REPO / "packaging" / "samba" / "steno-exportd-samba-user"))
        (user_manager.unit_dir / name).write_text(text.replace("WantedBy=multi-user.target",
                                                               "WantedBy=default.target"))
    cfg = _cfg(root, smbd, reload_command=[])
    samba.apply(cfg, enabled=False)                  # the snippet exists (as packaging installs it)
    user_manager.systemctl("daemon-reload")
    user_manager.systemctl("start", "steno-exportd-samba-reload.path")
    runs = lambda: user_manager.show("steno-exportd-samba-reload.service", "NRestarts", "ExecMainStartTimestampMonotonic")
    before = runs()
    samba.apply(cfg, enabled=True)
    wait_for(lambda: runs() != before, 20, 0.1, what="the path unit to run the reload service")
    with connected(smbd.port) as kw:
        wait_for(lambda: _still_open(kw), 20, 0.1, what="the share served after the unit's reload")
        _check_share(smbd, sums, kw)
        samba.apply(cfg, enabled=False)
        wait_for(lambda: not _still_open(kw), 20, 0.1, what="the connected guest to lose the share")
        user_manager.systemctl("stop", "steno-exportd-samba-reload.path", check=False)
    result = user_manager.show("steno-exportd-samba-reload.service", "Result")
    assert result["Result"] == "success", result


@pytest.mark.parametrize("bad", [
    "[meetings\n   path = /tmp\n",                          # broken section header: testparm exits 1
    "[meetings]\n   path = /tmp\n   no such option = 1\n",  # unknown parameter: exit 0, stderr says so
])
def test_bad_snippet_keeps_previous_share(served, bad):
    root, smbd, sums = served
    cfg = _cfg(root, smbd)
    samba.apply(cfg, enabled=True)
    before = (root / "steno-exportd.conf").read_text()
    with pytest.raises(ConfigError) as ei:
        samba.install(bad, cfg)
    assert "testparm" in str(ei.value)
    assert (root / "steno-exportd.conf").read_text() == before
    assert not [p for p in os.listdir(root) if p.startswith(samba.TEMP_PREFIX)]
    with connected(smbd.port) as kw:
        _check_share(smbd, sums, kw)        # still served


def test_failing_testparm_keeps_previous(served):
    root, smbd, sums = served
    cfg = _cfg(root, smbd)
    samba.apply(cfg, enabled=True)
    before = (root / "steno-exportd.conf").read_text()
    broken = _cfg(root, smbd, testparm_command=["/bin/false"], share_name="other")
    with pytest.raises(ConfigError):
        samba.apply(broken, enabled=True)
    assert (root / "steno-exportd.conf").read_text() == before


def test_config_values_cannot_inject_smb_conf():
    cfg = SambaConfig(share_name="x]\n[global", export_dir="/srv/a\nwide links = yes", guest_ok=False,
                      valid_users=["bob\nadmin users = bob"])
    with pytest.raises(ConfigError) as ei:
        samba.render_snippet(cfg, enabled=True, vfs_fruit=False)
    assert len(ei.value.problems) == 3


MARK = f"/tmp/steno-{os.getpid()}-ran"        # (short: the kernel's host names hold 64 bytes at most)


@pytest.mark.parametrize("host", [f"desk\n   root preexec = /bin/touch {MARK}", "desk\\"], ids=["newline", "backslash"])
def test_a_host_name_cannot_add_to_the_share(served, host):
    """The kernel takes any bytes as a host name (NetworkManager takes one from a DHCP server while no static name
    is set). The share's comment named the host as it was, and testparm passed it: a newline started a line of the
    share's own ("root preexec = ...": smbd ran it as root for every guest who opened the share), a backslash at
    its end joined the share's next line (its path) to the comment and smbd dropped the share. Now the comment holds
    the name on its one line; the share serves the export folder, read-only, and runs nothing."""
    root, smbd, sums = served
    try:
        samba.apply(_cfg(root, smbd), enabled=True, hostname=host)
        with connected(smbd.port) as kw:
            _check_share(smbd, sums, kw)
        assert not os.path.exists(MARK), "smbd ran a command the host name put into the share"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(MARK)


async def test_adapter_shares_on_a_host_whose_name_is_not_utf8(served, monkeypatch):
    """The share's comment names the host ("SilentSteno meetings on <host>"); the kernel takes any bytes as a host
    name, and one not UTF-8 (Python's surrogate escapes, as os.uname() and socket.gethostname() give it) could not
    be written into the snippet: the adapter died on it (an error no one caught), the share was never served and
    the sharing switch did nothing any more. Now the comment holds the host's name as text (identity.host_name())
    and smbd serves the share."""
    import asyncio
    import socket
    import smbclient
    root, smbd, _ = served
    real = os.uname()
    odd = "desk\udcff42"
    monkeypatch.setattr(os, "uname", lambda: os.uname_result((real.sysname, odd, real.release, real.version,
                                                               real.machine)))
    monkeypatch.setattr(socket, "gethostname", lambda: odd)
    make_export_tree(root / "export" / "SilentSteno")
    core = FakeCore(Config_with(_cfg(root, smbd, enabled=False)))
    async with adapter_on(core) as (task, states):
        await until_adapter(lambda: states == ["off"])
        core.set_sharing(True)
        await until_adapter(lambda: states[-1] == "serving" or task.done())
        assert not task.done() and states[-1] == "serving", (states, task.done() and task.exception())
        assert "comment = SilentSteno meetings on desk\ufffd42\n" in (root / "steno-exportd.conf").read_text()
        monkeypatch.undo()      # (the test's own SMB client sends the host name too: its login, as UTF-16)
        kw = await asyncio.to_thread(client_kw, smbd.port)
        try:
            assert "SHA256SUMS" in await asyncio.to_thread(smbclient.listdir, "\\\\127.0.0.1\\meetings", **kw)
        finally:
            close(kw)


@contextlib.asynccontextmanager
async def adapter_on(core):
    """adapter.run(core) running; yields (its task, the samba_state values it published)."""
    import asyncio
    from steno_exportd import events
    states: list = []

    async def watch():
        async for ev in core.events.subscribe():
            if isinstance(ev, events.StatusChanged) and ev.key == "samba_state":
                states.append(ev.value)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    task = asyncio.create_task(adapter.run(core))
    try:
        yield task, states
    finally:
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def test_adapter_reports_an_export_folder_it_cannot_create(served):
    """An OSError (export folder under a file, read-only /srv) is an error state, not a dead daemon."""
    root, smbd, _ = served
    (root / "a-file").write_text("x")
    core = FakeCore(Config_with(_cfg(root, smbd, enabled=False, export_dir=str(root / "a-file" / "export"))))
    async with adapter_on(core) as (task, states):
        await until_adapter(lambda: states == ["off"])
        core.set_sharing(True)
        await until_adapter(lambda: len(states) == 2)
        assert states[1].startswith("error: ") and "a-file" in states[1] and "Not a directory" in states[1]
        assert not task.done()


async def test_adapter_follows_sharing_switch(served):
    import asyncio
    import smbclient
    from steno_exportd import events

    root, smbd, _ = served
    make_export_tree(root / "export" / "SilentSteno")    # the adapter shares the export's root folder
    core = FakeCore(Config_with(_cfg(root, smbd, enabled=False)))
    async with adapter_on(core) as (task, states):
        await until_adapter(lambda: states == ["off"])
        core.set_sharing(True)
        await until_adapter(lambda: states[-1] == "serving")
        await until_adapter(lambda: core.exports)    # the refresh is queued right after "serving" is published
        # trusted: the share folder is the daemon's own, not subject to export.allowed_dirs
        assert core.exports == [("all", tuple(core.cfg.samba.formats), str(root / "export"), True, False)]
        kw = await asyncio.to_thread(client_kw, smbd.port)
        try:
            names = await asyncio.to_thread(smbclient.listdir, "\\\\127.0.0.1\\meetings", **kw)
            assert "SHA256SUMS" in names
        finally:
            close(kw)
        core.events.publish(events.SessionsChanged(added=(5,)))
        core.events.publish(events.SessionsChanged(added=(6,)))
        await asyncio.sleep(0.2)
        assert len(core.exports) == 1, "one refresh at a time: changes meanwhile wait for it"
        core.events.publish(events.JobUpdated(events.JobSnapshot(
            id=1, operation="export", target=str(root / "export"), state=events.JobState.COMPLETED)))
        await until_adapter(lambda: len(core.exports) == 2)
        await asyncio.sleep(0.2)
        assert len(core.exports) == 2, "the changes that came meanwhile need one more refresh, not two"
        core.set_sharing(False)
        await until_adapter(lambda: states[-1] == "off")
        assert "Sharing is off" in (root / "steno-exportd.conf").read_text()


def Config_with(samba_cfg):
    from steno_exportd.config import Config
    return Config(samba=samba_cfg)




def until_adapter(cond, timeout=10.0):
    return until(cond, "the samba adapter", timeout, 0.02, in_thread=False)
