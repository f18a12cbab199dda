"""Downloads: the recording and rendered formats (sendfile, Range, cache), one or many sessions as a streamed ZIP."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import re
import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.web.context import CTX, WebContext, client_addr

log = logging.getLogger(__name__)

MAX_SELECTION = 500
AUDIO_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4"}


def disposition(filename: str, inline: bool = False) -> str:
    """Content-Disposition with an ASCII fallback and a UTF-8 filename* (RFC 6266 / 5987)."""
    ascii_name = re.sub(r'[^A-Za-z0-9 ._()-]', "_", filename).strip() or "download"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def download_name(s: Any, name: str) -> str:
    stem = re.sub(r'[\x00-\x1f\\/:*?"<>|]+', "_", s.title or f"Session {s.id}").strip(" .")[:80]
    return f"{stem} ({s.summary.short_id}) {name}"


async def audio(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return await send_audio(request, ctx, s, via="page")


async def send_audio(request: web.Request, ctx: WebContext, s: Any, via: str,
                     on_complete: Any = None) -> web.StreamResponse:
    if s.audio is None or s.audio.path is None:
        reasons = "; ".join(p.reason for p in s.problems if "audio" in p.field) or "no recording"
        raise NotFoundError(f"this session has no usable recording ({reasons})")
    path = s.audio.path
    ctype = AUDIO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    addr = client_addr(request)

    async def done() -> None:
        if on_complete is not None:
            await on_complete()
        if "dl" in request.query or via != "page":
            await asyncio.to_thread(ctx.store.audit, s.id, addr, f"audio {path.name}", via)
    name = download_name(s, path.name)
    return CompletingFileResponse(path, done, name, headers={
        "Content-Type": ctype, "Content-Disposition": disposition(name, inline="dl" not in request.query)})


def client_left(name: str, sent: int, total: int | None) -> None:
    """A download the client walked away from: one quiet line, no traceback (nothing failed here)."""
    log.info("download of %s: client left after %d of %s bytes", name, sent, total if total is not None else "?")


def _sent_since(f: Any, offset: int) -> int:
    """Bytes a sendfile got out before it failed (asyncio leaves the file position after them)."""
    try:
        return max(0, os.lseek(f.fileno(), 0, os.SEEK_CUR) - offset)
    except (OSError, ValueError):
        return 0


class CompletingFileResponse(web.FileResponse):
    """sendfile with Range/If-Range/ETag; calls ``done`` once a whole file (200, GET, no Range) has been sent."""

    def __init__(self, path: Any, done: Any, name: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self._done = done
        self._name = name

    async def _sendfile(self, request: web.BaseRequest, fobj: Any, offset: int, count: int) -> Any:
        try:
            return await super()._sendfile(request, fobj, offset, count)
        except ConnectionError:      # aiohttp drops the connection quietly; say once what happened
            client_left(self._name, _sent_since(fobj, offset), count)
            raise

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:
            return None
        if_range = request.headers.get("If-Range", "")
        if "Range" in request.headers and if_range.startswith(('"', "W/")):
            # aiohttp honours only dates in If-Range; an entity tag that no longer matches means "send it all"
            st = self._path.stat()
            if if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':
                headers = request.headers.copy()
                del headers["Range"]
                del headers["If-Range"]
                request = request.clone(headers=headers)
        writer = await super().prepare(request)
        if request.method == "GET" and "Range" not in request.headers and self.status == 200:
            await self._done()
        return writer


async def rendered(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return await send_rendered(request, ctx, s, request.match_info["fmt"], request.query.get("template", ""),
                               via="page")


async def send_rendered(request: web.Request, ctx: WebContext, s: Any, fmt: str, template: str,
                        via: str) -> web.StreamResponse:
    from steno_exportd import render
    from steno_exportd.render.base import RenderOptions

    r = render.get(one_of(fmt, render.names(), "format"))
    if fmt == "audio":
        raise web.HTTPFound(f"/sessions/{s.id}/audio?dl=1")
    template = _template(template, ctx)
    opts = RenderOptions.from_config(ctx.cfg.render, template)
    key = ctx.cache.key(s.uuid, s.updated_at, fmt, r.version, template, opts)
    name = download_name(s, r.filename(s, opts))
    headers = {"Content-Disposition": disposition(name), "Content-Type": r.media_type}
    path = await asyncio.to_thread(ctx.cache.get, key)
    if path is None:
        result = await render.async_render(fmt, s, opts)
        path = await asyncio.to_thread(ctx.cache.put, key, result.data)
        if path is None:
            await asyncio.to_thread(ctx.store.audit, s.id, client_addr(request), f"{fmt} ({template})", via)
            return web.Response(body=result.data, headers=headers)
    addr = client_addr(request)

    async def done() -> None:
        await asyncio.to_thread(ctx.store.audit, s.id, addr, f"{fmt} ({template})", via)
    return CompletingFileResponse(path, done, name, headers=headers)


# ---- parameters and ZIP ---------------------------------------------------------------

def one_of(value: str, allowed: Any, what: str) -> str:
    """A download parameter from a fixed list; anything else is a 400 that names the allowed values."""
    if value not in allowed:
        raise InvalidArgument(f"unknown {what} {value[:40]!r}; allowed: {', '.join(allowed)}")
    return value


def _template(value: str, ctx: WebContext) -> str:
    """The built-in templates and the user's own (render.template_dir/templates.toml)."""
    from steno_exportd.render.doctemplates import available
    templates, _ = available(ctx.cfg.render.template_dir or None)
    return one_of(value or ctx.cfg.export.template, tuple(templates), "template")


def _formats(q: Any, ctx: WebContext) -> tuple[str, ...]:
    from steno_exportd.formats import FORMATS
    raw = ",".join(q.getall("formats", []))
    if not raw:
        return tuple(ctx.cfg.export.formats)
    fmts = tuple(dict.fromkeys(one_of(f.strip(), FORMATS, "format") for f in raw.split(",") if f.strip()))
    if not fmts:
        raise InvalidArgument(f"formats: name at least one of {', '.join(FORMATS)}")
    return fmts


async def stream_zip(request: web.Request, ctx: WebContext, ids: list[int], fmts: tuple[str, ...],
                     name: str, via: str, on_complete: Any = None) -> web.StreamResponse:
    """One ZIP streamed on the fly (ZIP64, audio stored, SHA256SUMS and manifest), with Content-Length."""
    from steno_exportd.engine import archive

    template = _template(request.query.get("template", ""), ctx)
    errors: dict = {}
    plan = await asyncio.to_thread(archive.build_plan, ctx.core.library, tuple(ids), fmts, template,
                                   "audio" in fmts, ctx.cfg, None, errors, ctx.hashes)
    resp = web.StreamResponse(headers={"Content-Type": "application/zip",
                                       "Content-Disposition": disposition(name)})
    resp.content_length = archive.zip_size(plan)
    if errors:
        resp.headers["X-Steno-Problems"] = quote("; ".join(f"session {k}: {', '.join(v)}"
                                                           for k, v in errors.items()))[:2000]
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    parts = archive.zip_parts(plan, chunk=1 << 20)
    ctx.streams.add(resp)
    sent = 0
    try:
        while True:
            part = await asyncio.to_thread(next, parts, None)
            if part is None:
                break
            if isinstance(part, archive.FileSpan):
                sent += await _sendfile(request, part)
            else:
                await resp.write(part)
                sent += len(part)
        await resp.write_eof()
    except ConnectionError as e:    # the client left: one INFO line, nothing counted or cached
        client_left(name, sent + (e.sent if isinstance(e, ClientLeft) else 0), resp.content_length)
        return resp
    finally:
        ctx.streams.discard(resp)
        await asyncio.to_thread(_close_parts, parts)
    for e in plan.entries:          # recordings hashed on the way: the next ZIP can use sendfile
        if e.path is not None and not e.known and e.sha256:
            await asyncio.to_thread(ctx.hashes.put, e.path, e.crc, e.sha256)
    if on_complete is not None:
        await on_complete()
    for sid in ids:
        await asyncio.to_thread(ctx.store.audit, sid, client_addr(request), f"zip {','.join(fmts)}", via)
    return resp


class ClientLeft(ConnectionError):
    """The connection went away during a sendfile, after ``sent`` bytes of it."""

    def __init__(self, sent: int) -> None:
        super().__init__(f"client left after {sent} bytes")
        self.sent = sent


def _close_parts(parts: Any) -> None:
    """Close the ZIP generator: its open file and its reader thread."""
    with contextlib.suppress(ValueError):   # a thread still inside it (cancelled mid-read): freed when it returns
        parts.close()


async def _sendfile(request: web.Request, span: Any) -> int:
    """A stored entry straight from the page cache to the socket (what FileResponse does); its size."""
    writer, transport = request.writer, request.transport
    await writer.drain()
    with open(span.path, "rb") as f:
        if transport is None or transport.is_closing():
            raise ClientLeft(0)
        try:
            sent = await asyncio.get_running_loop().sendfile(transport, f, 0, span.size)
        except ConnectionError:
            raise ClientLeft(_sent_since(f, 0)) from None
    if sent != span.size:
        raise OSError(f"{span.path} changed size while being sent")
    return sent


async def session_zip(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return await stream_zip(request, ctx, [s.id], _formats(request.query, ctx),
                            download_name(s, "SilentSteno.zip"), "page")


async def selection_zip(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    raw = [x for x in request.query.getall("id", []) + request.query.get("ids", "").split(",") if x.strip()]
    if not raw:
        raise InvalidArgument("select at least one session")
    if len(raw) > MAX_SELECTION:
        raise InvalidArgument(f"at most {MAX_SELECTION} sessions in one ZIP")
    ids: list[int] = []
    for key in raw:
        s = await ctx.session(key.strip())
        if s.id not in ids:
            ids.append(s.id)
    stamp = time.strftime("%Y-%m-%d")
    return await stream_zip(request, ctx, ids, _formats(request.query, ctx),
                            f"SilentSteno {stamp} ({len(ids)} sessions).zip", "page")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/sessions/{key}/audio", audio)
    r.add_get("/sessions/{key}/download/{fmt}", rendered)
    r.add_get("/sessions/{key}/zip", session_zip)
    r.add_get("/zip", selection_zip)
