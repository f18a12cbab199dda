"""Pairing a browser with the touchscreen's one-time code, the logged-in browsers (revoke one by one) and the web
password set from a logged-in browser. The codes, logins and password live in the core's access store."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from steno_exportd.errors import Throttled
from steno_exportd.web import auth
from steno_exportd.web.context import CTX, KEY, REFUSALS, SID, WebContext, bounded, client_addr, read_form
from steno_exportd.web.login import guess, refused, safe_next

log = logging.getLogger(__name__)


async def pair_page(request: web.Request) -> web.Response:
    """The pairing screen (a QR code from the touchscreen opens it with the code filled in)."""
    ctx: WebContext = request.app[CTX]
    if ctx.cfg.http.auth.mode != "password":
        raise web.HTTPFound("/")
    code = request.query.get("code", "")[:32]
    return ctx.render_page(request, "login.html", next=safe_next(request.query.get("next", "/")), error="",
                           code="".join(c for c in code if c.isascii() and (c.isdigit() or c == "-")))


async def pair(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    if ctx.cfg.http.auth.mode != "password":
        raise web.HTTPFound("/")
    form = await read_form(request)
    nxt = safe_next(str(form.get("next", "/")))
    addr = client_addr(request)
    try:
        found = await ctx.core.pair_browser(str(form.get("code", ""))[:64], addr,
                                            request.headers.get("User-Agent", ""))
    except Throttled as e:
        return refused(request, ctx, nxt, e)
    if found is None:
        request.app[REFUSALS].note(addr, "wrong or expired pairing code", level=logging.WARNING)
        return ctx.render_page(request, "login.html", status=401, next=nxt, code="",
                               error="That code is wrong, used or expired. Ask the touchscreen for a new one.")
    _, token = found
    hours = ctx.cfg.http.auth.session_hours
    resp = web.HTTPSeeOther(nxt)
    resp.set_cookie(auth.COOKIE, token, httponly=True, samesite="Strict", max_age=int(hours * 3600), path="/",
                    secure=ctx.tls)
    raise resp


async def browsers_page(request: web.Request) -> web.Response:
    return await _browsers(request, request.app[CTX], 200, "")


async def revoke(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    login_id = bounded(request.match_info["id"], "browser", 64, KEY)
    gone = await ctx.core.revoke_browser(login_id)
    log.info("%s revoked the browser %s (%s, %s)", client_addr(request), gone.id, gone.kind, gone.addr)
    raise web.HTTPSeeOther("/login" if gone.id == request.get(SID) else "/browsers")


async def set_password(request: web.Request) -> web.Response:
    """A new web password; changing one needs the current one (a copied cookie must not become the password)."""
    ctx: WebContext = request.app[CTX]
    form = await read_form(request)
    pw, again = str(form.get("password", ""))[:2048], str(form.get("again", ""))[:2048]
    stored = "" if ctx.cfg.http.auth.password_hash else ctx.access.password_hash()   # the config's: core refuses
    if stored:
        addr, current = client_addr(request), str(form.get("current", ""))
        try:
            ok = bool(current) and await guess(ctx, addr, current, stored)
        except Throttled as e:
            wait = int(e.retry_after) + 1
            resp = await _browsers(request, ctx, 429, f"Too many failed attempts. Try again in {wait} seconds.")
            resp.headers["Retry-After"] = str(wait)
            return resp
        if not ok:
            request.app[REFUSALS].note(addr, "wrong current password (password change)", level=logging.WARNING)
            return await _browsers(request, ctx, 403, "The current password is wrong; the password is unchanged. "
                                                      "Forgot it? Set a new one on the recorder's touchscreen.")
    if pw != again:
        return await _browsers(request, ctx, 400, "The two passwords differ.")
    await ctx.core.set_web_password(pw)
    log.info("%s set the web password", client_addr(request))
    raise web.HTTPSeeOther("/browsers")


async def _browsers(request: web.Request, ctx: WebContext, status: int, notice: str) -> web.Response:
    found = await ctx.core.paired_browsers()
    return ctx.render_page(request, "browsers.html", status=status, browsers=found, me=request.get(SID, ""),
                           notice=notice, config_password=bool(ctx.cfg.http.auth.password_hash))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/pair", pair_page)
    r.add_post("/pair", pair)
    r.add_get("/browsers", browsers_page)
    r.add_post("/browsers/{id}/revoke", revoke)
    r.add_post("/password", set_password)
