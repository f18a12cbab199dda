"""HTML pages: meetings list, one meeting, sticks & jobs, history; the formatting they share."""
from __future__ import annotations

import asyncio
import functools
import time
import unicodedata
from typing import Any
from urllib.parse import quote

from aiohttp import web

from steno_exportd.engine.identity import host_name
from steno_exportd.errors import InvalidArgument
from steno_exportd.formats import DOCUMENT_TEMPLATES
from steno_exportd.web.context import (CTX, WebContext, device_json, job_json, link_key, number, query_sessions,
                                       search_sessions)
from steno_exportd.web.human import fmt_duration, fmt_time, fmt_when


def _qs(query: dict, **over: Any) -> str:
    d = {k: v for k, v in {**query, **over}.items() if v not in ("", None)}
    return "&".join(f"{k}={quote(str(v))}" for k, v in d.items())


async def index(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    res = await query_sessions(ctx, request.query)
    base = {**res["query"], "sort": res["sort"], "order": res["order"], "per_page": res["per_page"]}
    q = res["query"]
    filtered = bool(q["participant"] or q["from"] or q["to"] or res["sort"] != "date" or res["order"] != "desc")
    # each meeting's link and tick name it as its own page does (its uuid), keys read on the listing the rows come
    # from: by number, a restore of the recorder's database before the click (or the ZIP, the mail, the "Send to")
    # opened the meeting that took the number
    return ctx.render_page(request, "sessions.html", res=res, when=fmt_when, dur=fmt_duration,
                           key=functools.partial(link_key, res["listing"]),
                           qs=lambda **o: _qs(base, **o), remotes=remotes(ctx), filtered=filtered,
                           email_on=ctx.cfg.email.enabled,
                           select_all=request.query.get("select") == "all")


async def search_page(request: web.Request) -> web.Response:
    """Words said in any meeting: each result links to the meeting, a transcript line to its second."""
    ctx: WebContext = request.app[CTX]
    text = request.query.get("q", "")
    res, error, listing = None, "", None
    if text.strip():
        try:
            res = await search_sessions(ctx, request.query)
        except InvalidArgument as e:      # shown beside the search box, which keeps what was typed
            error = str(e)
        else:       # a result names its meeting by the uuid the index holds with its words (link_key)
            listing = await ctx.core.listing()
    return ctx.render_page(request, "search.html", status=400 if error else 200, q=text[:1000], res=res,
                           error=error, when=fmt_when, t=fmt_time, key=functools.partial(link_key, listing),
                           page=lambda offset: _qs({"q": text, "limit": request.query.get("limit", ""),
                                                    "offset": offset}))


def remotes(ctx: WebContext) -> list[dict]:
    """The configured SMB push remotes, for the "Send to" buttons (none configured: no buttons)."""
    return [{"name": r.name, "where": f"\\\\{r.server}\\{r.share}" + (f"\\{r.path}" if r.path else "")}
            for r in ctx.cfg.smb.remotes]


# ---- one session --------------------------------------------------------------------

def _renderers() -> list[Any]:
    from steno_exportd import render
    return [render.get(n) for n in render.names()]


FIRST_LINES = 120          # transcript lines in the page itself: a screenful and more, fast for any length
MAX_LINES = 1000           # transcript lines in one fetched piece


def _downloads(ctx: WebContext, s: Any) -> dict[str, list[tuple[str, str, int | None]]]:
    """Download buttons by group: (label, href, bytes when known: the recording, anything made before)."""
    from steno_exportd.web.downloads import cached_size
    template = ctx.cfg.export.template
    docs, data = [], []
    for r in _renderers():
        if r.name == "audio":
            continue
        if r.name in ("pdf", "docx"):
            for t in DOCUMENT_TEMPLATES:
                docs.append((f"{r.name.upper()} – {t.replace('_', ' ')}", f"{r.name}?template={t}",
                             cached_size(ctx, s, r.name, t)))
        else:
            data.append((r.name.upper(), r.name, cached_size(ctx, s, r.name, template)))
    return {"documents": docs, "data": data}


async def session_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    from steno_exportd.render.timeline import timeline_svg
    from steno_exportd.web.links import link_views
    s = await ctx.session(request.match_info["key"])
    everything = request.query.get("all") == "1"
    find = request.query.get("find", "")[:200].strip()
    lines = list(enumerate(s.segments))
    if find:
        want = folded(find)          # once: NFKD spreads a character over up to 18
        lines = [(i, g) for i, g in lines if want in folded(g.text) or want in folded(g.speaker_name)]
    shown = lines if everything or find else lines[:FIRST_LINES]
    downloads = await asyncio.to_thread(_downloads, ctx, s)
    links = await link_views(request, ctx, s)
    audit = await asyncio.to_thread(ctx.store.audit_log, s.id, 50)
    return ctx.render_page(request, "session.html", s=s, t=fmt_time, when=fmt_when, dur=fmt_duration,
                           downloads=downloads, links=links, audit=audit, key=await ctx.link_key(s),
                           share_cfg=ctx.cfg.http.share_links, now=time.time(), remotes=remotes(ctx),
                           email_on=ctx.cfg.email.enabled, formats=[r.name for r in _renderers()],
                           default_formats=ctx.cfg.export.formats,
                           mails=[e for e in ctx.core.outbox.list() if s.id in e.sessions][-10:],
                           lines=shown, more=len(lines) - len(shown), find=find,
                           timeline=timeline_svg(s, href=lambda x: f"#t={x:.3f}") if s.segments else "")


async def transcript_piece(request: web.Request) -> web.Response:
    """Transcript lines ``from``..``from + count`` of a session as HTML list items (the page loads the rest so)."""
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    first = number(request.query.get("from", "0"), "from")
    count = min(number(request.query.get("count", str(MAX_LINES)), "count"), MAX_LINES)
    lines = list(enumerate(s.segments))[first:first + count]
    html = ctx.jinja.get_template("transcript_lines.html").render(lines=lines, t=fmt_time)
    resp = web.Response(text=html, content_type="text/html", charset="utf-8")
    resp.headers["X-Lines-Total"] = str(len(s.segments))
    return resp


def folded(text: str) -> str:
    """Case- and accent-insensitive form of text (as the find box matches)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text or "") if not unicodedata.combining(c)).casefold()


# ---- devices, jobs, history ------------------------------------------------------------

async def devices_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    share = f"\\\\{host_name()}\\{ctx.cfg.samba.share_name}"
    on, state = bool(ctx.core.sharing_enabled), str(getattr(ctx.core, "samba_state", "off"))
    titles = {x.id: x.title or "(untitled)" for x in await ctx.sessions()}
    return ctx.render_page(request, "devices.html", sharing=on, samba_state=state, share=share,
                           sharing_label=sharing_label(on, state),
                           devices=[device_json(d) for d in ctx.core.devices.list()],
                           jobs=[{**job_json(j), "meetings": meetings(j.sessions, titles)}
                                 for j in sorted(ctx.core.jobs.list(), key=lambda j: -j.id)],
                           schedules=ctx.core.schedules.list())


def meetings(ids: Any, titles: dict[int, str], most: int = 3) -> str:
    """A job's meetings in words: up to ``most`` titles, then how many more."""
    names = [titles.get(i, f"meeting {i}") for i in ids]
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[:most]) + f" and {len(names) - most} more"


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
    listing = await ctx.core.listing()
    by_uuid = {s.uuid: s for s in listing.sessions}
    return ctx.render_page(request, "history.html", rows=rows, sessions=by_uuid,
                           key=functools.partial(link_key, listing))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", index)
    r.add_get("/search", search_page)
    r.add_get("/sessions/{key}", session_page)
    r.add_get("/sessions/{key}/transcript", transcript_piece)
    r.add_get("/devices", devices_page)
    r.add_get("/history", history_page)
