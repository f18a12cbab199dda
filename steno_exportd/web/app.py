"""The aiohttp application: factory, middlewares (networks, auth, CSRF, errors, headers), serve()."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from typing import Any, AsyncIterator

from aiohttp import web

from steno_exportd.errors import InvalidArgument, NotFoundError, StenoError
from steno_exportd.web import api, auth, downloads, links, login, mail, pages
from steno_exportd.web.context import CSRF, CTX, PKG, SID, WebContext, client_addr, wants_json

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PUBLIC_PREFIXES = ("/login", "/static/", "/s/")


async def security_headers(request: web.Request, resp: web.StreamResponse) -> None:
    """on_response_prepare: every answer (pages, files, streams, errors) carries the headers."""
    _headers(resp)


def _headers(resp: web.StreamResponse) -> None:
    h = resp.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    if resp.content_type == "text/html":
        h.setdefault("Cache-Control", "no-store")


def _error_response(request: web.Request, status: int, message: str) -> web.Response:
    ctx: WebContext = request.app[CTX]
    if wants_json(request):
        resp = web.json_response({"error": message, "status": status}, status=status)
    else:
        resp = ctx.render_page(request, "error.html", status=status, status_code=status, message=message)
    return resp


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Core errors become clear 4xx/5xx answers (JSON under /api/, a page elsewhere)."""
    try:
        return await handler(request)
    except NotFoundError as e:
        return _error_response(request, 404, str(e))
    except InvalidArgument as e:
        return _error_response(request, 400, str(e))
    except web.HTTPException as e:
        if e.status >= 400 and e.text and not e.text.startswith(f"{e.status}:") and e.content_type == "text/plain":
            return _error_response(request, e.status, e.text)
        if e.status in (404, 405, 413):
            return _error_response(request, e.status, e.reason if e.status != 413 else
                                   "request body too large")
        raise
    except StenoError as e:
        return _error_response(request, 409, str(e))
    except (ConnectionError, asyncio.CancelledError):     # a client that left is not an error of ours
        raise
    except Exception:  # noqa: BLE001 - the error boundary of one request
        log.exception("%s %s failed", request.method, request.path)
        return _error_response(request, 500, "internal error; the daemon log has the details")


@web.middleware
async def access(request: web.Request, handler: Any) -> web.StreamResponse:
    """allowed_networks, login (password mode) and CSRF on every state-changing request."""
    ctx: WebContext = request.app[CTX]
    addr = client_addr(request)
    if not ctx.networks.allowed(addr):
        log.info("refused %s %s from %s (not in http.auth.allowed_networks)", request.method, request.path, addr)
        return _error_response(request, 403, f"your address {addr} is not allowed to use this recorder")
    mode = ctx.cfg.http.auth.mode
    sid = ""
    if mode == "password":
        payload = ctx.signer.unsign(request.cookies.get(auth.COOKIE, ""))
        sid = payload.get("sid", "") if payload else ""
        public = request.path.startswith(PUBLIC_PREFIXES)
        if not sid and not public:
            if wants_json(request) or request.method != "GET":
                return _error_response(request, 401, "log in first")
            raise web.HTTPFound(f"/login?next={_quote(request.path_qs)}")
    csrf_seed = request.cookies.get(auth.CSRF_COOKIE, "")
    new_seed = ""
    if not csrf_seed or len(csrf_seed) > 64:
        csrf_seed = new_seed = secrets.token_urlsafe(16)
    request[SID] = sid
    request[CSRF] = ctx.signer.csrf_for(sid or csrf_seed)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.headers.get("X-CSRF-Token", "")
        if not sent and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            sent = str((await request.post()).get("csrf", ""))
        if not secrets.compare_digest(sent, request[CSRF]):
            return _error_response(request, 403, "missing or stale form token (CSRF); reload the page and retry")
    resp = await handler(request)
    if new_seed and not resp.prepared:
        resp.set_cookie(auth.CSRF_COOKIE, new_seed, httponly=True, samesite="Strict", path="/")
    return resp


def _quote(s: str) -> str:
    from urllib.parse import quote
    return quote(s, safe="")


def make_app(core: Any) -> web.Application:
    """The application; resources live in cleanup_ctx so they close with the app."""
    cfg = core.cfg
    app = web.Application(middlewares=[errors, access],
                          client_max_size=cfg.http.max_body_kb * 1024)

    async def context(app: web.Application) -> AsyncIterator[None]:
        ctx = await asyncio.to_thread(WebContext, core)
        app[CTX] = ctx
        yield
        for resp in list(ctx.streams):
            with contextlib.suppress(Exception):
                resp.force_close()
        ctx.store.close()
        ctx.hashes.close()

    app.cleanup_ctx.append(context)
    app.on_response_prepare.append(security_headers)

    async def close_streams(app: web.Application) -> None:
        ctx: WebContext = app[CTX]
        for task in [getattr(r, "_steno_task", None) for r in list(ctx.streams)]:
            if task is not None:
                task.cancel()

    app.on_shutdown.append(close_streams)
    for module in (pages, downloads, links, login, api, mail):
        module.add_routes(app)
    app.router.add_static("/static/", PKG / "static", append_version=False)
    return app


def public_url(cfg: Any, bound: list[str]) -> str:
    if cfg.http.public_url:
        return cfg.http.public_url
    host = bound[0] if bound else "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = f"{socket.gethostname()}.local"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.http.port}"


def _answer_431_for_oversized_headers(server: Any) -> None:
    """aiohttp answers 400 to header lines over its limits; RFC 6585 says 431."""
    from aiohttp.http_exceptions import LineTooLong
    from aiohttp.web_protocol import RequestHandler

    class Handler(RequestHandler):
        def handle_error(self, request: Any, status: int = 500, exc: Any = None, message: Any = None) -> Any:
            if isinstance(exc, LineTooLong) or (exc is not None and "too many headers" in str(exc).lower()):
                status = 431
            return super().handle_error(request, status, exc, message)

    class Server(type(server)):  # type: ignore[misc]
        def __call__(self) -> Any:
            return Handler(self, loop=self._loop, **self._kwargs)

    server.__class__ = Server


@contextlib.asynccontextmanager
async def serve(core: Any) -> AsyncIterator[str]:
    """Run the web page for the daemon: yields its URL; a port in use is a clear StenoError."""
    started = time.monotonic()
    app = make_app(core)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    _answer_431_for_oversized_headers(runner.server)
    try:
        for host in core.cfg.http.bind:
            site = web.TCPSite(runner, host, core.cfg.http.port, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                raise StenoError(f"web page: cannot listen on {host}:{core.cfg.http.port}: {e.strerror or e} "
                                 f"(another program uses the port? set http.port)") from None
        url = public_url(core.cfg, list(core.cfg.http.bind))
        log.info("web page listening on %s (%d ms)", url, (time.monotonic() - started) * 1000)
        yield url
    finally:
        await runner.cleanup()

