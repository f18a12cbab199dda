"""ELF files in a .deb and their machine types (read from the header, whatever this machine is)."""
from __future__ import annotations

import subprocess
from pathlib import Path

MACHINES = {62: "x86-64", 183: "aarch64", 40: "arm", 3: "i386"}


def unpack(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def machines(root: Path) -> dict[str, str]:
    """{path inside the package: machine} for every ELF file under root."""
    out = {}
    for p in root.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        with open(p, "rb") as f:
            head = f.read(20)
        if head[:4] == b"\x7fELF":
            m = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
            out["/" + str(p.relative_to(root))] = MACHINES.get(m, str(m))
    return out
