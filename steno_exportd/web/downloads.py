"""Downloads: the recording and rendered formats (sendfile, Range, cache), one or many sessions as a streamed ZIP."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import mimetypes
import re
import socket
import threading
import time
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web

from steno_exportd.errors import CancelledJob, InvalidArgument, NotFoundError, SourceError, Throttled
from steno_exportd.recordings import SourceChanged, SourceRef
from steno_exportd.web import human
from steno_exportd.web.context import CTX, REFUSALS, WebContext, client_addr, session_key

log = logging.getLogger(__name__)

MAX_SELECTION = 500
MAX_FORMATS = 32
RENDERS_PER_CLIENT = 3      # documents made in the render worker (PDF, DOCX) for one client at once
RENDER_RETRY = 10.0         # seconds a client over it is told to wait (Retry-After)
ZIP_CHUNK = 128 << 10       # the ZIP's own bytes (headers, documents) are gathered up to this before they are sent
ZIP_BATCH = 512 << 10       # ... fetched 512 KiB at a time (a thread hop per chunk costs throughput); recordings
                            # go by sendfile (checksums remembered, or hashed by one thread per core meanwhile)
RANGE = re.compile(r"([0-9]*)-([0-9]*)")
AUDIO_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4"}


def disposition(filename: str, inline: bool = False) -> str:
    """Content-Disposition with an ASCII fallback and a UTF-8 filename* (RFC 6266 / 5987)."""
    ascii_name = re.sub(r'[^A-Za-z0-9 ._()-]', "_", filename).strip() or "download"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def download_name(summary: Any, name: str) -> str:
    """A download's file name: the session's title (or "Session N") and short id before ``name``."""
    stem = re.sub(r'[\x00-\x1f\\/:*?"<>|]+', "_", summary.title or f"Session {summary.id}").strip(" .")[:80]
    return f"{stem} ({summary.short_id}) {name}"


class Use(Protocol):
    """A share link's use, taken before the download starts: committed once a byte went out, else given back."""

    async def commit(self, detail: str) -> None: ...
    async def release(self) -> None: ...


class ClientLeft(ConnectionError):
    """The connection went away during a sendfile, after ``sent`` bytes of it."""

    def __init__(self, sent: int) -> None:
        super().__init__(f"client left after {sent} bytes")
        self.sent = sent


class FileEnded(ConnectionError):
    """A file ended (or changed) before all of it was sent: the answer is cut, the connection closed."""

    def __init__(self, sent: int, why: object, session_id: int = 0) -> None:
        super().__init__(f"the file changed while being sent: {why}")
        self.sent, self.why, self.session_id = sent, why, session_id


def client_left(name: str, sent: int, total: int | None, watch: Any = None) -> None:
    """A download the client walked away from: one quiet line, no traceback (nothing failed here); or one
    cut because what it was sent under ended (``watch``, grants.OpenStreams.watching)."""
    if watch is not None and watch.ended:
        log.info("download of %s cut after %d of %s bytes: %s %s", name, sent, total if total is not None else "?",
                 watch.grant.what, watch.ended)
        return
    log.info("download of %s: client left after %d of %s bytes", name, sent, total if total is not None else "?")


def gone(request: web.BaseRequest) -> bool:
    """The client closed its connection (also read from a worker thread: a render polls it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def short_of(sent: int, total: int | None, cut: str) -> str:
    """What a share link's audit line adds for a download that did not send all of itself ("" when it did):
    cut by the server because its grant ended (``cut``: why), or broken off (the network, a changed file)."""
    if total is None or sent >= total:
        return ""
    return f" ({f'cut: link {cut}' if cut else 'broken off'} after {human.size(sent)} of {human.size(total)})"


def source_changed(request: web.BaseRequest, name: str, whose: str, sent: int, total: int | None,
                   why: object) -> None:
    """A file that shrank, vanished or was swapped while being sent: one WARNING; the connection is closed."""
    log.warning("download of %s (%s) for %s: the recording changed while being sent, after %d of %s bytes "
                "(%s); connection closed", name, whose, client_addr(request), sent,
                total if total is not None else "?", why)
    request.protocol.force_close()


async def audio(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    summary, recording = await ctx.recording(request.match_info["key"])     # no transcript loaded
    return await send_audio(request, ctx, summary, recording, via="page")


async def send_audio(request: web.Request, ctx: WebContext, summary: Any, recording: Any, via: str,
                     use: Use | None = None) -> web.StreamResponse:
    """The recording, opened as the library checked it (no symlink followed, same file) and sent from that."""
    if recording is None or recording.path is None:
        # only to say why (the whole session's problems), of this meeting (a restore since: SessionReplaced)
        s = await ctx.core.session(summary.id, summary.uuid)
        reasons = "; ".join(p.reason for p in s.problems if "audio" in p.field) or "no recording"
        raise NotFoundError(f"this session has no usable recording ({reasons})")
    path = recording.path
    ref = SourceRef(path, ctx.cfg.recorder_data_dir, recording.dev, recording.ino)
    opened = await asyncio.to_thread(ref.open)          # SourceChanged (409): swapped or gone since the check
    await granted_or_closed(request, ctx, opened)
    ctype = AUDIO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    addr = client_addr(request)

    async def done() -> None:
        if "dl" in request.query and use is None:
            await asyncio.to_thread(ctx.store.audit, summary.id, addr, f"audio {path.name}", via)
    name = download_name(summary, path.name)
    return SourceResponse(opened, name, f"session {summary.id}", done, use, pause=ctx.core.prehasher.pause, headers={
        "Content-Type": ctype, "Content-Disposition": disposition(name, inline="dl" not in request.query)})


async def granted_or_closed(request: web.BaseRequest, ctx: WebContext, opened: Any) -> None:
    """The request's login or link still holds after the waits before its first byte (thread hops, a render), or
    the opened file is closed and the request refused (grants.OpenStreams.still_granted)."""
    try:
        await ctx.grants.still_granted(request)
    except BaseException:
        opened.close()
        raise


def byte_range(header: str, size: int) -> tuple[int, int] | None | str:
    """One Range 'bytes=' spec as (start, count); None: send it all (no or another unit); "bad": 416."""
    if not header.startswith("bytes="):
        return None
    m = RANGE.fullmatch(header[6:].strip())
    if not m or (not m.group(1) and not m.group(2)):
        return "bad"                     # several ranges (no multipart answers here) or garbage
    first, last = (_offset(x) if x else None for x in m.groups())
    if first is None:                    # the last N bytes; N = 0 asks for nothing
        n = last or 0
        return (max(0, size - n), min(n, size)) if n and size else "bad"
    if first >= size or (last is not None and last < first):
        return "bad"
    end = min(last, size - 1) if last is not None else size - 1
    return first, end - first + 1


def _offset(digits: str) -> int:
    """A Range number; one past any file's size when longer than 18 digits (int() refuses 4,300 and more)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10 ** 18


class SourceResponse(web.StreamResponse):
    """A file sent from an already open descriptor (sendfile): Range, If-Range, ETag, Last-Modified, 304/412.

    A file that ends before its length was sent is cut off (connection closed, one WARNING), never left hanging.
    ``done`` runs after a whole file (200, GET) was sent; a share link's ``use`` is committed once bytes went out.
    ``pause``: held while the file is sent (the background hasher waits: the same disk and CPU).
    """

    def __init__(self, opened: Any, name: str, whose: str, done: Any = None, use: Use | None = None,
                 pause: Any = contextlib.nullcontext, **kw: Any) -> None:
        super().__init__(**kw)
        self._src, self._name, self._whose, self._done, self._use = opened, name, whose, done, use
        self._pause = pause
        self._sent, self._detail, self._count = 0, "", 0
        self._watch: Any = None         # cut when the link or login it is sent under ends

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:
            return None
        try:
            with self._pause(), request.app[CTX].grants.watching(request) as watch:
                self._watch = watch
                return await self._send(request)
        finally:
            self._src.close()
            if self._use is not None:
                cut = self._watch.ended if self._watch is not None else ""
                await (self._use.commit(self._detail + short_of(self._sent, self._count, cut)) if self._sent
                       else self._use.release())

    async def _send(self, request: web.BaseRequest) -> Any:
        st = self._src.st
        size = st.st_size
        tag = f"{st.st_mtime_ns:x}-{size:x}"
        self.etag = tag
        self.last_modified = st.st_mtime
        self.headers["Accept-Ranges"] = "bytes"
        if (m := request.if_match) is not None and not any(e.value in (tag, "*") and not e.is_weak for e in m):
            self.set_status(412)
            return await super().prepare(request)
        inm, ims = request.if_none_match, request.if_modified_since
        if (inm is not None and any(e.value in (tag, "*") for e in inm)) or \
                (inm is None and ims is not None and int(st.st_mtime) <= ims.timestamp()):
            self.set_status(304)
            return await super().prepare(request)
        start, count = 0, size
        rng = request.headers.get("Range", "")
        if rng and self._if_range(request, tag, st.st_mtime):
            got = byte_range(rng, size)
            if got == "bad":
                self.set_status(416)
                self.headers["Content-Range"] = f"bytes */{size}"
                self.content_length = 0
                return await super().prepare(request)
            if got is not None:
                start, count = got  # type: ignore[misc]
                self.set_status(206)
                self.headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
                self._detail = f" (bytes {start}-{start + count - 1})"
        self.content_length = self._count = count
        writer = await super().prepare(request)
        if request.method == "HEAD" or count == 0:
            return writer
        try:
            self._sent = await send_span(request, self._src, start, count)
        except ClientLeft as e:
            self._sent = e.sent
            client_left(self._name, e.sent, count, self._watch)
            raise
        except FileEnded as e:
            self._sent = e.sent
            source_changed(request, self._name, self._whose, e.sent, count, e.why)
            raise
        await super().write_eof()
        if self._done is not None and self.status == 200 and request.method == "GET":
            await self._done()
        return writer

    @staticmethod
    def _if_range(request: web.BaseRequest, tag: str, mtime: float) -> bool:
        """Is the Range still meant for this file? (If-Range: an entity tag, or a date; none: yes.)"""
        value = request.headers.get("If-Range", "")
        if not value:
            return True
        if value.startswith(('"', "W/")):
            return value == f'"{tag}"'
        try:
            when = request.if_range
        except ValueError:
            return False
        return when is not None and int(mtime) <= when.timestamp()


async def send_span(request: web.BaseRequest, src: Any, start: int, count: int) -> int:
    """count bytes of an open file from start, by sendfile; ClientLeft or FileEnded (both ConnectionErrors)."""
    if gone(request):
        raise ClientLeft(0)
    transport = request.transport
    await request.writer.drain()
    f = io.FileIO(src.fileno(), "rb", closefd=False)
    try:
        with _nagle_while_sent(transport):
            sent = await asyncio.get_running_loop().sendfile(transport, f, start, count)
    except ConnectionError:
        raise ClientLeft(max(0, f.tell() - start)) from None
    if sent < count:                  # the file ended early: cut the answer, never leave the client waiting
        raise FileEnded(sent, f"{src.size} bytes when opened, it ended after {start + sent}")
    return sent


@contextlib.contextmanager
def _nagle_while_sent(transport: Any) -> Any:
    """Nagle on (TCP_NODELAY off) while a file goes out by sendfile, TCP_NODELAY back on after: nginx's default
    (sendfile on, tcp_nopush off; tcp_nodelay only once the answer is out, at keep-alive).

    asyncio sets TCP_NODELAY on every connection. Measured on a 1 GiB download over loopback (issue 21, pinned as
    bench/bench_http.py does, 10 interleaved rounds): corked (TCP_CORK, nginx's tcp_nopush, as Debian configures it)
    0.64 s for ours and 0.66 s for nginx; TCP_NODELAY left on 0.36 s; Nagle on 0.33 s, nginx's default 0.37 s.
    Corked, sendfile keeps filling the socket's buffer (~600 partial calls and as many waits for POLLOUT, against 3-5
    calls that each send hundreds of MB otherwise) and the receiver's kernel does twice the work (curl, from nginx
    corked or not: 0.51 s of system time per GiB against 0.23 s). Turning TCP_NODELAY back on pushes the last,
    partial segment out at once (Linux sends what Nagle held back), so the end of a file never waits for an ACK.
    """
    sock = transport.get_extra_info("socket")
    tcp = sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
    if tcp:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    try:
        yield
    finally:
        if tcp:
            with contextlib.suppress(OSError):       # the client may have gone: nothing left to push
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def rendered(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return await send_rendered(request, ctx, s, request.match_info["fmt"], request.query.get("template", ""),
                               via="page")


async def send_rendered(request: web.Request, ctx: WebContext, s: Any, fmt: str, template: str,
                        via: str) -> web.StreamResponse:
    from steno_exportd import render
    from steno_exportd.engine.plan import render_options

    r = render.get(one_of(fmt, render.names(), "format"))
    if fmt == "audio":
        raise web.HTTPFound(f"/sessions/{await ctx.link_key(s)}/audio?dl=1")
    template = _template(template, ctx)
    opts = render_options(ctx.cfg, template)        # the same options as an export's files
    key = ctx.cache.key(s.uuid, s.updated_at, fmt, r.version, template, opts)
    name = download_name(s.summary, r.filename(s, opts))
    headers = {"Content-Disposition": disposition(name), "Content-Type": r.media_type}
    path = await asyncio.to_thread(ctx.cache.get, key)
    if path is None:
        mine = _render_slot(ctx, request, key) if r.heavy else None
        try:
            path, data = await made_once(ctx, key, fmt, s, opts, request)
        except CancelledJob:
            if not gone(request):
                raise
            client_left(name, 0, None)
            return web.Response(status=499)     # nobody reads it: the connection is gone
        finally:
            if mine is not None:
                _render_done(ctx, mine, key, request)
        if path is None:
            await ctx.grants.still_granted(request)     # (the login may have ended while it was rendered)
            await asyncio.to_thread(ctx.store.audit, s.id, client_addr(request), f"{fmt} ({template})", via)
            return web.Response(body=data, headers=headers)
    addr = client_addr(request)

    async def done() -> None:
        await asyncio.to_thread(ctx.store.audit, s.id, addr, f"{fmt} ({template})", via)
    try:                              # the cache is the daemon's own folder; still, no symlink is followed
        opened = await asyncio.to_thread(SourceRef(path, ctx.cache.root).open)
    except SourceError:
        raise NotFoundError(f"the cached {fmt} went away; try again") from None
    # the login may have ended while it was rendered or opened: a small one goes out whole before the watch looks
    await granted_or_closed(request, ctx, opened)
    return SourceResponse(opened, name, f"session {s.id}", done, pause=ctx.core.prehasher.pause, headers=headers)


def _render_slot(ctx: WebContext, request: web.Request, key: str) -> str:
    """Count a document (or a ZIP's documents, made one after the other) about to be made in the render worker for
    this request's client (limiter.client_of: an IPv4 address, in either of its forms; an IPv6 /64); Throttled
    when it already has RENDERS_PER_CLIENT others being made. The worker makes one at a time, first come first
    served: with no bound, a guest asking for every meeting's PDF at once was ahead of everybody who asked after
    it. The same document asked for again takes no further slot (it is made once), nor does a
    request whose client has left (its render is being stopped)."""
    from steno_exportd.access.limiter import client_of

    addr = client_addr(request)
    client = client_of(addr)
    mine = ctx.rendering.setdefault(client, [])
    making = {k for k, r in mine if not gone(r)}
    if key not in making and len(making) >= RENDERS_PER_CLIENT:
        request.app[REFUSALS].note(addr, "%d documents being made for it already (at most %d per client)",
                                   len(making), RENDERS_PER_CLIENT)
        raise Throttled(f"{len(making)} documents being made for you already (at most {RENDERS_PER_CLIENT} at "
                        f"once); try again once one of them has come", RENDER_RETRY)
    mine.append((key, request))
    return client


def _render_done(ctx: WebContext, client: str, key: str, request: web.Request) -> None:
    mine = ctx.rendering.get(client, [])
    with contextlib.suppress(ValueError):
        mine.remove((key, request))
    if not mine:
        ctx.rendering.pop(client, None)


class Making:
    """One document rendered for every request that asks for it meanwhile (the render cache's key)."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.requests: list[web.BaseRequest] = []      # those waiting for it now
        self.abandoned = False                         # stopped: every request waiting for it had left

    def left(self) -> bool:
        """Every request that waits for it has gone (also read from the thread that waits for the worker)."""
        if all(gone(r) for r in tuple(self.requests)):
            self.abandoned = True
        return self.abandoned


async def made_once(ctx: WebContext, key: str, fmt: str, s: Any, opts: Any,
                    request: web.BaseRequest) -> tuple[Any, bytes]:
    """A document not in the cache, rendered once for every request that asks for it meanwhile: (its path in the
    cache, b"") or, when it is not cached (cache off, too big), (None, its bytes). The render is a task of its own:
    it goes on for the others when the request that started it goes away, its error reaches every one, and it
    stops (CancelledJob) once every request waiting for it has left."""
    for attempt in range(2):
        making = ctx.making.get(key)
        # one being stopped (every requester left; its task may have ended, not yet taken out), or a second try
        # (what it joined was stopped as it came): one of its own, with this request in it from its first look
        if making is None or making.abandoned or attempt:
            making = ctx.making[key] = Making()
            making.task = asyncio.create_task(_make(ctx, key, fmt, s, opts, making.left))
            making.task.add_done_callback(functools.partial(_made, ctx.making, key, making))
        making.requests.append(request)
        try:
            return await asyncio.shield(making.task)      # type: ignore[arg-type]
        except CancelledJob:
            if not making.abandoned or gone(request):   # (a stop of the daemon) or it left too
                raise
            # it came while a render every other requester had left was being stopped: one of its own
        finally:
            making.requests.remove(request)
    raise CancelledJob("cancelled")


async def _make(ctx: WebContext, key: str, fmt: str, s: Any, opts: Any, left: Any) -> tuple[Any, bytes]:
    from steno_exportd import render

    path = await asyncio.to_thread(ctx.cache.get, key)      # put by a render that ended since this one's miss
    if path is not None:
        return path, b""
    data = (await render.async_render(fmt, s, opts, left)).data     # stopped once every requester has left
    path = await asyncio.to_thread(ctx.cache.put, key, data)
    return (path, b"") if path is not None else (None, data)


def _made(making: dict, key: str, one: Making, task: asyncio.Future) -> None:
    if making.get(key) is one:
        del making[key]
    if not task.cancelled():
        task.exception()            # seen, even when every request that waited for it has gone


def cached_size(ctx: WebContext, s: Any, fmt: str, template: str) -> int | None:
    """The size of a download made before (in the render cache), None when it has not been made yet."""
    from steno_exportd import render
    from steno_exportd.engine.plan import render_options

    opts = render_options(ctx.cfg, template)
    return ctx.cache.size(ctx.cache.key(s.uuid, s.updated_at, fmt, render.get(fmt).version, template, opts))


# ---- parameters and ZIP ---------------------------------------------------------------

def one_of(value: str, allowed: Any, what: str) -> str:
    """A download parameter from a fixed list; anything else is a 400 that names the allowed values."""
    if value not in allowed:
        raise InvalidArgument(f"unknown {what} {value[:40]!r}; allowed: {', '.join(allowed)}")
    return value


def _template(value: str, ctx: WebContext) -> str:
    """The built-in templates and the user's own (render.template_dir/templates.toml)."""
    return one_of(value or ctx.cfg.export.template, tuple(ctx.core.template_names()), "template")


def _formats(q: Any, ctx: WebContext) -> tuple[str, ...]:
    from steno_exportd.formats import FORMATS
    names = [f.strip() for f in ",".join(q.getall("formats", [])).split(",") if f.strip()]
    if not names and not q.getall("formats", []):
        return tuple(ctx.cfg.export.formats)
    if len(names) > MAX_FORMATS:
        raise InvalidArgument(f"formats: at most {MAX_FORMATS}")
    fmts = tuple(dict.fromkeys(one_of(f, FORMATS, "format") for f in names))
    if not fmts:
        raise InvalidArgument(f"formats: name at least one of {', '.join(FORMATS)}")
    return fmts


async def stream_zip(request: web.Request, ctx: WebContext, ids: list[int], fmts: tuple[str, ...],
                     name: str, via: str, use: Use | None = None, uuids: tuple | None = None) -> web.StreamResponse:
    """One ZIP streamed on the fly (ZIP64, audio stored, SHA256SUMS and manifest), with Content-Length.

    Its recordings are opened as they were checked when it is planned and held open until they are sent; one
    that shrinks meanwhile cuts the ZIP off (connection closed, one WARNING naming the session): a ZIP never
    silently misses or truncates one. ``uuids`` (one per id): only those meetings (archive.build_plan)."""
    with ctx.core.prehasher.pause():          # the background hasher waits while a ZIP is made
        return await _zip(request, ctx, ids, fmts, name, via, use, uuids)


async def _zip(request: web.Request, ctx: WebContext, ids: list[int], fmts: tuple[str, ...],
               name: str, via: str, use: Use | None, uuids: tuple | None = None) -> web.StreamResponse:
    from steno_exportd import render
    from steno_exportd.engine import archive

    sent, held, plan, cut, resp = 0, 0, None, "", None
    try:
        template = _template(request.query.get("template", ""), ctx)
        headers = {"Content-Type": "application/zip", "Content-Disposition": disposition(name)}
        if request.method == "HEAD":  # its length is known only once every document is rendered: not for HEAD
            resp = web.StreamResponse(headers=headers)
            await resp.prepare(request)
            return resp
        wanted = len(ids) if "audio" in fmts else 0       # at most one recording per session stays open
        if wanted > ctx.source_budget:  # never fits, however long it waits: not a 429 "try again"
            raise InvalidArgument(f"a ZIP with recordings holds at most {ctx.source_budget} sessions here ({wanted} "
                                  f"selected): select {ctx.source_budget} or fewer, or leave out the recordings")
        if ctx.source_files + wanted > ctx.source_budget:
            raise Throttled("too many ZIP downloads at once; try again in a moment", 5.0)
        held = wanted                   # (counted from here: a refused ZIP gives back nothing it never took)
        ctx.source_files += held
        # its documents made in the render worker (one after the other) take one of its client's render slots
        making = f"zip {id(request):x}"
        mine = _render_slot(ctx, request, making) if any(render.get(f).heavy for f in fmts) else None
        # its documents are rendered before the first byte (minutes of PDF for a long meeting): a client that
        # leaves meanwhile (or a handler cancelled) stops the rendering, not only the first write after it
        ended = threading.Event()
        try:
            # (in a thread of the callers waiting for the render worker: never the page's)
            plan = await render.waiting_for_worker(archive.build_plan, ctx.core.library, tuple(ids), fmts,
                                                   template, "audio" in fmts, ctx.cfg, None, ctx.hashes, True,
                                                   cancelled=lambda: ended.is_set() or gone(request), uuids=uuids)
        except CancelledJob:
            client_left(name, 0, None)
            return web.Response(status=499)     # nobody reads it: the connection is gone
        finally:
            ended.set()
            if mine is not None:
                _render_done(ctx, mine, making, request)
        await ctx.grants.still_granted(request)     # (the link or login may have ended while it was rendered)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = archive.zip_size(plan)
        if plan.errors:
            resp.headers["X-Steno-Problems"] = quote("; ".join(f"session {k}: {', '.join(v)}"
                                                               for k, v in plan.errors.items()))[:2000]
        try:
            await resp.prepare(request)
        except ConnectionError:         # it left just as the headers went out
            client_left(name, 0, resp.content_length)
            return resp
        sent, cut = await _stream_parts(request, resp, ctx, plan, name)
    finally:
        if plan is not None:
            plan.close()
        ctx.source_files -= held
        if use is not None:
            await (use.commit(short_of(sent, resp.content_length if resp else None, cut)) if sent
                   else use.release())
    if sent != resp.content_length:
        return resp                   # cut off (logged)
    for e in plan.entries:          # recordings hashed on the way: the next ZIP can use sendfile
        if e.source is not None and not e.known and e.sha256:
            await asyncio.to_thread(ctx.hashes.put, e.path, e.crc, e.sha256, None, e.source)
    if use is None:
        for sid in ids:
            await asyncio.to_thread(ctx.store.audit, sid, client_addr(request), f"zip {','.join(fmts)}", via)
    return resp


async def _stream_parts(request: web.Request, resp: web.StreamResponse, ctx: WebContext, plan: Any,
                        name: str) -> tuple[int, str]:
    """Write the plan's parts; the bytes sent (short of the length when the client left, a file changed or the
    link or login it was sent under ended) and why it was cut by the server ("" when it was not)."""
    with ctx.grants.watching(request) as watch:
        sent = await _write_parts(request, resp, ctx, plan, name, watch)
        return sent, watch.ended if watch is not None else ""


async def _write_parts(request: web.Request, resp: web.StreamResponse, ctx: WebContext, plan: Any,
                       name: str, watch: Any) -> int:
    from steno_exportd.engine import archive

    parts = archive.zip_parts(plan, chunk=ZIP_CHUNK)
    ctx.streams.add(resp)
    sent = 0
    try:
        while batch := await asyncio.to_thread(_take, parts, ZIP_BATCH):
            for part in batch:
                if isinstance(part, archive.FileSpan):
                    sent += await _send_file_span(request, part)
                else:
                    await resp.write(part)
                    sent += len(part)
        await resp.write_eof()
    except FileEnded as e:
        source_changed(request, name, f"session {e.session_id}", sent + e.sent, resp.content_length, e.why)
        return sent + e.sent
    except ClientLeft as e:           # the client left: one INFO line, nothing counted or cached
        client_left(name, sent + e.sent, resp.content_length, watch)
        return sent + e.sent
    except ConnectionError:
        client_left(name, sent, resp.content_length, watch)
        request.protocol.force_close()
    except SourceChanged as e:        # a recording that changed while it was hashed (checksums not known yet)
        source_changed(request, name, f"session {e.session_id}", sent, resp.content_length, e)
    except (SourceError, OSError) as e:
        source_changed(request, name, "a session", sent, resp.content_length, e)
    finally:
        ctx.streams.discard(resp)
        await asyncio.to_thread(_close_parts, parts)
    return sent


def _take(parts: Any, limit: int) -> list:
    """The next parts, up to limit bytes or a FileSpan (one thread hop for several small chunks); [] at the end."""
    from steno_exportd.engine.archive import FileSpan
    out: list = []
    size = 0
    for part in parts:
        out.append(part)
        if isinstance(part, FileSpan):
            break
        size += len(part)
        if size >= limit:
            break
    return out


def _close_parts(parts: Any) -> None:
    """Close the ZIP generator: its open file and its reader thread."""
    with contextlib.suppress(ValueError):   # a thread still inside it (cancelled mid-read): freed when it returns
        parts.close()


async def _send_file_span(request: web.Request, span: Any) -> int:
    """A stored entry straight from the page cache to the socket, from the file opened when it was checked."""
    try:
        src = span.opened if span.opened is not None else await asyncio.to_thread(span.source.open)
    except SourceError as e:
        raise FileEnded(0, e, span.session_id) from None
    try:
        return await send_span(request, src, 0, span.size)
    except FileEnded as e:
        raise FileEnded(e.sent, e.why, span.session_id) from None
    finally:
        if span.opened is None:       # the plan's own (held open) is closed with the plan: a thread may still
            src.close()               # be hashing it while it is sent


async def session_zip(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    summary = await ctx.summary(request.match_info["key"])     # the plan loads the session itself, bound to
    return await stream_zip(request, ctx, [summary.id], _formats(request.query, ctx),     # the meeting looked up
                            download_name(summary, "SilentSteno.zip"), "page", uuids=(summary.uuid,))


async def selection_zip(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    raw = [x for x in request.query.getall("id", []) + request.query.get("ids", "").split(",") if x]
    if not raw:
        raise InvalidArgument("select at least one session")
    if len(raw) > MAX_SELECTION:
        raise InvalidArgument(f"at most {MAX_SELECTION} sessions in one ZIP")
    for key in raw:
        session_key(key)              # every key well-formed before any is looked up
    chosen: dict[int, str] = {}       # id -> uuid, resolved from the listing: the plan loads each session once,
    for key in raw:                   # bound to the meeting looked up (a restore since: SessionReplaced)
        summary = await ctx.summary(key)
        chosen.setdefault(summary.id, summary.uuid)
    stamp = time.strftime("%Y-%m-%d")
    return await stream_zip(request, ctx, list(chosen), _formats(request.query, ctx),
                            f"SilentSteno {stamp} ({len(chosen)} sessions).zip", "page", uuids=tuple(chosen.values()))


# the page's own downloads (each one written to the audit log): never for another site's page (app.access)
AUDITED = (audio, rendered, session_zip, selection_zip)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/sessions/{key}/audio", audio)
    r.add_get("/sessions/{key}/download/{fmt}", rendered)
    r.add_get("/sessions/{key}/zip", session_zip)
    r.add_get("/zip", selection_zip)
