"""The Debian package, built once per test session, and throwaway systemd containers to install it in."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.parts import require_root, require_tool
from tests.parts.daemon import REPO
from tests.parts.nspawn import Container

VERSION = re.match(r"steno-exportd \(([^)]+)\)", (REPO / "debian" / "changelog").read_text()).group(1)


def build(arch: str, out: Path) -> Path:
    """`make deb ARCH=...` as a developer runs it (lintian is a test of its own here: LINTIAN=no)."""
    require_root()
    require_tool("make", "dpkg-buildpackage", "dh", "dpkg-deb", "readelf")
    t0 = time.monotonic()
    r = subprocess.run(["make", "-C", str(REPO), "deb", f"ARCH={arch}", f"DEB_OUT={out}", "LINTIAN=no"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"make deb ARCH={arch} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    deb = out / f"steno-exportd_{VERSION}_{arch}.deb"
    assert deb.is_file(), r.stdout
    sys.stderr.write(f"make deb ARCH={arch}: {time.monotonic() - t0:.0f} s, {deb.stat().st_size / 1e6:.1f} MB\n")
    return deb


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    """This machine's architecture's package."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    return build(arch, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def previous_deb(deb, tmp_path_factory) -> Path:
    """The same package with a lower version, standing in for the previous build (for the upgrade test)."""
    d = tmp_path_factory.mktemp("previous")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(d / "tree")], check=True)
    control = d / "tree" / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {VERSION}~previous1", control.read_text(), flags=re.M))
    out = d / f"steno-exportd_{VERSION}~previous1.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zxz", "-z1", str(d / "tree"), str(out)], check=True, capture_output=True)
    shutil.rmtree(d / "tree")
    return out


@pytest.fixture(scope="module")
def container_factory(tmp_path_factory):
    """Boots containers for one test module; each is powered off and its overlay removed, whatever happens."""
    made: list[Container] = []

    def make(name: str, subnet: str) -> Container:
        c = Container(name, subnet, tmp_path_factory.mktemp("nspawn") / "console.log")
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in reversed(made):
            c.stop()


def recorder_library(c: Container) -> None:
    """The recorder's data as the recorder leaves it: its own group, nothing readable by others."""
    data = c.root / "var" / "lib" / "silentsteno" / "data"
    subprocess.run([sys.executable, "-m", "steno_exportd", "demo-data", "--out", str(data), "--sessions", "7",
                    "--small"], check=True, capture_output=True, cwd=REPO)
    c.run("getent group silentsteno >/dev/null || groupadd --system silentsteno; "
          "chown -R root:silentsteno /var/lib/silentsteno && chmod -R u=rwX,g=rX,o= /var/lib/silentsteno")
