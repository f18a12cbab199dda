"""The real daemon as a subprocess with a NOTIFY_SOCKET the test reads; its log is printed on failure."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.parts import require, stop_process

REPO = Path(__file__).resolve().parents[2]


def core_available() -> bool:
    try:
        import steno_exportd.core  # noqa: F401
        import steno_exportd.library  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def require_core() -> None:
    require(core_available(), "the export core (steno_exportd.core and steno_exportd.library)")


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def seen(self, key: str, value: str | None = None, since: int = 0) -> list[dict]:
        self.drain()
        return [m for _, m in self.messages[since:] if key in m and (value is None or m[key] == value)]

    def wait(self, key: str, value: str | None = None, timeout: float = 10.0, since: int = 0,
             proc: "DaemonProc | None" = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.seen(key, value, since)
            if found:
                return found[0]
            if proc is not None and proc.proc.poll() is not None:
                pytest.fail(f"the daemon exited with {proc.proc.returncode} before {key}={value}:\n{proc.log()}")
            time.sleep(0.02)
        pytest.fail(f"no {key}={value} from the daemon within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def write_config(path: Path, tmp: Path, bus: str, **extra: str) -> Path:
    """A config for a test daemon, everything under tmp; extra: 'section.key' -> TOML value."""
    sections: dict[str, dict[str, str]] = {
        "recorder": {"db_path": f'"{tmp}/library/silent_steno.db"', "poll_interval": "0.5"},
        "state": {"dir": f'"{tmp}/state"', "runtime_dir": f'"{tmp}/run"'},
        "export": {"allowed_dirs": f'["{tmp}/exports"]'},
        "http": {"enabled": "false"},
        "usb": {"enabled": "false"},
        "samba": {"export_dir": f'"{tmp}/share"', "snippet_path": f'"{tmp}/samba/snippet.conf"'},
        "dbus": {"bus": f'"{bus}"', "job_linger_seconds": "2.0"},
    }
    for dotted, value in extra.items():
        sec, key = dotted.rsplit(".", 1)
        sections.setdefault(sec, {})[key] = value
    text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {v}" for k, v in kv.items()) + "\n"
                     for s, kv in sections.items())
    path.write_text(text)
    return path


def make_library(tmp: Path, sessions: int = 4, small: bool = True) -> Path:
    """A demo recorder library via `steno-exportd demo-data`."""
    out = tmp / "library"
    args = [sys.executable, "-m", "steno_exportd", "demo-data", "--out", str(out),
            "--sessions", str(sessions), "--seed", "1"] + (["--small"] if small else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and small:
        r = subprocess.run(args[:-1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out / "silent_steno.db"


class DaemonProc:
    """`steno-exportd --config C run` as a child with NOTIFY_SOCKET and WATCHDOG_USEC."""

    def __init__(self, tmp: Path, config: Path, watchdog_usec: int = 1_000_000, env: dict | None = None) -> None:
        self.tmp = tmp
        self.notify = NotifySocket(tmp / "notify.sock")
        self.logfile = tmp / "daemon.log"
        e = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC=str(watchdog_usec),
                 PYTHONUNBUFFERED="1")
        e.pop("DBUS_SESSION_BUS_ADDRESS", None)
        e.update(env or {})
        self.started = time.monotonic()
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "steno_exportd", "--config", str(config), "run"],
                                         stdout=log, stderr=subprocess.STDOUT, env=e, cwd=REPO)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> dict:
        return self.notify.wait("READY", "1", timeout, proc=self)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.notify.close()


@pytest.fixture
def daemon_factory(tmp_path: Path):
    """Start daemons; each is stopped after the test and its log printed when the test failed."""
    procs: list[DaemonProc] = []

    def start(config: Path, **kw) -> DaemonProc:
        d = tmp_path / f"d{len(procs)}"
        d.mkdir()
        p = DaemonProc(d, config, **kw)
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.stop()
        # pytest shows captured output only for a failed test: the daemon's log then.
        sys.stderr.write(f"\n---- daemon log ({p.logfile}) ----\n{p.log()}\n")
