"""Login and logout (password mode); the signer, limiter and networks are in auth.py."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time

from aiohttp import web

from steno_exportd.web import auth
from steno_exportd.web.context import CTX, WebContext, client_addr

log = logging.getLogger(__name__)


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


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
