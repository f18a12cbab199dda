"""Stores that rclone itself serves on loopback (``rclone serve webdav|sftp``), and a client config
naming them, as an admin's rclone.conf would (TESTING.md: real parts)."""
from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from typing import Iterator

import pytest

from tests import parts
from tests.parts.smbd import _listening, free_port

KINDS = ("webdav", "sftp")


@dataclasses.dataclass
class RcloneServer:
    """One ``rclone serve`` child: the folder it serves, its port, its login; stop/start at will."""

    kind: str
    served: pathlib.Path
    work: pathlib.Path
    port: int = 0
    user: str = "steno"
    password: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))
    proc: subprocess.Popen | None = None
    verbose: bool = False                   # its log names every request it answers (requests() counts them)
    read_only: bool = False                 # it refuses every write (--read-only): a store this login may only read
    run_as: int | None = None               # the uid (and gid) it runs as: a server the files' modes bind (not root)

    def start(self) -> None:
        self.port = self.port or free_port(18900, 18999)
        log = open(self.work / f"serve-{self.kind}.log", "ab")
        self.proc = subprocess.Popen(
            ["rclone", "serve", self.kind, str(self.served), "--addr", f"127.0.0.1:{self.port}",
             "--user", self.user, "--pass", self.password, "--cache-dir", str(self.work / "cache"),
             "--config", "/dev/null", *(["-v"] if self.verbose else []), *(["--read-only"] if self.read_only else [])],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            **({"user": self.run_as, "group": self.run_as, "extra_groups": []} if self.run_as is not None else {}))
        log.close()
        parts.wait_for(lambda: _listening(self.port) or self.proc.poll() is not None, 20,
                       what=f"rclone serve {self.kind} on port {self.port}")
        assert self.proc.poll() is None, (self.work / f"serve-{self.kind}.log").read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def requests(self) -> int:
        """How many requests the server has answered (verbose: its log has a line for each)."""
        assert self.verbose
        text = (self.work / f"serve-{self.kind}.log").read_text(errors="replace")
        return len(re.findall(r": [A-Z]+ from 127\.0\.0\.1:\d+$", text, re.M))

    @property
    def remote(self) -> str:
        return f"store-{self.kind}"

    def client_config(self, path: pathlib.Path, password: str | None = None) -> pathlib.Path:
        """An rclone.conf with one remote ``store-<kind>`` reaching this server (mode 600)."""
        obscured = subprocess.run(["rclone", "obscure", password or self.password], check=True,
                                  capture_output=True, text=True).stdout.strip()
        if self.kind == "webdav":
            body = f"type = webdav\nurl = http://127.0.0.1:{self.port}/\nvendor = other\n"
        else:
            body = f"type = sftp\nhost = 127.0.0.1\nport = {self.port}\n"
        path.write_text(f"[{self.remote}]\n{body}user = {self.user}\npass = {obscured}\n")
        os.chmod(path, 0o600)
        return path


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server of the test's own (a store, or a server in front of one) answering with ``handler`` on a
    loopback port, in a thread, shut down afterwards; its port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


@pytest.fixture
def rclone_tmp() -> Iterator[pathlib.Path]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="steno-rclone-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=KINDS)
def rclone_server(request, rclone_tmp) -> Iterator[RcloneServer]:
    """A store served by rclone on loopback (each test runs against WebDAV and SFTP)."""
    parts.require_tool("rclone")
    served = rclone_tmp / "served"
    served.mkdir()
    srv = RcloneServer(request.param, served, rclone_tmp)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
