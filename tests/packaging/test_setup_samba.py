"""`steno-exportctl setup-samba`: smb.conf's one include line, against the real testparm."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.parts import require_root, require_tool

SHARE = "[meetings]\n\tpath = /srv/steno-export/SilentSteno\n\tread only = yes\n\tguest ok = yes\n"
BASE = "[global]\n\tworkgroup = WORKGROUP\n\tmap to guest = Bad User\n\n[homes]\n\tbrowseable = no\n"


@pytest.fixture
def samba():
    require_tool("testparm")
    d = Path(tempfile.mkdtemp(prefix="steno-setup-samba-"))      # readable by others, like /etc/samba
    d.chmod(0o755)
    (d / "smb.conf").write_text(BASE)
    (d / "snippet.conf").write_text(SHARE)
    (d / "config.toml").write_text(f'[samba]\nsnippet_path = "{d / "snippet.conf"}"\n')
    try:
        yield d
    finally:
        shutil.rmtree(d)


def ctl(d: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("steno-exportctl", path=str(Path(sys.executable).parent))
    cmd = [exe, "setup-samba", "--smb-conf", str(d / "smb.conf"), "--config", str(d / "config.toml"), *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": "/usr/bin:/bin"})


def backups(d: Path) -> list[Path]:
    return sorted(d.glob("smb.conf.steno-exportd-*.bak"))


def test_adds_the_include_line_once_at_the_end_with_a_backup(samba):
    r = ctl(samba)
    assert r.returncode == 0, r.stderr
    text = (samba / "smb.conf").read_text()
    assert text.startswith(BASE) and text.rstrip().endswith(f"include = {samba / 'snippet.conf'}")
    assert [b.read_text() for b in backups(samba)] == [BASE]
    # smbd now sees the share, as its own section after [homes]
    shown = subprocess.run(["testparm", "-s", str(samba / "smb.conf")], capture_output=True, text=True).stdout
    assert "[meetings]" in shown and shown.index("[homes]") < shown.index("[meetings]")
    again = ctl(samba)
    assert again.returncode == 0 and "already includes" in again.stdout
    assert (samba / "smb.conf").read_text() == text and len(backups(samba)) == 1


def test_remove_restores_smb_conf_as_it_was(samba):
    assert ctl(samba).returncode == 0
    r = ctl(samba, "--remove")
    assert r.returncode == 0, r.stderr
    assert (samba / "smb.conf").read_text() == BASE
    assert ctl(samba, "--remove").stdout.strip().endswith("nothing to do")


def test_a_share_definition_testparm_refuses_leaves_smb_conf_alone(samba):
    (samba / "snippet.conf").write_text("[meetings\n\tpath = /x\n")
    r = ctl(samba)
    assert r.returncode == 1 and "testparm refuses" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (samba / "smb.conf").read_text() == BASE and backups(samba) == []
    assert [p.name for p in samba.iterdir() if p.name.startswith(".smb.conf")] == []     # no temp file left


def test_missing_samba_or_snippet_is_a_clear_error(samba):
    (samba / "snippet.conf").unlink()
    r = ctl(samba)
    assert r.returncode == 1 and "does not exist yet" in r.stderr and (samba / "smb.conf").read_text() == BASE
    (samba / "smb.conf").unlink()
    r = ctl(samba)
    assert r.returncode == 1 and "install samba first" in r.stderr


def test_not_root_is_refused_without_a_change(samba):
    require_root()
    require_tool("setpriv")
    r = ctl(samba, user="nobody")
    assert r.returncode == 5 and "as root" in r.stderr, (r.returncode, r.stderr)
    assert (samba / "smb.conf").read_text() == BASE
