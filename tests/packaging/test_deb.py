"""The built package as a file: lintian, what it holds, its metadata, one version source."""
from __future__ import annotations

import re
import subprocess
import tomllib

from steno_exportd import config
from tests.packaging import elf
from tests.packaging.conftest import VERSION
from tests.parts import require_tool
from tests.parts.daemon import REPO


def _field(deb, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_lintian_reports_no_errors(deb):
    require_tool("lintian")
    r = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True, timeout=900)
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("E:")]
    assert r.returncode == 0 and errors == [], r.stdout[-4000:] + r.stderr[-2000:]
    print(f"lintian: {sum(ln.startswith('W:') for ln in r.stdout.splitlines())} warnings, 0 errors")


def test_package_name_version_and_dependencies(deb):
    assert deb.name == f"steno-exportd_{VERSION}_amd64.deb" or deb.name.startswith(f"steno-exportd_{VERSION}_")
    assert _field(deb, "Package") == "steno-exportd" and _field(deb, "Version") == VERSION
    depends = _field(deb, "Depends")
    for dep in ("python3 (>= 3.11)", "python3 (<< 3.12)", "dbus", "systemd"):
        assert dep in depends, depends
    assert re.search(r"libc6 \(>= 2\.\d+\)", depends), depends


def test_package_holds_everything_an_appliance_needs(deb, tmp_path):
    root = elf.unpack(deb, tmp_path / "root")
    for path in ("usr/bin/steno-exportd", "usr/bin/steno-exportctl", "etc/steno-exportd/config.toml",
                 "lib/systemd/system/steno-exportd.service", "lib/systemd/system/steno-exportd-samba-reload.path",
                 "lib/systemd/system/steno-exportd-samba-reload.service", "usr/lib/sysusers.d/steno-exportd.conf",
                 "usr/lib/tmpfiles.d/steno-exportd.conf", "usr/share/dbus-1/system.d/org.silentsteno.Export1.conf",
                 "usr/share/dbus-1/system-services/org.silentsteno.Export1.service",
                 "usr/share/polkit-1/rules.d/50-steno-exportd.rules", "lib/udev/rules.d/70-steno-exportd.rules",
                 "usr/share/doc/steno-exportd/examples/config.toml", "usr/share/doc/steno-exportd/samba.md",
                 "usr/lib/steno-exportd/pyvenv.cfg"):
        assert (root / path).is_file(), path
    # a man page for every command in /usr/bin
    for cmd in (root / "usr" / "bin").iterdir():
        assert list((root / "usr" / "share" / "man").glob(f"man*/{cmd.name}.*.gz")), f"no man page for {cmd.name}"
    # the one conffile is the config; dpkg keeps an admin's edits to it
    conffiles = subprocess.run(f"dpkg-deb --ctrl-tarfile {deb} | tar -xOf - ./conffiles", shell=True,
                               capture_output=True, text=True, check=True).stdout.split()
    assert conffiles == ["/etc/steno-exportd/config.toml"]
    # the private environment is not byte-compiled in the package (postinst does it, prerm removes it)
    assert not list(root.rglob("__pycache__")) and not list(root.rglob("*.pyc"))
    # every ELF file is for this package's architecture
    arch = _field(deb, "Architecture")
    found = elf.machines(root)
    assert found and set(found.values()) == {{"amd64": "x86-64", "arm64": "aarch64"}[arch]}, found


def test_the_version_has_one_source_debian_changelog(deb, tmp_path):
    """pyproject.toml has no version of its own; the wheel inside the package carries the changelog's."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    root = elf.unpack(deb, tmp_path / "root")
    meta = next(root.glob("usr/lib/steno-exportd/lib/python3.11/site-packages/steno_exportd-*.dist-info/METADATA"))
    assert re.search(r"^Version: (.*)$", meta.read_text(), re.M).group(1) == VERSION.replace("~", "")
    from steno_exportd import __version__
    assert __version__ == VERSION.replace("~", "")


def test_shipped_conffile_means_the_defaults(tmp_path):
    """/etc/steno-exportd/config.toml only shows what to change: loaded as it is, it is the defaults."""
    assert config.load(REPO / "config" / "etc-config.toml") == config.Config()


def test_shipped_defaults_fit_the_shipped_unit():
    """Every default export folder is writable under the unit (ProtectSystem=strict elsewhere), and
    the Samba reload is left to the root .path unit (the sandboxed service cannot signal smbd)."""
    unit = (REPO / "systemd" / "steno-exportd.service").read_text()
    writable = [p.lstrip("-") for ln in unit.splitlines() if ln.startswith("ReadWritePaths=")
                for p in ln.split("=", 1)[1].split()]
    cfg = config.Config()
    for d in cfg.export.allowed_dirs:
        assert any(d == w or d.startswith(w + "/") for w in writable), (d, writable)
    assert cfg.samba.reload_command == []
    path_unit = (REPO / "systemd" / "steno-exportd-samba-reload.path").read_text()
    assert f"PathChanged={cfg.samba.snippet_path}" in path_unit
