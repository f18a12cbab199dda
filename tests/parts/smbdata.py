"""Small export trees (session folders, SHA256SUMS) for SMB tests, and smbprotocol client helpers."""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
from typing import Iterator


def make_export_tree(root: pathlib.Path, sessions: int = 3, big: int = 3 * 1024 * 1024,
                     seed: int = 0) -> dict[str, str]:
    """Session folders with a txt, an html and one larger audio-like file; returns rel -> sha256."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    sums: dict[str, str] = {}
    for i in range(sessions):
        folder = root / f"2026-11-{10 + i:02d} Meeting {i + 1}"
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
        files = {
            "transcript.txt": f"Session {i + 1}\nHello from the recorder.\n".encode() * 50,
            "transcript.html": f"<html><body><p>Session {i + 1}</p></body></html>\n".encode(),
            "audio.flac": _pseudo(big + i * 1000, seed + i),
        }
        for name, data in files.items():
            p = folder / name
            p.write_bytes(data)
            os.chmod(p, 0o644)
            sums[f"{folder.name}/{name}"] = hashlib.sha256(data).hexdigest()
    (root / "SHA256SUMS").write_text("".join(f"{h}  {r}\n" for r, h in sorted(sums.items())))
    os.chmod(root / "SHA256SUMS", 0o644)
    return sums


def _pseudo(n: int, seed: int) -> bytes:
    """Deterministic incompressible-ish bytes."""
    out = bytearray()
    block = hashlib.sha256(f"seed{seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 128
    return bytes(out[:n])


def client_kw(port: int, username: str | None = None, password: str | None = None) -> dict:
    """Keyword arguments for smbclient calls against a loopback smbd with a private connection cache."""
    import smbclient

    guest = username is None
    if guest:
        smbclient.ClientConfig().require_secure_negotiate = False
        username, password = "guest", ""
    cache: dict = {}
    smbclient.register_session("127.0.0.1", username=username, password=password, port=port,
                               connection_cache=cache, connection_timeout=10, auth_protocol="ntlm",
                               require_signing=not guest)
    return {"port": port, "connection_cache": cache}


def close(kw: dict) -> None:
    import smbclient
    smbclient.reset_connection_cache(fail_on_error=False, connection_cache=kw["connection_cache"])


@contextlib.contextmanager
def connected(port: int, username: str | None = None, password: str | None = None) -> Iterator[dict]:
    """client_kw(...) for the block; the connection closed after it, even when the block fails."""
    kw = client_kw(port, username, password)
    try:
        yield kw
    finally:
        close(kw)


def read_remote(path: str, kw: dict) -> bytes:
    import smbclient
    with smbclient.open_file(path, mode="rb", **kw) as f:
        return f.read()
