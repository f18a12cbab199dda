"""A store far away: a TCP relay on loopback that holds every byte for a one-way delay in each direction (this
machine's kernel has no netem). Bandwidth is left alone: what it adds is the round trips a distant store costs,
paid by every request, so a client that waits for each answer before its next request pays it once per request.

It also keeps what passed through it as HTTP exchanges (``exchanges()``): when each request came (the kernel's
time of its arrival, not when a relay thread got to it) and when the relay sent its answer's last bytes back;
``depth()`` counts from them how many round trips in a row a client waited for.
"""
from __future__ import annotations

import dataclasses
import queue
import re
import socket
import struct
import threading
import time
import urllib.parse

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)     # (Linux; Python names it from 3.14 on)
_REQUEST = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r\n")


@dataclasses.dataclass
class Exchange:
    """One HTTP request the relay passed on: ``what`` ('path: METHOD', as RcloneServer.answered() names it), when it
    came (seconds since the epoch: the kernel's stamp of its first bytes), when the relay began sending back the last
    bytes of its answer (None: none came)."""

    what: str
    came: float
    answered: float | None = None


def depth(exchanges: list[Exchange]) -> dict[int, int]:
    """How many round trips in a row the client waited for to make each of ``exchanges`` (by its index): 1 + the
    most of those whose answer the relay had sent back before it came (one it may have waited for), 1 for one that
    came before any answer. Sway in when requests sent together come (a loaded machine) adds none: a request is a
    round trip later only when it came after an answer."""
    out: dict[int, int] = {}
    for i, ex in sorted(enumerate(exchanges), key=lambda p: p[1].came):
        out[i] = 1 + max((out[j] for j, before in enumerate(exchanges) if j in out and before.answered is not None
                          and before.answered < ex.came), default=0)
    return out


class DelayRelay:
    """127.0.0.1:<port> relayed to 127.0.0.1:<to>, each direction delayed by ``rtt_ms / 2``."""

    def __init__(self, to: int, rtt_ms: float) -> None:
        self.to = to
        self.one_way = rtt_ms / 2000.0
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # the kernel stamps each segment's arrival (the accepted sockets inherit it): a request's time is when the
        # client sent it, however late a relay thread reads it (a loaded machine), and it is sent on then + one way
        self._srv.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(64)
        self.port = self._srv.getsockname()[1]
        self._socks: list[socket.socket] = []
        self.sent = {"to_server": 0, "to_client": 0}      # bytes relayed each way (what a store sent back: to_client)
        self._held: set[int] = set()    # client ports whose connection's answers are held (hold())
        self._exchanges: list[Exchange] = []
        self._open: dict[int, Exchange | None] = {}   # per connection (client port): its request being answered
        self._lock = threading.Lock()
        self._stopped = False
        self._threads = [threading.Thread(target=self._accept, name="delay-accept", daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                a, _ = self._srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.to))
            except OSError:
                a.close()
                continue
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [a, b]
            port = a.getpeername()[1]
            self._open[port] = None
            for src, dst, way in ((a, b, "to_server"), (b, a, "to_client")):
                q: queue.Queue = queue.Queue()
                held = port if way == "to_client" else None
                for th in (threading.Thread(target=self._read, args=(src, q, way, port), name="delay-read",
                                            daemon=True),
                           threading.Thread(target=self._write, args=(dst, q, held), name="delay-write",
                                            daemon=True)):
                    self._threads.append(th)
                    th.start()

    def _read(self, src: socket.socket, q: queue.Queue, way: str, port: int) -> None:
        while True:
            try:
                data, anc, _, _ = src.recvmsg(1 << 18, socket.CMSG_SPACE(16))
            except OSError:
                data, anc = b"", []
            now, mono = time.time(), time.monotonic()
            stamps = [struct.unpack("qq", d[:16]) for level, kind, d in anc
                      if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(d) >= 16]
            came = min(now, stamps[0][0] + stamps[0][1] / 1e9) if stamps and stamps[0][0] else now
            self.sent[way] += len(data)     # (one reader thread per connection and way: += under the GIL)
            if way == "to_server":
                self._request(port, data, came)
            q.put((mono - (now - came) + self.one_way, data))
            if not data:
                return

    def _request(self, port: int, data: bytes, came: float) -> None:
        """A new exchange when ``data`` begins a request: on a connection whose last request has been answered (HTTP/1.1
        without pipelining: a client sends its next request once it has read the answer of the one before)."""
        m = _REQUEST.match(data)
        with self._lock:
            last = self._open.get(port)
            if m and (last is None or last.answered is not None):
                path = urllib.parse.unquote(urllib.parse.urlsplit(m[2].decode("latin-1")).path)
                self._open[port] = ex = Exchange(f"{path}: {m[1].decode()}", came)
                self._exchanges.append(ex)

    def exchanges(self) -> list[Exchange]:
        """The HTTP requests passed on so far, in the order they came."""
        with self._lock:
            return sorted(self._exchanges, key=lambda e: e.came)

    def hold(self, port: int, held: bool = True) -> None:
        """Hold (or, held=False, pass again) the server's answers on the connection from client port ``port``: one
        flow of the link stalls (the server keeps running, its other connections flow)."""
        (self._held.add if held else self._held.discard)(port)

    def _write(self, dst: socket.socket, q: queue.Queue, port: int | None = None) -> None:
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            while port in self._held and not self._stopped:
                time.sleep(0.01)
            if port is not None and data:      # (an answer: stamped before it is sent, so a request that waited
                with self._lock:                # for it comes after)
                    if (ex := self._open.get(port)) is not None:
                        ex.answered = time.time()
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        """Stop relaying and wait for its threads (a shutdown wakes a thread blocked in accept or recv; a close
        alone does not)."""
        self._stopped = True
        for group in ([self._srv], self._socks):       # (the listener first: no connection is added after)
            for s in group:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._threads[0].join(10)
        for th in self._threads:
            th.join(10)
