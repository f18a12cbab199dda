"""`make deb ARCH=arm64` for the Pi: built on this amd64 machine from the aarch64 wheels, checked ELF by
ELF, and run under qemu-user in an arm64 Debian bookworm tree made of the package's own dependencies."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.packaging import elf
from tests.packaging.conftest import VERSION, build
from tests.parts import require_root, require_tool

QEMU = "/usr/bin/qemu-aarch64-static"
# Extension modules that need what the package does not use (Tk).
OPTIONAL = {"PIL._imagingtk"}


@pytest.fixture(scope="module")
def arm64_deb(tmp_path_factory):
    return build("arm64", tmp_path_factory.mktemp("deb-arm64"))


def test_arm64_package_holds_only_aarch64_machine_code(arm64_deb, tmp_path):
    assert arm64_deb.name == f"steno-exportd_{VERSION}_arm64.deb"
    arch = subprocess.run(["dpkg-deb", "-f", str(arm64_deb), "Architecture"], capture_output=True, text=True)
    assert arch.stdout.strip() == "arm64"
    found = elf.machines(elf.unpack(arm64_deb, tmp_path / "root"))
    wrong = {p: m for p, m in found.items() if m != "aarch64"}
    assert len(found) >= 20 and wrong == {}, wrong
    print(f"arm64 package: {len(found)} ELF files, all aarch64")


SMOKE = """
import importlib, pathlib, sys
site = pathlib.Path(sys.prefix) / "lib/python3.11/site-packages"
mods = sorted(".".join(p.relative_to(site).parts[:-1] + (p.name.split(".")[0],))
              for p in site.rglob("*.so") if ".cpython-311-" in p.name or ".abi3." in p.name)
bad = []
for m in mods:
    if m in sys.argv[1].split(","):
        continue
    try:
        importlib.import_module(m)
    except Exception as e:
        bad.append(f"{m}: {e!r}")
print(json.dumps({"modules": len(mods), "failed": bad, "prefix": sys.prefix}))
""".replace("import importlib", "import importlib, json")
CLI = 'import sys; from steno_exportd.cli import main; sys.argv[0] = "steno-exportd"; sys.exit(main(sys.argv[1:]))'


def test_arm64_package_runs_under_qemu_user(arm64_deb, tmp_path):
    """Every extension module loads on aarch64 and the daemon's commands render a PDF, a DOCX and an XLSX."""
    require_root()
    require_tool(QEMU, "mmdebstrap", "chroot")
    depends = subprocess.run(["dpkg-deb", "-f", str(arm64_deb), "Depends"], capture_output=True, text=True,
                             check=True).stdout
    libs = sorted({m.group(1) for m in re.finditer(r"(lib[\w.+-]+|zlib1g)", depends)})
    root = tmp_path / "arm64"
    r = subprocess.run(["mmdebstrap", "--variant=extract", "--arch=arm64", "--quiet",
                        f"--include={','.join(['python3-minimal', 'python3.11-minimal', 'libpython3.11-stdlib', *libs])}",
                        "bookworm", str(root)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    elf.unpack(arm64_deb, root)
    shutil.copy(QEMU, root / "usr" / "bin")
    (root / "tmp").mkdir(exist_ok=True)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["chroot", str(root), QEMU, "/usr/lib/steno-exportd/bin/python3", "-I", *args],
                              capture_output=True, text=True, timeout=300)

    smoke = run("-c", SMOKE, ",".join(sorted(OPTIONAL)))
    assert smoke.returncode == 0, smoke.stderr
    result = json.loads(smoke.stdout)
    assert result["prefix"] == "/usr/lib/steno-exportd" and result["modules"] >= 20 and result["failed"] == [], result
    assert run("-c", CLI, "--version").stdout.strip() == f"steno-exportd {VERSION.replace('~', '')}"
    assert run("-c", CLI, "demo-data", "--out", "/tmp/lib", "--sessions", "7", "--small").returncode == 0
    for fmt, magic in (("pdf", b"%PDF-"), ("docx", b"PK\x03\x04"), ("xlsx", b"PK\x03\x04")):
        r = run("-c", CLI, "render", "--db", "/tmp/lib/silent_steno.db", "--session", "1", "--format", fmt,
                "-o", f"/tmp/s1.{fmt}")
        assert r.returncode == 0, r.stderr
        assert (root / "tmp" / f"s1.{fmt}").read_bytes().startswith(magic)
    print(f"qemu-user: {result['modules']} aarch64 extension modules loaded; render pdf/docx/xlsx ran")
