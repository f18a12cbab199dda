"""A real systemd user manager in a private mount namespace (TESTING.md), driven with systemctl --user."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.parts import require, require_root, require_tool, wait_for

SYSTEMD = "/lib/systemd/systemd"


class UserManager:
    def __init__(self, tmp: Path) -> None:
        require_root()
        require_tool(SYSTEMD, "unshare", "nsenter", "systemctl")
        self.xdg = tmp / "xdg"
        self.xdg.mkdir(mode=0o700)
        self.unit_dir = self.xdg / "systemd" / "user"
        self.unit_dir.mkdir(parents=True)
        self.log = tmp / "manager.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && "
                 f"XDG_RUNTIME_DIR={self.xdg} exec {SYSTEMD} --user"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._up, timeout=20, interval=0.1, what="the systemd user manager")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"systemd --user exited: {self.log.read_text(errors='replace')}")
        r = self.systemctl("is-system-running", check=False)
        return r.stdout.strip() in ("running", "degraded")

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(["nsenter", "-m", "-t", str(self.proc.pid), "env", f"XDG_RUNTIME_DIR={self.xdg}",
                            "systemctl", "--user", *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"systemctl --user {' '.join(args)}: {r.returncode} {r.stderr}")
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def user_manager(tmp_path: Path):
    m = UserManager(tmp_path)
    try:
        yield m
    finally:
        m.stop()
