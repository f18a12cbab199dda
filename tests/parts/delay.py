"""A store far away: a TCP relay on loopback that holds every byte for a one-way delay in each direction (this
machine's kernel has no netem). Bandwidth is left alone: what it adds is the round trips a distant store costs,
paid by every request, so a client that waits for each answer before its next request pays it once per request.
"""
from __future__ import annotations

import queue
import socket
import threading
import time


class DelayRelay:
    """127.0.0.1:<port> relayed to 127.0.0.1:<to>, each direction delayed by ``rtt_ms / 2``."""

    def __init__(self, to: int, rtt_ms: float) -> None:
        self.to = to
        self.one_way = rtt_ms / 2000.0
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(64)
        self.port = self._srv.getsockname()[1]
        self._socks: list[socket.socket] = []
        self.sent = {"to_server": 0, "to_client": 0}      # bytes relayed each way (what a store sent back: to_client)
        self._held: set[int] = set()    # client ports whose connection's answers are held (hold())
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
            for src, dst, way in ((a, b, "to_server"), (b, a, "to_client")):
                q: queue.Queue = queue.Queue()
                held = port if way == "to_client" else None
                for th in (threading.Thread(target=self._read, args=(src, q, way), name="delay-read", daemon=True),
                           threading.Thread(target=self._write, args=(dst, q, held), name="delay-write",
                                            daemon=True)):
                    self._threads.append(th)
                    th.start()

    def _read(self, src: socket.socket, q: queue.Queue, way: str) -> None:
        while True:
            try:
                data = src.recv(1 << 18)
            except OSError:
                data = b""
            self.sent[way] += len(data)     # (one reader thread per connection and way: += under the GIL)
            q.put((time.monotonic() + self.one_way, data))
            if not data:
                return

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
