"""Stores that rclone itself serves on loopback (``rclone serve webdav|sftp``), and a client config
naming them, as an admin's rclone.conf would (TESTING.md: real parts)."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import http.client
import http.server
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from typing import Callable, Iterator

import pytest

from steno_exportd.rclone.process import popen_dying_with_parent
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
        self.proc = popen_dying_with_parent(     # a test run killed (SIGTERM, SIGKILL) leaves no server behind
            ["rclone", "serve", self.kind, str(self.served), "--addr", f"127.0.0.1:{self.port}",
             "--user", self.user, "--pass", self.password, "--cache-dir", str(self.work / "cache"),
             "--config", "/dev/null", *(["-v", "--log-format", "date,time,microseconds"] if self.verbose else []),
             *(["--read-only"] if self.read_only else [])],
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

    def answered(self) -> list[tuple[float, str]]:
        """Every request the server has answered (verbose), in order: (when its log line was written, in seconds
        since the epoch; 'path: METHOD')."""
        assert self.verbose
        text = (self.work / f"serve-{self.kind}.log").read_text(errors="replace")
        out = []
        for m in re.finditer(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+)\s+\w+\s*: (.*): ([A-Z]+) from 127\.0\.0\.1:\d+$",
                             text, re.M):
            when = datetime.datetime.strptime(m[1], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((when, f"{m[2]}: {m[3]}"))
        return out

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


DROP = -1      # FaultyWebdav's "status" of a request it takes and never answers: the connection closed (a drop)
CUT = -2       # ... of one whose answer it cuts: the store's headers (its length), half the body, the connection closed
LOST = -3      # ... of one it passes on to the store and then drops without its answer (done there, the answer lost)
HANG = -4      # ... of one it takes and never answers while the relay runs (a store that stopped answering)


class FaultyWebdav:
    """A WebDAV store that fails when told: 127.0.0.1:<port> passes each request on to the WebDAV server on
    127.0.0.1:<to> (an RcloneServer), but answers one that ``fail(method, path)`` gives a status for with that
    status itself (a store in maintenance for a moment, a proxy's hiccup), or with none (DROP: the connection
    closed once the request is read; LOST: the request passed on to the store, then the connection closed without
    its answer), or with the store's answer cut halfway (CUT), or never while the relay runs (HANG); ``failed`` lists
    those. Bodies are passed on whole (small test files), a chunked one with its length. ``overwrite``: the
    "Overwrite" header every MOVE and COPY is passed on with (as a later rclone sends it; None: as sent)."""

    def __init__(self, to: int, fail: Callable[[str, str], int | None], overwrite: str | None = None) -> None:
        outer = self
        self.failed: list[tuple[str, str]] = []
        self._closing = threading.Event()

        class Relay(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                body = self._body()
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                status = fail(self.command, path)
                if status and status not in (CUT, LOST):
                    outer.failed.append((self.command, path))
                    if status == HANG:
                        outer._closing.wait(120)
                        self.close_connection = True
                        return
                    if status == DROP:
                        self.close_connection = True
                        return
                    self._answer(status, [], b"the store failed (a test's fault)")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
                if "Destination" in headers:        # (a MOVE's: the server checks it names itself)
                    headers["Destination"] = headers["Destination"].replace(f":{outer.port}/", f":{to}/")
                if overwrite is not None and self.command in ("MOVE", "COPY"):
                    headers = {k: v for k, v in headers.items() if k.lower() != "overwrite"}
                    headers["Overwrite"] = overwrite
                conn = http.client.HTTPConnection("127.0.0.1", to, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    answer = r.read()
                    if status == CUT:
                        outer.failed.append((self.command, path))
                        self._answer(r.status, r.getheaders(), answer, cut=True)
                        return
                finally:
                    conn.close()
                if status == LOST:
                    outer.failed.append((self.command, path))
                    self.close_connection = True        # done on the store; its answer never reaches the client
                    return
                self._answer(r.status, r.getheaders(), answer)

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass                            # (the trailer)
                return body

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, cut: bool = False) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if cut else body)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True
            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = _relay
            do_PROPFIND = do_PROPPATCH = do_MKCOL = do_COPY = do_MOVE = do_LOCK = do_UNLOCK = _relay

            def log_message(self, *args) -> None:
                pass
        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):    # (not rclone rcd gone with its connection)
                    super().handle_error(request, client_address)
        self._srv = Server(("127.0.0.1", 0), Relay)
        self.port = self._srv.server_address[1]
        self._thread = threading.Thread(target=self._srv.serve_forever, name="faulty-webdav", daemon=True)
        self._thread.start()

    def client_config(self, srv: "RcloneServer", path: pathlib.Path) -> pathlib.Path:
        """``srv``'s client config (its remote, its login), reaching it through this relay."""
        srv.client_config(path)
        path.write_text(path.read_text().replace(f"127.0.0.1:{srv.port}/", f"127.0.0.1:{self.port}/"))
        return path

    def close(self) -> None:
        self._closing.set()                         # (requests it holds: dropped)
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(10)


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
