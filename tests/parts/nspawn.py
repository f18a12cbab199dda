"""A throwaway container with a real systemd as PID 1 (TESTING.md): systemd-nspawn over an overlay of
this machine's root, with a veth pair to the host. Commands run inside as transient units of its systemd
(`systemd-run --pipe --wait`), entered with nsenter (this host has no machined for `-M`)."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.parts import require, require_root, require_tool, wait_for

# Units of this machine that have nothing to do with the tests and slow the boot down (masked).
MASKED = ("postgresql.service", "postgresql@.service", "nginx.service", "samba-ad-dc.service", "nmbd.service",
          "winbind.service", "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
          "e2scrub_reap.service", "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer", "fstrim.timer",
          "cron.service", "ssh.service", "systemd-networkd.service", "systemd-resolved.service",
          "networking.service", "wsdd.service", "console-getty.service", "getty@.service", "exim4.service",
          "logrotate.timer", "unattended-upgrades.service", "chrony.service", "systemd-timesyncd.service")
# The package's own paths: whatever this machine has there (a daemon some test or person ran as root with
# the default state folder leaves root-owned databases in /var/lib/steno-exportd) is not part of the fresh
# system the package is installed on. Removed in the overlay only (whiteouts); the machine keeps its files.
OURS = ("etc/steno-exportd", "var/lib/steno-exportd", "srv/steno-export", "usr/lib/steno-exportd",
        "run/steno-exportd")


class Container:
    """One booted container: `run()` a command in it, `host_ip`/`ip` on the veth between them."""

    def __init__(self, name: str, subnet: str, log: Path) -> None:
        require_root()
        require_tool("systemd-nspawn", "nsenter", "ip")
        require(Path("/proc/filesystems").read_text().find("overlay") >= 0, "overlayfs in the kernel")
        self.name = name
        self.host_ip, self.ip = f"{subnet}.1", f"{subnet}.2"
        self.host_if = f"vs-{name}"[:15]
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/var/tmp"))
        self.root = self.dir / "root"
        self.upper = self.dir / "upper"
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.leader = 0
        for d in ("upper", "work", "root"):
            (self.dir / d).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir=/,upperdir={self.upper},workdir={self.dir / 'work'}", str(self.root)],
                       check=True, capture_output=True)
        units = self.root / "etc" / "systemd" / "system"
        for unit in MASKED:
            link = units / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")
        for rel in OURS:
            p = self.root / rel
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
        (self.root / "etc" / "hostname").write_text(name + "\n")
        # A container image's "never start services" hook (exit 101) may be on this machine: a recorder has
        # none, and the maintainer scripts must start the units as they would there.
        policy = self.root / "usr" / "sbin" / "policy-rc.d"
        if policy.exists():
            policy.unlink()

    def boot(self, timeout: float = 90) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", str(self.root), "-M", self.name, "--boot", "--register=no",
                 "--keep-unit", f"--network-veth-extra={self.host_if}:eth1", "--", "systemd.unit=multi-user.target"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = int(wait_for(self._find_leader, timeout=30, interval=0.1, what="the container's PID 1"))
        wait_for(lambda: self._state() in ("running", "degraded"), timeout=timeout, interval=0.5,
                 what=f"the container to boot (log: {self.log})")
        subprocess.run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if], check=True)
        subprocess.run(["ip", "link", "set", self.host_if, "up"], check=True)
        self.run(f"ip addr add {self.ip}/30 dev eth1 && ip link set eth1 up")

    def _find_leader(self) -> int:
        if self.proc.poll() is not None:
            pytest.fail(f"systemd-nspawn exited {self.proc.returncode}: {self.log.read_text(errors='replace')[-3000:]}")
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
        return 0

    def _state(self) -> str:
        r = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "systemctl", "is-system-running"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip()

    def run(self, script: str, user: str | None = None, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        """A shell command inside, as a transient unit of the container's systemd (as `user` if given)."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "systemd-run", "--quiet", "--wait", "--pipe", "--collect",
               "--setenv=DEBIAN_FRONTEND=noninteractive", "--setenv=LC_ALL=C.UTF-8"]
        if user:
            cmd.append(f"--uid={user}")
        cmd += ["--", "/bin/sh", "-c", script.replace("$", "$$")]      # systemd would expand $VAR itself
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input or "")
        if check and r.returncode != 0:
            pytest.fail(f"in the container{f' as {user}' if user else ''}: {script}\n"
                        f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(f"systemctl show {shlex.quote(unit)} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = "steno-exportd") -> str:
        return self.run(f"journalctl -u {unit} --no-pager -o cat | tail -n 60", check=False).stdout

    def install(self, deb: Path, name: str | None = None) -> subprocess.CompletedProcess:
        """`apt install ./file.deb` inside, as the README says (the file is copied in first)."""
        target = self.root / "var" / "tmp" / (name or deb.name)
        target.write_bytes(deb.read_bytes())
        try:
            return self.run(f"cd /var/tmp && apt-get install -y -q ./{target.name} 2>&1", timeout=300)
        finally:
            target.unlink()

    def stop(self) -> None:
        """Power off (as machinectl poweroff does: SIGRTMIN+4 to PID 1), remove the veth, unmount, delete."""
        try:
            if self.proc and self.proc.poll() is None:
                if self.leader:
                    os.kill(self.leader, signal.SIGRTMIN + 4)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
        finally:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
            for _ in range(50):
                if subprocess.run(["umount", str(self.root)], capture_output=True).returncode == 0 \
                        or not os.path.ismount(self.root):
                    break
                time.sleep(0.2)
            else:
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], capture_output=True)
