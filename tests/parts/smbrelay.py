"""A hostile or broken NAS: a relay on loopback in front of a real smbd that passes the client's bytes on as they
come and the server's answers frame by frame (SMB2 over TCP: a 4-byte length, then the message), until the
server's ``after``-th frame of a connection: from it on, ``answer`` says what the client gets instead.

- ``huge``: a frame whose length says 2 GiB (a 4-byte length the spec's 24 bits cannot hold), the message
  after it, then nothing more on that connection;
- ``trickle``: each frame, one byte every ``interval`` seconds (a server that never stops answering, nor ends);
- ``empty``: a frame whose length says 0 (shorter than any SMB2 header), then nothing more on that connection;
- ``pause``: the first frame of at least ``big`` bytes in pieces, waiting ``pauses`` (seconds) before each piece
  after the first, the frames before and after it as they came (a slow link, or a server busy part-way);
- ``slowread``: the server's answers as they came, the client's bytes taken ``piece`` bytes every ``interval``
  seconds once ``after`` of them went through (a NAS that takes a write a few bytes at a time, never stopping:
  its receive buffer kept small, so the client sees some taken every few seconds, never a long stall).
"""
from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

HUGE = 0x7FFFFFFF


class HostileSmbRelay:
    """127.0.0.1:<port> relayed to the smbd at 127.0.0.1:<to> (see the module)."""

    def __init__(self, to: int, answer: str, after: int = 0, interval: float = 0.5, big: int = 256 * 1024,
                 pauses: tuple[float, ...] = (), piece: int = 512) -> None:
        assert answer in ("huge", "trickle", "empty", "pause", "slowread")
        self.to, self.answer, self.after, self.interval = to, answer, after, interval
        self.big, self.pauses, self.piece = big, pauses, piece
        self.tampered = 0           # frames that went out as ``answer`` says
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if answer == "slowread":        # (before listen: the accepted sockets inherit it, their window scale too)
            self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(16)
        self.port = self._srv.getsockname()[1]
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._start(self._accept)

    def _start(self, fn, *args) -> None:
        th = threading.Thread(target=fn, args=args, daemon=True, name="smb-relay")
        with self._lock:
            self._threads.append(th)
        th.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.to))
            with self._lock:
                self._socks += [client, server]
            self._start(self._slow if self.answer == "slowread" else self._pipe, client, server)
            self._start(self._frames, server, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _slow(self, src: socket.socket, dst: socket.socket) -> None:
        passed = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536 if passed < self.after else self.piece):
                if passed >= self.after:
                    self.tampered += 1
                    if self._closed.wait(self.interval):
                        return
                passed += len(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    @staticmethod
    def _exactly(src: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            got = src.recv(n - len(buf))
            if not got:
                raise EOFError
            buf += got
        return bytes(buf)

    def _frames(self, src: socket.socket, dst: socket.socket) -> None:
        n = 0
        try:
            while not self._closed.is_set():
                head = self._exactly(src, 4)
                body = self._exactly(src, struct.unpack(">L", head)[0])
                if n < self.after or self.answer == "slowread" or (self.answer == "pause" and (self.tampered
                                                                               or len(body) < self.big)):
                    dst.sendall(head + body)
                elif self.answer == "pause":
                    self.tampered += 1
                    frame = head + body
                    cut = [len(frame) * i // (len(self.pauses) + 1) for i in range(len(self.pauses) + 2)]
                    dst.sendall(frame[:cut[1]])
                    for i, pause in enumerate(self.pauses, 1):
                        if self._closed.wait(pause):
                            return
                        dst.sendall(frame[cut[i]:cut[i + 1]])
                elif self.answer in ("huge", "empty"):
                    dst.sendall(struct.pack(">L", HUGE) + body if self.answer == "huge" else b"\0\0\0\0")
                    self.tampered += 1
                    self._closed.wait()         # nothing more: the client waits for the rest, or gives up
                    return
                else:
                    self.tampered += 1
                    for i in range(len(head + body)):
                        if self._closed.wait(self.interval):
                            return
                        dst.sendall((head + body)[i:i + 1])
                n += 1
        except (OSError, EOFError):
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._srv.shutdown(socket.SHUT_RDWR)       # (wakes the accept() waiting on it)
        self._srv.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for th in threads:
            th.join(10)
