"""The connection level: a cap on open connections (the longest idle closed first; with TLS counted from the
accept, before the handshake), quiet answers to malformed requests (one rate-limited log line per client, never a
traceback), a generic Server header, the runner."""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import resource
import socket
import ssl
import struct
import termios
import time
import weakref
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from asyncio.sslproto import SSLProtocol

from steno_exportd.safeparse import printable

log = logging.getLogger(__name__)

SERVER = "steno-exportd"
ACCEPT_BATCH = 128          # connections asyncio accepts per wake-up (its "backlog"): each costs a descriptor
LISTEN_QUEUE = 4096         # the kernel's queue of connections not accepted yet (bounded by net.core.somaxconn)
RESERVED_FILES = 384        # descriptors kept for files, databases, the bus, and one accept batch
EVICT_BATCH = 0.05          # past the cap, this share of the connections (the longest idle) is closed at once


class RefusalLog:
    """One log line per refused client address per ``every`` seconds, at most ``burst`` lines per ``every``
    in all; what was held back is counted in the next line."""

    def __init__(self, every: float = 60.0, burst: int = 10, clock: Any = time.monotonic) -> None:
        self.every, self.burst, self._clock = every, burst, clock
        self._seen: dict[str, float] = {}
        self._window, self._lines, self._held = 0.0, 0, 0

    def note(self, addr: str, message: str, *args: Any, level: int = logging.INFO) -> None:
        now = self._clock()
        if now - self._window >= self.every:
            self._window, self._lines = now, 0
            if len(self._seen) > 10_000:
                self._seen = {a: t for a, t in self._seen.items() if now - t < self.every}
        if now - self._seen.get(addr, -self.every) < self.every or self._lines >= self.burst:
            self._held += 1
            return
        self._seen[addr] = now
        self._lines += 1
        held, self._held = self._held, 0
        log.log(level, "refused %s: " + message + (f" ({held} more refusals not logged)" if held else ""),
                printable(addr), *(printable(a) if isinstance(a, str) else a for a in args))


def file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source_file_budget(connections: int) -> int:
    """Recordings ZIP downloads may hold open at once: what the open-file limit leaves beside the connections."""
    return max(16, file_limit() - RESERVED_FILES - connections)


def _tcp_socket(transport: Any) -> socket.socket | None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None


def _queued(sock: socket.socket) -> int:
    """Bytes the kernel holds for this socket not yet acknowledged by the client."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def nothing_unsent(transport: Any) -> bool:
    """Everything written on this connection has left the daemon and been acknowledged by the client."""
    if transport is None or transport.get_write_buffer_size():
        return False
    sock = _tcp_socket(transport)
    try:
        return sock is None or _queued(sock) <= 0
    except OSError:
        return True


def stalled_for(h: RequestHandler) -> float:
    """Seconds since this connection last sent a byte while bytes wait to be sent or acknowledged: a download whose
    client stopped reading (its window closed, only the kernel's probes go out). 0 when nothing waits."""
    sock = _tcp_socket(h.transport)
    if sock is None:
        return 0.0
    try:
        queued = _queued(sock)
        if queued <= 0:
            return 0.0
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 48)
        return struct.unpack_from("I", info, 44)[0] / 1000      # struct tcp_info's tcpi_last_data_sent (ms)
    except (OSError, struct.error):
        return 0.0


class Connections:
    """Bounds the open connections: past the cap, the longest idle ones go first, then downloads whose client
    stopped reading for ``idle_timeout``, then the oldest event streams; when none can go, the newcomer is closed."""

    def __init__(self, max_connections: int, refusals: RefusalLog, idle_timeout: float = 60.0) -> None:
        self.cap = max(16, min(max_connections, file_limit() - RESERVED_FILES))
        self.idle_timeout = idle_timeout
        self.refusals = refusals
        self.streams: weakref.WeakSet = weakref.WeakSet()   # handlers serving an event stream
        self.evicted = 0

    def admit(self, server: "GuardedServer", newcomer: Any) -> None:
        conns, shaking = server._connections, server.handshaking
        total = len(conns) + len(shaking)
        if total <= self.cap:
            return
        want = max(1, total - self.cap, int(self.cap * EVICT_BATCH))
        # a TLS handshake not finished is an idle connection (it holds a descriptor as long as one)
        idle = sorted([*(t for t in shaking.values() if t is not newcomer),
                       *(h for h in conns if h is not newcomer and not h._request_in_progress)],
                      key=lambda h: h.last_active)
        victims = idle[:want]
        if len(victims) < want:      # (a client that stopped reading holds its connection as long as it likes)
            stalled = sorted(((t, h) for h in conns if h is not newcomer and h._request_in_progress
                              and h not in self.streams and (t := stalled_for(h)) >= self.idle_timeout),
                             key=lambda th: -th[0])
            victims += [h for _, h in stalled][: want - len(victims)]
        if len(victims) < want:
            victims += [h for h in conns if h in self.streams and h not in victims][: want - len(victims)]
        if not victims:
            victims = [newcomer]
            self.refusals.note(_peer(newcomer), "%d connections open, none idle; new connection closed", total)
        for h in victims:
            self.refusals.note(_peer(h), "connection closed: %d open, the cap is %d (http.max_connections)",
                               total, self.cap)
            h.evict()
            conns.pop(h, None)
        self.evicted += len(victims)


def _peer(h: Any) -> str:
    transport = getattr(h, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else "?"


class Handshake(SSLProtocol):
    """A TLS connection from its accept: counted under the cap (and closed like an idle one) until its handshake
    is done, when its handler connects. asyncio's own TLS server hands a connection to the server only after the
    handshake: 1,500 clients that connected and sent nothing took every descriptor, and the page stopped answering
    (the accept loop logged a traceback each time it tried).

    Its read buffer (max_size) is 32 KiB, not asyncio's 256 KiB (allocated and zeroed at the accept): at the cap, 512
    clients that connected, or sent a request head that never ended, held 140-220 MiB and took the daemon past the
    unit's MemoryMax. A request is small (a body is at most http.max_body_kb); downloads go the other way."""

    max_size = 32 * 1024        # asyncio.sslproto reads this much at a time: two full TLS records (16 KiB + overhead)

    def __init__(self, server: "GuardedServer", handler: "QuietHandler", context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(server._loop, handler, context, None, server_side=True, ssl_handshake_timeout=timeout)
        self.server, self.handler = server, handler
        self.transport: Any = None
        self.last_active = time.monotonic()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.handshaking[self.handler] = self
        super().connection_made(transport)
        self.server.guard.admit(self.server, self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.handshaking.pop(self.handler, None)
        super().connection_lost(exc)

    def force_close(self) -> None:
        self.server.handshaking.pop(self.handler, None)
        if self.transport is not None:
            self.transport.abort()

    evict = force_close


class QuietHandler(RequestHandler):
    """A connection: remembers when it last did something; a malformed request is a 4xx and one quiet line."""

    refusals: RefusalLog
    wire: Any = None            # its transport

    def connection_made(self, transport: Any) -> None:
        self.last_active = time.monotonic()
        self.wire = transport       # (aiohttp forgets its transport once it closes it; evict() may still abort it)
        self._manager.handshaking.pop(self, None)          # (TLS) its handshake is done: counted as a connection
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        super().data_received(data)

    def evict(self) -> None:
        """Closed past the cap: aborted, its descriptor free at once. aiohttp's force_close() only closes the
        transport, which over TLS begins a shutdown that waits for the client's close_notify (up to asyncio's
        ssl_shutdown_timeout, 30 s), and over plain TCP waits for unsent bytes to drain (never, for a client that
        stopped reading): evicted and no longer counted, 400 silent TLS clients under a cap of 32 held 400
        descriptors. One closed for idling (http.idle_timeout) is still in such a shutdown: aborted too."""
        if self.wire is not None:
            self.wire.abort()
        self.force_close()

    def _process_keepalive(self) -> None:
        """aiohttp's idle timer (http.idle_timeout: no request, or its head not complete): a connection it closes is
        aborted as an evicted one is. Closed, a TLS connection began a shutdown that waited for a silent client's
        close_notify for 30 s: 90 such clients under the cap held 90 descriptors that long after their idle timeout.
        One whose last answer the client has not all taken yet is closed as before, not cut."""
        was_closed, quiet = self._force_close, nothing_unsent(self.transport)
        super()._process_keepalive()
        if self._force_close and not was_closed and quiet and self.wire is not None:
            self.wire.abort()

    def handle_error(self, request: Any, status: int = 500, exc: Any = None, message: Any = None) -> Any:
        if status < 500:
            if isinstance(exc, LineTooLong) or (exc is not None and "too many headers" in str(exc).lower()):
                status = 431            # RFC 6585; aiohttp says 400
            self.refusals.note(str(request.remote or _peer(self)), "malformed request (%d): %s", status,
                               str(message or exc or "")[:120])
            # the API's error shape (its OpenAPI document promises JSON for every 4xx): the path is not known yet
            resp = web.json_response({"error": "malformed request", "status": status}, status=status)
            resp.force_close()
        else:
            resp = super().handle_error(request, status, exc, message)
        resp.headers["Server"] = SERVER
        return resp


class GuardedServer(Server):
    """aiohttp's Server with QuietHandler connections under a Connections cap; with ``tls``, each connection's
    handshake is made under the cap too (Handshake)."""

    guard: Connections
    tls: ssl.SSLContext | None
    handshake_timeout: float
    handshaking: dict

    def __call__(self) -> Any:
        h = QuietHandler(self, loop=self._loop, **self._kwargs)
        h.refusals = self.guard.refusals
        return h if self.tls is None else Handshake(self, h, self.tls, self.handshake_timeout)

    def connection_made(self, handler: Any, transport: Any) -> None:
        super().connection_made(handler, transport)
        self.guard.admit(self, handler)

    async def shutdown(self, timeout: float | None = None) -> None:
        for shaking in list(self.handshaking.values()):
            shaking.force_close()
        await super().shutdown(timeout)


@dataclasses.dataclass
class Serving:
    """What the connection level takes from the config (kept on the app: make_app sets it)."""

    guard: Connections
    idle_timeout: float


SERVING = web.AppKey("serving", Serving)


class Runner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer, with the idle timeout for waiting for a request; ``tls``: the
    server makes the TLS handshakes itself (its sites listen without an ssl_context)."""

    def __init__(self, app: web.Application, tls: ssl.SSLContext | None = None, **kw: Any) -> None:
        serving = app[SERVING]
        kw.setdefault("keepalive_timeout", serving.idle_timeout)
        # a body the handler did not read (refused before it) is not drained: the connection closes instead,
        # and a broken body (bad encoding) is never read after its answer, where only a traceback could report it
        kw.setdefault("lingering_time", 0)
        super().__init__(app, **kw)
        self._guard, self._tls, self._idle = serving.guard, tls, serving.idle_timeout

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer     # aiohttp builds the Server inside the app; give it our handlers
        server.guard, server.tls, server.handshake_timeout = self._guard, self._tls, self._idle
        server.handshaking = {}
        return server


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for host:port (like asyncio's own: SO_REUSEADDR, IPv6 only on IPv6). The caller listens
    again with LISTEN_QUEUE once asyncio has (asyncio ties its accept batch to the listen backlog): a burst of
    connections then waits in the kernel instead of being dropped and retried a second later."""
    out = []
    try:
        for family, kind, proto, _, addr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out
