"""Share links: making (page form and API) and revoking them, the guest's share page, its PIN, its downloads."""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from aiohttp import web

from steno_exportd.errors import InvalidArgument, NotFoundError, StenoError
from steno_exportd.web.context import CTX, WebContext, client_addr
from steno_exportd.web.downloads import download_name, one_of, send_audio, stream_zip
from steno_exportd.web.pages import fmt_duration, fmt_when


async def new_link(ctx: WebContext, session_id: int, hours: Any, max_downloads: Any, pin: str) -> dict:
    sl = ctx.cfg.http.share_links
    if not sl.enabled:
        raise StenoError("share links are turned off (http.share_links.enabled)")
    try:
        h = float(hours) if str(hours).strip() else sl.default_expiry_hours
        m = int(max_downloads) if str(max_downloads).strip() else sl.default_max_downloads
    except (TypeError, ValueError):
        raise InvalidArgument("hours and max_downloads must be numbers") from None
    link = await asyncio.to_thread(ctx.store.create_link, session_id, h, m, pin.strip())
    return link.public()


async def create_share(request: web.Request) -> web.Response:
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
    r.add_post("/sessions/{key}/share", create_share)
    r.add_post("/share/{token}/revoke", revoke_share)
    r.add_get("/s/{token}", share_page)
    r.add_post("/s/{token}", share_pin)
    r.add_get("/s/{token}/{what}", share_download)
