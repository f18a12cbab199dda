"""Login and logout (password mode): server-side logins in the core's access store, guesses through its limiter."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from steno_exportd.errors import Throttled
from steno_exportd.web import auth
from steno_exportd.web.context import CTX, REFUSALS, WebContext, client_addr, read_form

log = logging.getLogger(__name__)


def safe_next(value: str) -> str:
    """A path on this site, or "/" (no controls: browsers drop a tab in "/<tab>/host", leaving "//host")."""
    if (not value.startswith("/") or value.startswith("//") or len(value) > 2000
            or any(c == "\\" or c <= " " or c == "\x7f" for c in value)):
        return "/"
    return value


async def login_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    if ctx.cfg.http.auth.mode != "password":
        raise web.HTTPFound("/")
    return ctx.render_page(request, "login.html", next=safe_next(request.query.get("next", "/")), error="",
                           code="")


async def login(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    if ctx.cfg.http.auth.mode != "password":
        raise web.HTTPFound("/")
    form = await read_form(request)
    nxt = safe_next(str(form.get("next", "/")))
    addr = client_addr(request)
    stored = ctx.access.password_hash()
    if not stored:
        return ctx.render_page(request, "login.html", status=401, next=nxt, code="",
                               error="No web password is set yet: pair this browser with a code from the "
                                     "recorder's touchscreen.")
    try:
        ok = await guess(ctx, addr, str(form.get("password", "")), stored)
    except Throttled as e:
        return refused(request, ctx, nxt, e)
    if not ok:
        request.app[REFUSALS].note(addr, "wrong password", level=logging.WARNING)
        return ctx.render_page(request, "login.html", status=401, next=nxt, error="Wrong password.", code="")
    hours = ctx.cfg.http.auth.session_hours
    _, token = await asyncio.to_thread(ctx.store.create_login, "password", ctx.password_tag(), hours * 3600, addr,
                                       request.headers.get("User-Agent", ""))
    resp = web.HTTPSeeOther(nxt)
    resp.set_cookie(auth.COOKIE, token, httponly=True, samesite="Strict", max_age=int(hours * 3600), path="/",
                    secure=ctx.tls)
    raise resp


async def guess(ctx: WebContext, addr: str, password: str, stored: str) -> bool:
    """One guess at the web password, counted by the limiter before it is checked (concurrent guesses cannot
    race); Throttled when this client must wait or the checker is busy (then the guess was never checked)."""
    attempt = ctx.access.limiter.acquire(addr)
    try:
        ok = await ctx.access.passwords.verify(password[:1024], stored)
    except BaseException:
        attempt.cancelled()
        raise
    if ok:
        attempt.succeeded()
    else:
        attempt.failed()
    return ok


def refused(request: web.Request, ctx: WebContext, nxt: str, e: Throttled) -> web.Response:
    wait = int(e.retry_after) + 1
    request.app[REFUSALS].note(client_addr(request), "login: %s", str(e))
    resp = ctx.render_page(request, "login.html", status=429, next=nxt, code="",
                           error=f"Too many failed attempts. Try again in {wait} seconds."
                           if "failed" in str(e) else f"Busy. Try again in {wait} seconds.")
    resp.headers["Retry-After"] = str(wait)
    return resp


async def logout(request: web.Request) -> web.Response:
    """End this login (the cookie is worthless afterwards, wherever it was copied); "everywhere": every login."""
    ctx: WebContext = request.app[CTX]
    form = await read_form(request)
    token = request.cookies.get(auth.COOKIE, "")
    if str(form.get("everywhere", "")) and ctx.cfg.http.auth.mode == "password":
        n, links = await asyncio.to_thread(ctx.access.log_out_everywhere)
        log.info("%s logged out everywhere: %d logins ended, %d share links made by browsers revoked",
                 client_addr(request), n, links)
    elif token:
        await asyncio.to_thread(ctx.store.end_login, token)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(auth.COOKIE, path="/")
    raise resp


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
