"""Open streams end with what they were opened under: a download under a share link stops when the link is
revoked or expires, and a download or the event stream under a login when it ends (logout, "log out
everywhere", a new password, a revoked browser) or expires.

Nothing is checked per chunk: the access store tells when grants may have ended (its generation), and only then
is each open stream's grant checked again (one thread hop for all of them); expiry is a timer per stream."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import struct
import time
from typing import Any, Callable, Iterator

from aiohttp import web

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a request was let in under."""

    what: str                       # for the log, never the secret: "share link abc123…", "login <id>"
    expires: float                  # time.time() when it ends by itself
    generation: int                 # the access store's generation before it was checked
    ended: Callable[[], str]        # blocking (one SQLite query): why it is over now, "" while valid
    link: bool = False              # a share link's (else a login's)

    def refusal(self, why: str) -> web.HTTPException:
        """The answer to a request whose grant ended (``why``) before its first byte."""
        if self.link:
            return web.HTTPGone(text=f"This share link is {why}. Ask for a new one.")
        return web.HTTPUnauthorized(text=f"Your login {why}; log in again.")


GRANT = web.RequestKey("grant", Grant)


def link_grant(access: Any, link: Any, generation: int) -> Grant:
    return Grant(f"share link {link.token[:6]}…", link.expires, generation,
                 lambda: access.link_ended(link.token), link=True)


def login_grant(access: Any, login: Any, cookie: str, generation: int) -> Grant:
    return Grant(f"login {login.id}", login.expires, generation, lambda: access.login_ended(cookie))


@dataclasses.dataclass(eq=False)
class Watch:
    request: web.BaseRequest
    grant: Grant
    task: asyncio.Task | None
    checked: int                    # the generation its grant was last found valid at
    timer: asyncio.TimerHandle | None = None
    ended: str = ""                 # why it was cut ("" while open)


class OpenStreams:
    """The streams open under a grant, cut when the grant ends."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._open: set[Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checking: asyncio.Task | None = None
        self._again = False
        store.watch_grants(self._changed)

    @contextlib.contextmanager
    def watching(self, request: web.BaseRequest) -> Iterator[Watch | None]:
        """open() ... close() around a stream."""
        w = self.open(request)
        try:
            yield w
        finally:
            self.close(w)

    def open(self, request: web.BaseRequest, task: asyncio.Task | None = None) -> Watch | None:
        """Until close(), the request's stream is cut (socket shut, ``task`` cancelled) once its grant ends; the
        Watch says why (``ended``). None: no grant (no login needed here), nothing to watch."""
        grant = request.get(GRANT)
        if grant is None:
            return None
        loop = self._loop = asyncio.get_running_loop()
        w = Watch(request, grant, task, grant.generation)
        w.timer = loop.call_at(loop.time() + min(max(0.0, grant.expires - time.time()), 10 ** 8), self._end, w,
                               "expired")
        self._open.add(w)
        if self._store.generation != w.checked:        # something ended since the grant was checked
            self._schedule()
        return w

    async def still_granted(self, request: web.BaseRequest) -> None:
        """Refuse (401, or 410 for a share link) a request whose grant ended since it was let in: asked after a
        long wait before the first byte (a render of minutes), which a stream's watch does not cut in time (a
        small answer is in the socket before the watch's check is back)."""
        grant = request.get(GRANT)
        if grant is None:
            return
        if grant.expires <= time.time():
            raise grant.refusal("expired")
        if self._store.generation == grant.generation:      # nothing ended since it was checked
            return
        try:
            why = await asyncio.to_thread(grant.ended)
        except Exception as e:  # noqa: BLE001 - a grant that cannot be checked is over (as in _check)
            log.warning("%s could not be checked (%s)", grant.what, e)
            why = "not checked"
        if why:
            raise grant.refusal(why)

    def close(self, w: Watch | None) -> None:
        if w is not None:
            self._open.discard(w)
            if w.timer is not None:
                w.timer.cancel()

    def _changed(self) -> None:
        """From the thread that ended a grant."""
        loop = self._loop
        if loop is not None and self._open:
            with contextlib.suppress(RuntimeError):         # the loop is closed: nothing is open any more
                loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self._checking is not None and not self._checking.done():
            self._again = True
            return
        self._checking = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        while True:
            self._again = False
            gen = self._store.generation
            due = [w for w in self._open if w.checked != gen and not w.ended]
            if due:
                try:
                    why = await asyncio.to_thread(lambda: [w.grant.ended() for w in due])
                except Exception as e:  # noqa: BLE001 - a grant that cannot be checked (store closed) is over
                    log.warning("open streams: grants could not be checked (%s); %d streams cut", e, len(due))
                    why = ["could not be checked"] * len(due)
                for w, reason in zip(due, why):
                    if reason:
                        self._end(w, reason)
                    else:
                        w.checked = gen
            if not self._again:
                return

    def _end(self, w: Watch, why: str) -> None:
        """Cut the stream: its socket shut both ways (a sendfile or write under way fails at once and the answer
        ends as when a client leaves; what is still queued is dropped at close), the handler's task cancelled
        when it has one. Not transport.close(): under a sendfile it would leave the sendfile waiting forever."""
        if w.ended or w not in self._open:
            return
        w.ended = why
        log.debug("%s %s: its stream is cut", w.grant.what, why)      # the stream says what it was, once
        transport = w.request.transport
        if transport is not None and not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)
        if w.task is not None:
            w.task.cancel()

