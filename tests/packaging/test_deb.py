"""The built package as a file: lintian, what it holds, its metadata, one version source."""
from __future__ import annotations

import os
import re
import subprocess
import tomllib

import pytest

from steno_exportd import config
from tests.packaging import elf
from tests.packaging.conftest import VERSION
from tests.parts import require_tool
from tests.parts.daemon import REPO


def _field(deb, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_lintian_reports_no_errors(deb, tmp_path):
    require_tool("lintian")
    # its temp files in the test's folder: lintian leaves /tmp/mldbm-elf-* behind
    r = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
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
                 "usr/lib/steno-exportd/pyvenv.cfg", "usr/lib/steno-exportd/samba-share-user"):
        assert (root / path).is_file(), path
    # the samba reload unit runs the share user's helper: shipped where the unit looks, executable
    unit = (root / "lib/systemd/system/steno-exportd-samba-reload.service").read_text()
    assert "/usr/lib/steno-exportd/samba-share-user " in unit
    assert os.access(root / "usr/lib/steno-exportd/samba-share-user", os.X_OK)
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


def test_lock_pins_every_runtime_dependency():
    """Each runtime dependency in pyproject.toml is pinned in packaging/requirements.lock to a version it
    accepts, with at least one hash (`make lock` after a new dependency; the build checks the rest)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    lock = (REPO / "packaging" / "requirements.lock").read_text()
    pins = {canonicalize_name(m.group(1)): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}", lock, re.M)}
    assert pins and len(pins) == len(re.findall(r"^\S+==", lock, re.M)), "a pin without a hash"
    wrong = []
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(pinned, prereleases=True):
            wrong.append((dep, pinned))
    assert wrong == [], f"not pinned (or pinned outside the range) in the lock: {wrong}; run `make lock`"


def test_package_holds_every_module_and_data_file_of_the_source(deb, tmp_path):
    """Whatever the source tree's steno_exportd/ holds (modules, templates, static files, schemas) is in
    the private environment: a file the package data patterns miss would fail only on a recorder."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "steno_exportd"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(files) > 50
    root = elf.unpack(deb, tmp_path / "root")
    site = root / "usr/lib/steno-exportd/lib/python3.11/site-packages"
    missing = [f for f in files if not (site / f).is_file()]
    assert missing == [], missing


def test_an_incomplete_lock_fails_the_build(deb, tmp_path, capfd):
    """The private environment is installed in pip's hash-checking mode with dependencies: a package
    whose dependency the lock does not pin stops the build (et_xmlfile, which openpyxl needs)."""
    import argparse
    import importlib.util
    arch = _field(deb, "Architecture")
    wheelhouse = REPO / "build" / f"wheelhouse-{arch}"      # what `make deb` fetched for the fixture
    assert (wheelhouse / ".lock-sha256").is_file()
    spec = importlib.util.spec_from_file_location("privenv", REPO / "packaging" / "privenv.py")
    privenv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(privenv)
    full = privenv.LOCK.read_text()
    cut = re.sub(r"^et[-_]xmlfile==\S+ \\\n(    --hash=\S+ \\\n)*    --hash=\S+\n", "", full, flags=re.M | re.I)
    assert cut != full and "openpyxl==" in cut
    privenv.LOCK = tmp_path / "requirements.lock"
    privenv.LOCK.write_text(cut)
    args = argparse.Namespace(arch=arch, wheelhouse=str(wheelhouse), dest=str(tmp_path / "root"),
                              substvars=str(tmp_path / "substvars"))
    capfd.readouterr()
    with pytest.raises(subprocess.CalledProcessError):
        privenv.cmd_install(args)
    said = capfd.readouterr()
    assert "require-hashes" in said.err and re.search(r"et[-_]xmlfile", said.err, re.I), said.err[-3000:]
    assert not (tmp_path / "root/usr/bin/steno-exportd").exists()
    # the same install with the whole lock succeeds (the failure above is the missing pin)
    privenv.LOCK.write_text(full)
    privenv.cmd_install(argparse.Namespace(**{**vars(args), "dest": str(tmp_path / "root2")}))
    assert (tmp_path / "root2/usr/bin/steno-exportd").is_file()
