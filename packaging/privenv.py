#!/usr/bin/python3
"""The package's private Python environment under /usr/lib/steno-exportd (what bookworm does not package).

    privenv.py lock [--upgrade]           resolve pyproject's dependencies, pin them with the hashes of the
                                          amd64 and arm64 wheels (packaging/requirements.lock); needs PyPI.
                                          Pins already in the lock stay (only what is new is resolved);
                                          --upgrade re-resolves everything to the newest releases
    privenv.py fetch --arch A --dest DIR  download the pinned wheels for Debian architecture A, hash-checked
                                          (a source-only pure-Python package is built into a py3-none-any wheel)
    privenv.py install --arch A --wheelhouse DIR --dest ROOT --substvars FILE
                                          offline: the project's wheel and the pinned ones into
                                          ROOT/usr/lib/steno-exportd, /usr/bin wrappers, the dependencies
                                          on Debian packages (libc6 >= the newest manylinux glibc) as substvars

It uses Debian's own python3 and pip, and pip's cross-platform options (--platform/--abi/--python-version),
so an arm64 package is built on amd64 from the aarch64 wheels and checked ELF by ELF.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "packaging" / "requirements.lock"
PYTHON = "/usr/bin/python3"
PY_VERSION = "3.11"                       # bookworm's and Raspberry Pi OS bookworm's python3
GLIBC_MAX = 36                            # bookworm's glibc 2.36: the newest manylinux_2_X we accept
ARCHES = {"amd64": ("x86_64", 62), "arm64": ("aarch64", 183)}   # Debian arch -> (wheel arch, ELF e_machine)
PREFIX = "usr/lib/steno-exportd"
SITE = f"lib/python{PY_VERSION}/site-packages"
ENTRY_POINTS = {"steno-exportd": "steno_exportd.cli", "steno-exportctl": "steno_exportd.exportctl"}
# ELF libraries a manylinux wheel may take from the system (the manylinux policy) -> Debian package.
SYSTEM_LIBS = {
    "libc.so.6": "libc6", "libm.so.6": "libc6", "libpthread.so.0": "libc6", "libdl.so.2": "libc6",
    "librt.so.1": "libc6", "libutil.so.1": "libc6", "libresolv.so.2": "libc6", "libnsl.so.1": "libc6",
    "libgcc_s.so.1": "libgcc-s1", "libstdc++.so.6": "libstdc++6", "libz.so.1": "zlib1g",
    "ld-linux-x86-64.so.2": "libc6", "ld-linux-aarch64.so.1": "libc6",
}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def pip(*args: str) -> list[str]:
    return [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


def platform_args(arch: str) -> list[str]:
    """pip options that select wheels for CPython 3.11 on Debian bookworm of this architecture."""
    machine = ARCHES[arch][0]
    plats = [f"manylinux_2_{y}_{machine}" for y in range(GLIBC_MAX, 16, -1)] + [f"manylinux2014_{machine}"]
    out = ["--python-version", PY_VERSION, "--implementation", "cp", "--abi", "cp" + PY_VERSION.replace(".", "")]
    for p in plats:
        out += ["--platform", p]
    return out


# ---- the lock ---------------------------------------------------------------------------

def read_lock(path: Path = LOCK) -> tuple[list[str], set[str]]:
    """(pins "name==version", names that are built from source) from the lock file."""
    pins, source_only = [], set()
    for line in path.read_text().splitlines():
        m = re.match(r"# source-only: (.*)", line)
        if m:
            source_only |= set(m.group(1).split())
        m = re.match(r"([A-Za-z0-9_.\-]+==[^\s\\]+)", line)
        if m:
            pins.append(m.group(1))
    return pins, source_only


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_lock(args: argparse.Namespace) -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        if sys.version_info[:2] != tuple(map(int, PY_VERSION.split("."))):
            raise SystemExit(f"lock: run it with Python {PY_VERSION} (resolution follows the running Python)")
        keep = []
        if LOCK.exists() and not args.upgrade:     # what is pinned stays pinned: only new packages are added
            (t / "pins.txt").write_text("\n".join(read_lock()[0]) + "\n")
            keep = ["--constraint", str(t / "pins.txt")]
        try:
            run(pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(t / "report.json"),
                    *keep, *deps))
        except subprocess.CalledProcessError:
            raise SystemExit("lock: pip could not resolve pyproject's dependencies"
                             + (" within the current pins; re-resolve all: make lock UPGRADE=1" if keep else ""))
        report = json.loads((t / "report.json").read_text())
        pins, source_only = {}, set()
        for item in report["install"]:
            name, ver = item["metadata"]["name"].lower(), item["metadata"]["version"]
            pins[name] = ver
            if not item["download_info"]["url"].endswith(".whl"):
                source_only.add(name)
        hashes: dict[str, set[str]] = {n: set() for n in pins}
        binary = [f"{n}=={v}" for n, v in sorted(pins.items()) if n not in source_only]
        for arch in ARCHES:
            run(pip("download", "--no-deps", "--only-binary", ":all:", *platform_args(arch),
                    "-d", str(t / arch), *binary))
        src = [f"{n}=={v}" for n, v in sorted(pins.items()) if n in source_only]
        if src:
            run(pip("download", "--no-deps", "--no-binary", ":all:", "-d", str(t / "src"), *src))
        for f in t.glob("*/*"):
            if f.suffix in (".whl", ".gz", ".zip"):
                name = re.split(r"-\d", f.name, maxsplit=1)[0].replace("_", "-").lower()
                key = next((n for n in pins if n.replace("_", "-").replace(".", "-") == name.replace(".", "-")),
                           None)
                if key is None:
                    raise SystemExit(f"lock: {f.name} matches no pinned package")
                hashes[key].add(sha256(f))
    missing = [n for n, h in hashes.items() if not h]
    if missing:
        raise SystemExit(f"lock: no file downloaded for {missing}")
    lines = ["# Pinned dependencies of the Debian package's private environment, with the sha256 of every",
             "# amd64/arm64 wheel (or sdist). Generated by `make lock` (packaging/privenv.py lock); do not edit.",
             f"# source-only: {' '.join(sorted(source_only))}" if source_only else "# source-only:"]
    for n, v in sorted(pins.items()):
        lines.append(f"{n}=={v} \\")
        hs = sorted(hashes[n])
        lines += [f"    --hash=sha256:{h}" + (" \\" if i < len(hs) - 1 else "") for i, h in enumerate(hs)]
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK} ({len(pins)} packages)")


# ---- fetch (network) ----------------------------------------------------------------------

def cmd_fetch(args: argparse.Namespace) -> None:
    dest = Path(args.dest)
    stamp = dest / ".lock-sha256"
    want = sha256(LOCK)
    if stamp.exists() and stamp.read_text() == want:
        print(f"{dest}: wheels for this lock already fetched")
        return
    shutil.rmtree(dest, ignore_errors=True)
    dl = dest / "download"
    pins, source_only = read_lock()
    no_binary = ["--no-binary", ",".join(sorted(source_only))] if source_only else []
    run(pip("download", "--no-deps", "--require-hashes", "--only-binary", ":all:", *no_binary,
            *platform_args(args.arch), "-d", str(dl), "-r", str(LOCK)))
    for f in sorted(dl.iterdir()):
        if f.suffix == ".whl":
            f.rename(dest / f.name)
        else:                          # a pure-Python sdist: build its wheel here, it must be py3-none-any
            run(pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dest), str(f)))
            f.unlink()
    dl.rmdir()
    for w in dest.glob("*.whl"):
        tag = w.name[:-4].split("-")[-3:]
        machine = ARCHES[args.arch][0]
        if tag[2] != "any" and not tag[2].endswith(machine):
            raise SystemExit(f"fetch: {w.name} is not for {args.arch}")
    stamp.write_text(want)


# ---- install (offline) --------------------------------------------------------------------

def locked_requirements(wheelhouse: Path) -> str:
    """The lock as a requirements file for the wheelhouse: a package fetch built from its hash-checked
    sdist is pinned to the hash of that wheel (the lock's hash is the sdist's)."""
    text = LOCK.read_text()
    _, source_only = read_lock()
    for name in source_only:
        wheel = next((w for w in wheelhouse.glob("*.whl")
                      if re.split(r"-\d", w.name, maxsplit=1)[0].replace("_", "-").lower() == name), None)
        if wheel is None:
            raise SystemExit(f"install: no wheel built from {name}'s sdist in {wheelhouse}")
        text = re.sub(rf"^({re.escape(name)}==\S+) \\\n(    --hash=\S+ \\\n)*    --hash=\S+$",
                      rf"\1 --hash=sha256:{sha256(wheel)}", text, flags=re.M | re.I)
    return text


def elf_info(path: Path) -> tuple[int, list[str]] | None:
    """(e_machine, DT_NEEDED names) of an ELF file, or None when it is not one."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    out = subprocess.run(["readelf", "-d", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    return machine, re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def write_wrappers(root: Path) -> None:
    """/usr/bin/steno-exportd and steno-exportctl: run the entry point in the private environment (-I:
    no PYTHONPATH, no user site, no current folder on the path, also when root runs it)."""
    bindir = root / "usr" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name, module in ENTRY_POINTS.items():
        p = bindir / name
        p.write_text(f"#!/bin/sh\n# {name}: {module}.main() in the package's private Python environment.\n"
                     f"exec /{PREFIX}/bin/python3 -I -c 'import sys; from {module} import main; "
                     f"sys.argv[0] = \"{name}\"; sys.exit(main())' \"$@\"\n")
        p.chmod(0o755)


def cmd_install(args: argparse.Namespace) -> None:
    root = Path(args.dest)
    venv = root / PREFIX
    site = venv / SITE
    wheelhouse = Path(args.wheelhouse)
    with tempfile.TemporaryDirectory() as tmp:
        run(pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, str(REPO)))
        own = next(Path(tmp).glob("steno_exportd-*.whl"))
        # Hash-checking mode, with dependencies: every file is one the lock names, and pip refuses a
        # dependency (of ours or of a pinned package) that the lock does not pin: an incomplete lock
        # fails the build instead of the installed daemon.
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text(locked_requirements(wheelhouse)
                        + f"steno-exportd @ {own.as_uri()} --hash=sha256:{sha256(own)}\n")
        run(pip("install", "--require-hashes", "--no-index", "--no-compile", "--find-links", str(wheelhouse),
                "--only-binary", ":all:", *platform_args(args.arch), "--target", str(site), "-r", str(reqs)))
    shutil.rmtree(site / "bin", ignore_errors=True)      # console scripts with the build's shebang
    for f in site.glob("*.dist-info/direct_url.json"):   # the build folder's path
        f.unlink()
    (venv / "bin").mkdir(exist_ok=True)
    os.symlink("../../../bin/python3", venv / "bin" / "python3")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n"
                                     f"version = {PY_VERSION}\n")
    write_wrappers(root)

    machine = ARCHES[args.arch][1]
    bundled = {p.name for p in site.rglob("*.so*")}
    needs: dict[str, str] = {}
    wrong = []
    for p in site.rglob("*"):
        info = p.is_file() and not p.is_symlink() and elf_info(p)
        if not info:
            continue
        if info[0] != machine:
            wrong.append(str(p.relative_to(root)))
        for lib in info[1]:
            if lib in bundled:
                continue
            if lib not in SYSTEM_LIBS:
                raise SystemExit(f"install: {p.relative_to(root)} needs {lib}, which no Debian package "
                                 "in packaging/privenv.py SYSTEM_LIBS provides")
            needs[SYSTEM_LIBS[lib]] = lib
    if wrong:
        raise SystemExit(f"install: ELF files not for {args.arch}: {wrong}")
    glibc = max([int(m.group(1)) for w in wheelhouse.glob("*.whl")
                 for m in [re.search(r"manylinux_2_(\d+)_", w.name)] if m] + [17])
    deps = [f"libc6 (>= 2.{glibc})"] + sorted(p for p in needs if p != "libc6")
    deps.append(f"python3 (>= {PY_VERSION}), python3 (<< 3.{int(PY_VERSION.split('.')[1]) + 1})")
    with open(args.substvars, "a") as f:
        f.write(f"privenv:Depends={', '.join(deps)}\n")
    print(f"private environment: {sum(1 for _ in site.iterdir())} entries in {site}; depends: {', '.join(deps)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lk = sub.add_parser("lock")
    lk.add_argument("--upgrade", action="store_true", help="re-resolve every package (default: keep the pins)")
    lk.set_defaults(fn=cmd_lock)
    f = sub.add_parser("fetch")
    f.add_argument("--arch", choices=sorted(ARCHES), required=True)
    f.add_argument("--dest", required=True)
    f.set_defaults(fn=cmd_fetch)
    i = sub.add_parser("install")
    i.add_argument("--arch", choices=sorted(ARCHES), required=True)
    i.add_argument("--wheelhouse", required=True)
    i.add_argument("--dest", required=True)
    i.add_argument("--substvars", required=True)
    i.set_defaults(fn=cmd_install)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
