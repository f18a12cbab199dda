"""HTML pages, downloads (audio, rendered formats, streamed ZIP), login and share links."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import mimetypes
import os
import re
import secrets
import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.formats import DOCUMENT_TEMPLATES
from steno_exportd.web import auth
from steno_exportd.web.app import CTX, WebContext, client_addr

log = logging.getLogger(__name__)

PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_SELECTION = 500
SORTS = {"date": lambda s: (s.start_time or dt.datetime.min.replace(tzinfo=dt.timezone.utc)),
         "title": lambda s: (s.title or "").casefold(),
         "duration": lambda s: s.duration_seconds or 0}
AUDIO_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4"}


# ---- listing ----------------------------------------------------------------------

def _date(value: str, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def _int(value: str, name: str, default: int, lo: int, hi: int) -> int:
    if value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not a number") from None
    if not lo <= n <= hi:
        raise InvalidArgument(f"{name}: {n} is out of range {lo}..{hi}")
    return n


async def query_sessions(ctx: WebContext, q: Any) -> dict:
    """Search (text, participant, dates), sort and page the session list; bad parameters are 400."""
    text = q.get("q", "").strip()[:200].casefold()
    who = q.get("participant", "").strip()[:200]
    since, until = _date(q.get("from", ""), "from"), _date(q.get("to", ""), "to")
    sort = q.get("sort", "date")
    if sort not in SORTS:
        raise InvalidArgument(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
    order = q.get("order", "desc" if sort in ("date", "duration") else "asc")
    if order not in ("asc", "desc"):
        raise InvalidArgument("order: asc or desc")
    per_page = _int(q.get("per_page", ""), "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    page = _int(q.get("page", ""), "page", 1, 1, 10 ** 6)
    items = await ctx.sessions()
    if text:
        items = [s for s in items if text in (s.title or "").casefold() or text in (s.location or "").casefold()
                 or text == s.short_id or any(text in t.casefold() for t in s.tags)]
    if who:
        ids = await asyncio.to_thread(ctx.core.library.sessions_with_participant, who)
        items = [s for s in items if s.id in ids]
    if since or until:
        def day(s: Any) -> dt.date | None:
            return s.start_time.astimezone().date() if s.start_time else None
        items = [s for s in items if day(s) and (not since or day(s) >= since) and (not until or day(s) <= until)]
    items = sorted(items, key=SORTS[sort], reverse=order == "desc")
    total = len(items)
    pages = max(1, -(-total // per_page))
    page = min(page, pages)          # past the end (a stale link after sessions went): the last page
    start = (page - 1) * per_page
    return {"items": items[start:start + per_page], "total": total, "page": page, "pages": pages,
            "per_page": per_page, "sort": sort, "order": order,
            "query": {"q": q.get("q", ""), "participant": who, "from": q.get("from", ""), "to": q.get("to", "")}}


def summary_json(s: Any) -> dict:
    return {"id": s.id, "uuid": s.uuid, "short_id": s.short_id, "title": s.title, "status": s.status,
            "start_time": s.start_time.isoformat() if s.start_time else None,
            "duration_seconds": s.duration_seconds, "location": s.location,
            "participant_count": s.participant_count, "tags": list(s.tags), "exportable": s.exportable,
            "problems": [f"{p.field}: {p.reason}" for p in s.problems]}


def fmt_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_when(t: Any) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M") if t else "—"


def fmt_duration(sec: Any) -> str:
    if not sec:
        return "—"
    return f"{sec // 3600} h {sec % 3600 // 60:02d} min" if sec >= 3600 else f"{max(1, round(sec / 60))} min"


def _qs(query: dict, **over: Any) -> str:
    d = {k: v for k, v in {**query, **over}.items() if v not in ("", None)}
    return "&".join(f"{k}={quote(str(v))}" for k, v in d.items())


async def index(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    res = await query_sessions(ctx, request.query)
    base = {**res["query"], "sort": res["sort"], "order": res["order"], "per_page": res["per_page"]}
    return ctx.render_page(request, "sessions.html", res=res, when=fmt_when, dur=fmt_duration,
                           qs=lambda **o: _qs(base, **o), remotes=remotes(ctx))


def remotes(ctx: WebContext) -> list[dict]:
    """The configured SMB push remotes, for the "Send to" buttons (none configured: no buttons)."""
    return [{"name": r.name, "where": f"\\\\{r.server}\\{r.share}" + (f"\\{r.path}" if r.path else "")}
            for r in ctx.cfg.smb.remotes]


# ---- one session --------------------------------------------------------------------

def _renderers() -> list[Any]:
    from steno_exportd import render
    return [render.get(n) for n in render.names()]


async def session_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    downloads = []
    for r in _renderers():
        if r.name == "audio":
            continue
        if r.name in ("pdf", "docx"):
            for t in DOCUMENT_TEMPLATES:
                downloads.append((f"{r.name.upper()} – {t.replace('_', ' ')}", f"{r.name}?template={t}"))
        else:
            downloads.append((r.name.upper(), r.name))
    links = await asyncio.to_thread(ctx.store.links, s.id)
    audit = await asyncio.to_thread(ctx.store.audit_log, s.id, 50)
    return ctx.render_page(request, "session.html", s=s, t=fmt_time, when=fmt_when, dur=fmt_duration,
                           downloads=downloads, links=[x.public() for x in links], audit=audit,
                           share_cfg=ctx.cfg.http.share_links, now=time.time(), remotes=remotes(ctx),
                           at=lambda x: time.strftime("%Y-%m-%d %H:%M", time.localtime(x)))


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


# ---- ZIP ----------------------------------------------------------------------------

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


# ---- devices, jobs, history ------------------------------------------------------------

async def devices_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    from steno_exportd.web.api import device_json, job_json
    import socket
    share = f"\\\\{socket.gethostname()}\\{ctx.cfg.samba.share_name}"
    on, state = bool(ctx.core.sharing_enabled), str(getattr(ctx.core, "samba_state", "off"))
    return ctx.render_page(request, "devices.html", sharing=on, samba_state=state, share=share,
                           sharing_label=sharing_label(on, state),
                           devices=[device_json(d) for d in ctx.core.devices.list()],
                           jobs=[job_json(j) for j in sorted(ctx.core.jobs.list(), key=lambda j: -j.id)])


def sharing_label(on: bool, state: str) -> str:
    """What the share really does, in words (static/app.js says the same for live updates)."""
    if state == "serving":
        return "on — serving"
    if state.startswith("error"):
        return state
    return "on — not serving yet" if on else "off"


async def history_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    rows = await asyncio.to_thread(ctx.core.state.history, None, 500)
    by_uuid = {s.uuid: s for s in await ctx.sessions()}
    return ctx.render_page(request, "history.html", rows=rows, sessions=by_uuid)


# ---- login ------------------------------------------------------------------------------

def _safe_next(value: str) -> str:
    """A path on this site, or "/" (no controls: browsers drop a tab in "/<tab>/host", leaving "//host")."""
    if (not value.startswith("/") or value.startswith("//") or len(value) > 2000
            or any(c == "\\" or c <= " " or c == "\x7f" for c in value)):
        return "/"
    return value


async def login_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    if ctx.cfg.http.auth.mode != "password":
        raise web.HTTPFound("/")
    return ctx.render_page(request, "login.html", next=_safe_next(request.query.get("next", "/")), error="")


async def login(request: web.Request) -> web.Response:
    from steno_exportd.web.password import verify_password

    ctx: WebContext = request.app[CTX]
    if ctx.cfg.http.auth.mode != "password":
        raise web.HTTPFound("/")
    form = await request.post()
    nxt = _safe_next(str(form.get("next", "/")))
    addr = client_addr(request)
    wait = ctx.limiter.locked_for(addr)
    if wait:
        resp = ctx.render_page(request, "login.html", status=429, next=nxt,
                               error=f"Too many failed attempts. Try again in {int(wait) + 1} seconds.")
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    ok = await asyncio.to_thread(verify_password, str(form.get("password", ""))[:1024],
                                 ctx.cfg.http.auth.password_hash)
    if not ok:
        ctx.limiter.failed(addr)
        log.warning("failed login from %s", addr)
        return ctx.render_page(request, "login.html", status=401, next=nxt, error="Wrong password.")
    ctx.limiter.succeeded(addr)
    hours = ctx.cfg.http.auth.session_hours
    token = ctx.signer.sign({"sid": secrets.token_urlsafe(16), "exp": time.time() + hours * 3600})
    resp = web.HTTPSeeOther(nxt)
    resp.set_cookie(auth.COOKIE, token, httponly=True, samesite="Strict", max_age=int(hours * 3600), path="/")
    raise resp


async def logout(request: web.Request) -> web.Response:
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(auth.COOKIE, path="/")
    raise resp


# ---- share links ------------------------------------------------------------------------

async def create_share(request: web.Request) -> web.Response:
    from steno_exportd.web.api import new_link
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    form = await request.post()
    await new_link(ctx, s.id, form.get("hours", ""), form.get("max_downloads", ""), str(form.get("pin", "")))
    raise web.HTTPSeeOther(f"/sessions/{s.id}#share")


async def revoke_share(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    link = await asyncio.to_thread(ctx.store.revoke, request.match_info["token"])
    raise web.HTTPSeeOther(f"/sessions/{link.session_id}#share")


def _share_cookie(token: str) -> str:
    return "steno_share_" + re.sub(r"[^A-Za-z0-9_-]", "", token)[:40]


async def _usable_link(request: web.Request, ctx: WebContext) -> Any:
    token = request.match_info["token"]
    try:
        link = await asyncio.to_thread(ctx.store.link, token)
    except NotFoundError:
        raise web.HTTPNotFound(text="This share link does not exist. Ask for a new one.") from None
    if link.state != "active":
        raise web.HTTPGone(text=f"This share link is {link.state}. Ask for a new one.")
    return link


def _pin_ok(request: web.Request, ctx: WebContext, link: Any) -> bool:
    if not link.has_pin:
        return True
    p = ctx.signer.unsign(request.cookies.get(_share_cookie(link.token), ""))
    return bool(p) and p.get("share") == link.token


async def share_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    link = await _usable_link(request, ctx)
    if not _pin_ok(request, ctx, link):
        return ctx.render_page(request, "share_pin.html", token=link.token, error="")
    s = await ctx.session(str(link.session_id))
    return ctx.render_page(request, "share.html", s=s, link=link.public(), when=fmt_when, dur=fmt_duration,
                           left=link.max_downloads - link.downloads,
                           expires=time.strftime("%Y-%m-%d %H:%M", time.localtime(link.expires)))


async def share_pin(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    link = await _usable_link(request, ctx)
    addr = client_addr(request)
    wait = ctx.limiter.locked_for(addr)
    if wait:
        resp = ctx.render_page(request, "share_pin.html", status=429, token=link.token,
                               error=f"Too many wrong PINs. Try again in {int(wait) + 1} seconds.")
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    pin = str((await request.post()).get("pin", ""))[:32]
    if not await asyncio.to_thread(ctx.store.check_pin, link.token, pin):
        ctx.limiter.failed(addr)
        return ctx.render_page(request, "share_pin.html", status=403, token=link.token, error="Wrong PIN.")
    ctx.limiter.succeeded(addr)
    resp = web.HTTPSeeOther(f"/s/{link.token}")
    resp.set_cookie(_share_cookie(link.token), ctx.signer.sign({"share": link.token, "exp": link.expires}),
                    httponly=True, samesite="Strict", path=f"/s/{link.token}")
    raise resp


async def share_download(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    link = await _usable_link(request, ctx)
    if not _pin_ok(request, ctx, link):
        raise web.HTTPForbidden(text="Enter the PIN first.")
    s = await ctx.session(str(link.session_id))
    what = one_of(request.match_info["what"], ("zip", "audio"), "download")
    counted = {"ok": False}

    async def count() -> None:
        counted["ok"] = await asyncio.to_thread(ctx.store.count_download, link.token)

    via = f"share link {link.token[:6]}…"
    if what == "audio":
        return await send_audio(request, ctx, s, via=via, on_complete=count)
    return await stream_zip(request, ctx, [s.id], tuple(ctx.cfg.export.formats),
                            download_name(s, "SilentSteno.zip"), via, on_complete=count)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", index)
    r.add_get("/sessions/{key}", session_page)
    r.add_get("/sessions/{key}/audio", audio)
    r.add_get("/sessions/{key}/download/{fmt}", rendered)
    r.add_get("/sessions/{key}/zip", session_zip)
    r.add_get("/zip", selection_zip)
    r.add_post("/sessions/{key}/share", create_share)
    r.add_post("/share/{token}/revoke", revoke_share)
    r.add_get("/devices", devices_page)
    r.add_get("/history", history_page)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/s/{token}", share_page)
    r.add_post("/s/{token}", share_pin)
    r.add_get("/s/{token}/{what}", share_download)
