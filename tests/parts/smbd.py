"""A real smbd as a child process on a free loopback port, with test users (TESTING.md)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Iterator

from steno_exportd.config import SmbRemote

import pytest

from tests import parts
from tests.parts.smbdata import make_export_tree

USER_PREFIX = "stenotest"


def free_port(lo: int = 4450, hi: int = 4499) -> int:
    """A TCP port in [lo, hi] nobody listens on (random start: other engineers share the range)."""
    ports = list(range(lo, hi + 1))
    start = secrets.randbelow(len(ports))
    for p in ports[start:] + ports[:start]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise RuntimeError(f"no free port in {lo}-{hi}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclasses.dataclass
class Smbd:
    """One smbd child: its directory, config, port and users."""

    root: pathlib.Path
    port: int
    conf: pathlib.Path
    extra_global: str = ""
    shares: str = ""
    include: str = ""
    interfaces: str = "lo"          # where it listens: lo, plus e.g. an office LAN's NAS address
    proc: subprocess.Popen | None = None
    users: dict[str, str] = dataclasses.field(default_factory=dict)

    def write_conf(self) -> None:
        r = self.root
        for d in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            (r / d).mkdir(exist_ok=True)
        inc = f"include = {self.include}\n" if self.include else ""
        self.conf.write_text(f"""[global]
smb ports = {self.port}
interfaces = {self.interfaces}
bind interfaces only = yes
disable netbios = yes
private dir = {r}/private
lock directory = {r}/lock
state directory = {r}/state
cache directory = {r}/cache
pid directory = {r}/pid
ncalrpc dir = {r}/ncalrpc
log file = {r}/log/log.%m
passdb backend = tdbsam:{r}/private/passdb.tdb
map to guest = Bad User
load printers = no
printcap name = /dev/null
disable spoolss = yes
{self.extra_global}
{self.shares}
{inc}""")

    def start(self) -> None:
        """Start smbd; on a port lost to a race with another test, retry on a fresh port."""
        for attempt in range(3):
            try:
                return self._start()
            except RuntimeError:
                if attempt == 2 or self.proc is None or self.proc.returncode is None:
                    raise
                if self.proc.returncode is not None and not _listening(self.port):
                    self.port = free_port()

    def _start(self) -> None:
        self.write_conf()
        self.proc = subprocess.Popen(
            ["smbd", "-F", "--no-process-group", "--debug-stdout", "-d", "1", "-s", str(self.conf)],
            stdout=open(self.root / "smbd.out", "ab"), stderr=subprocess.STDOUT,
            process_group=0)  # smbd signals its whole process group when it exits: not ours
        deadline_ok = parts.wait_for(lambda: _listening(self.port) or self.proc.poll() is not None,
                                         timeout=15, what=f"smbd on port {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"smbd exited: {self.log()[-2000:]}")
        assert deadline_ok

    def kill(self) -> None:
        """SIGKILL smbd and its children (the server vanishes mid-whatever)."""
        if self.proc and self.proc.poll() is None:
            # smbd forks one child per connection; they live in our process group, so find them by ppid.
            for pid in _children(self.proc.pid):
                _kill(pid)
            self.proc.kill()
            self.proc.wait(10)
        parts.wait_for(lambda: not _listening(self.port), timeout=10, what="smbd gone")

    def signal_all(self, sig: int) -> None:
        """Send sig to smbd and its per-connection children (SIGSTOP: a server that hangs)."""
        if self.proc and self.proc.poll() is None:
            for pid in [self.proc.pid, *_children(self.proc.pid)]:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        self.signal_all(signal.SIGCONT)
        if self.proc and self.proc.poll() is None:
            kids = _children(self.proc.pid)
            parts.stop_process(self.proc)
            for pid in kids:
                _kill(pid)

    def reload(self) -> None:
        subprocess.run(["smbcontrol", "-s", str(self.conf), "smbd", "reload-config"], check=True,
                       capture_output=True, timeout=20)

    def reload_command(self) -> list[str]:
        return ["smbcontrol", "-s", str(self.conf), "smbd", "reload-config"]

    def close_command(self) -> list[str]:
        return ["smbcontrol", "-s", str(self.conf), "smbd", "close-share"]

    def add_user(self, password: str) -> str:
        name = f"{USER_PREFIX}{secrets.token_hex(3)}"
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
        self.users[name] = password
        subprocess.run(["smbpasswd", "-c", str(self.conf), "-a", "-s", name], input=f"{password}\n{password}\n",
                       text=True, check=True, capture_output=True)
        return name

    def remove_users(self) -> None:
        for name in list(self.users):
            subprocess.run(["userdel", name], capture_output=True)
            self.users.pop(name)

    def log(self) -> str:
        try:
            return (self.root / "smbd.out").read_text(errors="replace")
        except OSError:
            return ""


def _children(pid: int) -> list[int]:
    out = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int(parts.proc_stat(int(d.name))[1])
        except OSError:
            continue
        if ppid == pid:
            out.append(int(d.name))
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def require_samba() -> None:
    parts.require_root()
    parts.require_tool("smbd", "testparm", "smbcontrol", "smbpasswd", "useradd")
    try:
        import smbclient  # noqa: F401
    except ImportError:
        parts.require(False, "the smbprotocol package")


def make_smbd(root: pathlib.Path, *, shares: str = "", include: str = "", extra_global: str = "",
              interfaces: str = "lo") -> Smbd:
    """A configured (not yet started) smbd under root."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    return Smbd(root=root, port=free_port(), conf=root / "smb.conf", shares=shares, include=include,
                extra_global=extra_global, interfaces=interfaces)


@pytest.fixture
def smb_tmp() -> Iterator[pathlib.Path]:
    """A world-traversable temp dir (pytest's tmp_path is 0700: guests map to nobody)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="steno-smbtest-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        rmtree(d)


@pytest.fixture
def smbd_factory(smb_tmp) -> Iterator:
    """Factory of started smbd instances; all are stopped and their users removed afterwards."""
    require_samba()
    made: list[Smbd] = []
    tmp_path = smb_tmp

    def make(**kw) -> Smbd:
        s = make_smbd(tmp_path / f"smbd{len(made)}", **kw)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            try:
                s.stop()
            except Exception as e:  # keep tearing down the others
                print(f"smbd stop failed: {e}\n{s.log()[-2000:]}")
            s.remove_users()


def rmtree(p: pathlib.Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


PW = "push-pw-1"


def start_office_nas(root: pathlib.Path, smbd_factory, interfaces: str = "lo", server: str = "127.0.0.1",
                     extra_global: str = ""):
    """An 'office NAS' under root: a writable share [push] (root/nas, made if not there) for one user, a read-only
    share [ro]; started, listening on ``interfaces`` (``extra_global``: more of smb.conf's [global]). Returns (smbd,
    the SmbRemote a recorder at ``server`` uses)."""
    push_dir = root / "nas"
    push_dir.mkdir(exist_ok=True)       # (a test may have mounted a small filesystem there: a NAS that fills)
    (root / "ro").mkdir()
    smbd = smbd_factory(interfaces=interfaces, extra_global=extra_global, shares=f"""
[push]
   path = {push_dir}
   read only = no
   force user = root
[ro]
   path = {root / 'ro'}
   read only = yes
   guest ok = yes
""")
    smbd.start()
    user = smbd.add_user(PW)
    pwfile = root / "pw"
    pwfile.write_text(PW + "\n")
    os.chmod(pwfile, 0o600)
    return smbd, SmbRemote(name="office", server=server, port=smbd.port, share="push", path="",
                           username=user, password_file=str(pwfile), timeout=5)


@pytest.fixture
def office(smb_tmp, smbd_factory):
    """An 'office NAS' on loopback (start_office_nas) and an export tree."""
    smbd, remote = start_office_nas(smb_tmp, smbd_factory)
    sums = make_export_tree(smb_tmp / "export", sessions=3)
    return smbd, remote, smb_tmp, sums
