"""The share out of the box: guests refused; the read-only share user's password set over D-Bus
(`steno-exportctl samba-password`) by the unprivileged daemon, applied by the shipped root helper unit's
commands, then that user reads the share. A real daemon, a real dbus-daemon, a real smbd."""
from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
import sys

import pytest

from steno_exportd.config import SambaConfig
from steno_exportd.samba import share as samba
from tests.configs import make_config
from tests.parts import wait_for
from tests.parts.daemon import REPO, require_core, write_config
from tests.parts.smbdata import client_kw, connected, make_export_tree

HELPER = "/usr/lib/steno-exportd/samba-share-user"
UNIT = REPO / "systemd" / "steno-exportd-samba-reload.service"


def run_unit(snippet, smbd) -> bool:
    """The root unit's commands, as systemd runs them, against the test smbd: ExecCondition lines first (one
    exiting 1-254 skips the rest, 255 fails the unit), then ExecStart. False when the conditions skipped it."""
    default = SambaConfig().snippet_path
    helper = str(REPO / "packaging" / "samba" / "steno-exportd-samba-user")
    for line in UNIT.read_text().splitlines():
        kind, _, c = line.partition("=")
        if kind not in ("ExecCondition", "ExecStart"):
            continue
        # the helper gets the test smbd's conf (its passdb, not the system's)
        c = c.replace(f"{HELPER} {default}", f"{helper} {snippet} {smbd.conf}")
        c = c.replace("$$", "$").replace(default, str(snippet))
        c = re.sub(r"(\S*smbcontrol) smbd", rf"\1 -s {shlex.quote(str(smbd.conf))} smbd", c)
        r = subprocess.run(shlex.split(c), timeout=60, capture_output=True, text=True)
        if kind == "ExecCondition" and 0 < r.returncode < 255:
            return False
        assert r.returncode == 0, (c, r.returncode, r.stderr)
    return True


@pytest.fixture
def share_user():
    name = f"stenoshare{secrets.token_hex(3)}"
    yield name
    subprocess.run(["userdel", name], capture_output=True)


def test_the_default_share_refuses_guests_and_serves_the_share_user_after_samba_password(
        tmp_path, smb_tmp, smbd_factory, private_bus, daemon_factory, share_user):
    import smbclient
    from smbprotocol.exceptions import LogonFailure, SMBOSError

    require_core()
    snippet = smb_tmp / "samba" / "steno-exportd.conf"
    smbd = smbd_factory(include=str(snippet))
    smbd.start()
    sums = make_export_tree(smb_tmp / "export", sessions=2)
    from tests.parts.daemon import make_library
    make_library(tmp_path, sessions=2)
    (tmp_path / "exports").mkdir()
    q = json.dumps
    # no guest_ok, no share_user: the defaults, but for the test's own user name and its smbd
    cfg = write_config(tmp_path / "config.toml", tmp_path, private_bus, **{
        "samba.enabled": "true", "samba.export_dir": q(str(smb_tmp / "export")),
        "samba.snippet_path": q(str(snippet)), "samba.reload_command": q(smbd.reload_command()),
        "samba.close_command": q(smbd.close_command()), "samba.formats": q(["txt"]), "samba.announce": "false",
        "samba.share_user": q(share_user)})
    d = daemon_factory(cfg)
    d.wait_ready(timeout=30)
    wait_for(lambda: snippet.exists() and "[meetings]" in snippet.read_text(), 30, what="the share snippet")
    text = snippet.read_text()
    assert "guest ok = no" in text and f"valid users = {share_user}" in text
    share = "\\\\127.0.0.1\\meetings"
    with connected(smbd.port) as gkw:                       # a guest logs on but may not open the share
        with pytest.raises(SMBOSError) as ei:
            smbclient.listdir(share, **gkw)
        assert ei.value.ntstatus == 0xC0000022, hex(ei.value.ntstatus)

    def ctl(*argv, stdin=""):
        return subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", private_bus, *argv],
                              capture_output=True, text=True, timeout=60, cwd=REPO, input=stdin)
    r = ctl("samba-password", stdin="short\n")
    assert r.returncode == 2 and "8 to 256" in r.stderr
    r = ctl("samba-password", stdin="read-only share pw\n")
    assert r.returncode == 0 and "handed to the root helper" in r.stdout, r.stderr
    request = snippet.with_name(samba.PASSWORD_REQUEST)
    assert request.stat().st_mode & 0o077 == 0                  # only the daemon (and root) can read it
    assert run_unit(snippet, smbd)                              # what the .path unit starts, as root
    assert not request.exists()                                 # the password does not stay on disk
    with pytest.raises(LogonFailure):
        client_kw(smbd.port, share_user, "not it")
    with connected(smbd.port, share_user, "read-only share pw") as kw:
        wait_for(lambda: "SHA256SUMS" in smbclient.listdir(share, **kw), 60, what="the share user reading")
        with pytest.raises(SMBOSError):
            with smbclient.open_file(share + "\\new.txt", mode="wb", **kw) as f:
                f.write(b"nope")
    assert sums


def test_the_helper_never_sets_a_password_for_an_account_that_can_log_in(tmp_path, smb_tmp, smbd_factory):
    snippet = smb_tmp / "samba" / "steno-exportd.conf"
    snippet.parent.mkdir(parents=True, exist_ok=True)
    smbd = smbd_factory(include=str(snippet))
    smbd.write_conf()
    helper = str(REPO / "packaging" / "samba" / "steno-exportd-samba-user")
    for user in ("root", "-rf", "a b"):
        (snippet.with_name(samba.PASSWORD_REQUEST)).write_text(f"{user}\nsome password\n")
        r = subprocess.run([helper, str(snippet), str(smbd.conf)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "refused" in r.stderr, (user, r.stderr)
        assert not snippet.with_name(samba.PASSWORD_REQUEST).exists()
    target = tmp_path / "secret"
    target.write_text("x\ny\n")
    snippet.with_name(samba.PASSWORD_REQUEST).symlink_to(target)
    r = subprocess.run([helper, str(snippet), str(smbd.conf)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a plain file" in r.stderr


def test_a_password_handed_over_while_smbd_is_stopped_is_set_all_the_same(tmp_path, smb_tmp, smbd_factory,
                                                                          share_user):
    """The unit skips the reload while smbd is stopped, but not the share user's password: the request does not
    wait on disk, and once smbd starts the share user reads the share."""
    import smbclient

    snippet = smb_tmp / "samba" / "steno-exportd.conf"
    sums = make_export_tree(smb_tmp / "export", sessions=1)
    smbd = smbd_factory(include=str(snippet))
    smbd.write_conf()
    cfg = make_config(tmp_path, **{"samba.export_dir": str(smb_tmp / "export"), "samba.snippet_path": str(snippet),
                                   "samba.share_user": share_user, "samba.reload_command": []})
    samba.apply(cfg.samba, enabled=True)
    samba.request_password(cfg, "set while smbd sleeps")
    assert run_unit(snippet, smbd) is False                     # no smbd: the reload is skipped ...
    assert not snippet.with_name(samba.PASSWORD_REQUEST).exists()      # ... the password is not
    smbd.start()
    with connected(smbd.port, share_user, "set while smbd sleeps") as kw:
        names = wait_for(lambda: smbclient.listdir("\\\\127.0.0.1\\meetings", **kw), 60,
                         what="the share user reading")
    assert "SHA256SUMS" in names and sums
