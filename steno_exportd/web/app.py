"""The aiohttp application: factory, middlewares (Host, networks, login, CSRF and Origin, errors, headers),
serve()."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from typing import Any, AsyncIterator

from aiohttp import web

from steno_exportd.engine.identity import reachable_name
from steno_exportd.errors import InvalidArgument, NotFoundError, SessionReplaced, StenoError, Throttled
from steno_exportd.web import api, auth, downloads, links, login, mail, pages, pairing, server, static, tls
from steno_exportd.web.context import (CSRF, CTX, LOGIN, REFUSALS, SID, WebContext, client_addr, read_form,
                                       wants_json)
from steno_exportd.web.grants import GRANT, login_grant

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PUBLIC_PREFIXES = ("/login", "/pair", "/static/", "/s/")
# a share link's token in a path (/s/<token>, /share/<token>/revoke, /api/v1/share-links/<token>/revoke)
_LINK_TOKEN = re.compile(r"(/(?:s|share|share-links)/)([^/]{1,6})[^/]*")


def logged_path(path: str) -> str:
    """A request's path as a log line names it: a share link's token cut to its first 6 characters, as every other
    line names a link (the journal is read by admins the link was never given to), and at most 200 characters."""
    return _LINK_TOKEN.sub(lambda m: m[1] + m[2] + ("…" if len(m[0]) > len(m[1]) + len(m[2]) else ""), path[:200])


async def security_headers(request: web.Request, resp: web.StreamResponse) -> None:
    """on_response_prepare: every answer (pages, files, streams, errors) carries the headers."""
    _headers(resp, shared=request.path.startswith("/static/"))


def _headers(resp: web.StreamResponse, shared: bool) -> None:
    h = resp.headers
    h["Server"] = server.SERVER           # no Python or aiohttp version for a scanner
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on the page's own forms, and
    # Origin is what tells them from a cross-site post; other sites still never see a Referer (share tokens)
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("X-Frame-Options", "DENY")
    if not shared:
        # meetings and their files go to no cache: without this a recording (Last-Modified, no Cache-Control)
        # played from the browser's cache after logout, and a proxy could hand a share link's file on after revoke
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
    except SessionReplaced as e:        # the meeting asked for is gone from under its id (a restore): not "no such"
        return _error_response(request, 410, f"{e}; the recorder's database was replaced since it was looked up")
    except NotFoundError as e:
        return _error_response(request, 404, str(e))
    except InvalidArgument as e:
        return _error_response(request, 400, str(e))
    except Throttled as e:
        resp = _error_response(request, 429, str(e))
        resp.headers["Retry-After"] = str(int(e.retry_after) + 1)
        return resp
    except web.HTTPException as e:
        if e.status >= 400 and e.text and not e.text.startswith(f"{e.status}:") and e.content_type == "text/plain":
            return _error_response(request, e.status, e.text)
        if e.status in (404, 405, 408, 413):
            return _error_response(request, e.status, e.reason if e.status != 413 else "request body too large")
        raise
    except StenoError as e:
        return _error_response(request, 409, str(e))
    except (ConnectionError, asyncio.CancelledError):     # a client that left is not an error of ours
        raise
    except Exception:  # noqa: BLE001 - the error boundary of one request
        log.exception("%s %s failed", request.method, logged_path(request.path))
        return _error_response(request, 500, "internal error; the daemon log has the details")


@web.middleware
async def access(request: web.Request, handler: Any) -> web.StreamResponse:
    """Host, allowed_networks, login (password mode), CSRF token and Origin on every state-changing request."""
    ctx: WebContext = request.app[CTX]
    addr = client_addr(request)
    refusals = request.app[REFUSALS]
    host = request.headers.get("Host", "")
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    local = str(sock[0]) if sock else ""
    try:
        authority = request.url.raw_authority or host
    except ValueError:          # a Host aiohttp's URL cannot hold (it was a 500 and a traceback): no name of ours
        authority = ""
    if not auth.host_allowed(host, ctx.host_names(), local) or \
            not auth.host_allowed(authority, ctx.host_names(), local):
        # DNS rebinding: a page elsewhere reaching this recorder under a name of its own
        refusals.note(addr, "unknown Host %r", host[:80])
        return _error_response(request, 421, "this recorder does not answer to that host name "
                                             "(http.host_names lists further names)")
    if not ctx.networks.allowed(addr):
        refusals.note(addr, "not in http.auth.allowed_networks")
        return _error_response(request, 403, f"your address {addr} is not allowed to use this recorder")
    mode = ctx.cfg.http.auth.mode
    sid = ""
    if mode == "password":
        token = request.cookies.get(auth.COOKIE, "")
        generation = ctx.store.generation
        found = await asyncio.to_thread(ctx.store.login_for, token, ctx.access.login_tags()) if token else None
        sid = found.id if found is not None else ""
        if found is not None:
            request[GRANT] = login_grant(ctx.access, found, token, generation)
            request[LOGIN] = found
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
    if request.method in ("GET", "HEAD") and _from_another_site(request):
        refusals.note(addr, "cross-site %s %s (%s of another site's page)", request.method,
                      logged_path(request.path)[:80],
                      request.headers.get("Sec-Fetch-Dest", "")[:20])
        return _error_response(request, 403, "this request came from another site")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        source = origin if origin is not None else request.headers.get("Referer")
        if source is not None and not auth.same_origin(source, "https" if ctx.tls else "http", host):
            refusals.note(addr, "cross-site %s %s from %r", request.method, logged_path(request.path),
                          source[:80])
            return _error_response(request, 403, "this request came from another site")
        sent = request.headers.get("X-CSRF-Token", "")
        if not sent:
            sent = str((await read_form(request)).get("csrf", ""))
        if not secrets.compare_digest(sent.encode(), request[CSRF].encode()):
            return _error_response(request, 403, "missing or stale form token (CSRF); reload the page and retry")
    resp = await handler(request)
    if new_seed and not resp.prepared:
        resp.set_cookie(auth.CSRF_COOKIE, new_seed, httponly=True, samesite="Strict", path="/", secure=ctx.tls)
    return resp


def _from_another_site(request: web.Request) -> bool:
    """Did another site's page make the browser ask (fetch metadata) for more than to open one of the page's pages
    (an embedded file, a fetch, a link to a download)? With no login (http.auth.mode = "none") no cookie stops it,
    and its downloads were audited as the user's. Share links (/s/) are opened from mails and chats, elsewhere
    by design; clients that send no metadata pass (the Host check still holds)."""
    if request.headers.get("Sec-Fetch-Site") != "cross-site" or request.path.startswith(("/s/", "/static/")):
        return False
    opens_page = request.headers.get("Sec-Fetch-Mode") == "navigate" and \
        request.headers.get("Sec-Fetch-Dest") == "document"
    return not opens_page or request.match_info.handler in downloads.AUDITED


def _quote(s: str) -> str:
    from urllib.parse import quote
    return quote(s, safe="")


def make_app(core: Any, tls_on: bool = False) -> web.Application:
    """The application; resources live in cleanup_ctx so they close with the app."""
    cfg = core.cfg
    app = web.Application(middlewares=[errors, access],
                          client_max_size=cfg.http.max_body_kb * 1024)
    app[REFUSALS] = server.RefusalLog()
    app[server.SERVING] = server.Serving(server.Connections(cfg.http.max_connections, app[REFUSALS],
                                                            cfg.http.idle_timeout), cfg.http.idle_timeout)

    async def context(app: web.Application) -> AsyncIterator[None]:
        ctx = await asyncio.to_thread(WebContext, core)
        ctx.tls = tls_on
        ctx.source_budget = server.source_file_budget(app[server.SERVING].guard.cap)
        app[CTX] = ctx
        app[static.FILES] = ctx.static
        yield
        for resp in list(ctx.streams):
            with contextlib.suppress(Exception):
                resp.force_close()
        making = [m.task for m in ctx.making.values()]      # documents rendered for requests that are gone now
        for task in making:
            task.cancel()
        await asyncio.gather(*making, return_exceptions=True)
        ctx.hashes.close()

    app.cleanup_ctx.append(context)
    app.on_response_prepare.append(security_headers)

    async def close_streams(app: web.Application) -> None:
        ctx: WebContext = app[CTX]
        for task in [getattr(r, "_steno_task", None) for r in list(ctx.streams)]:
            if task is not None:
                task.cancel()

    app.on_shutdown.append(close_streams)
    for module in (pages, downloads, links, login, pairing, api, mail, static):
        module.add_routes(app)
    return app


def listening_url(cfg: Any, bound: list[str], scheme: str = "http") -> str:
    """Where the page listens (not http.public_url: the core puts that first, from the config of the moment)."""
    host = bound[0] if bound else "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = reachable_name()
    elif ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{cfg.http.port}"


@contextlib.asynccontextmanager
async def serve(core: Any) -> AsyncIterator[str]:
    """Run the web page for the daemon: yields where it listens; a port in use is a clear StenoError."""
    started = time.monotonic()
    cfg = core.cfg
    ssl_ctx = await asyncio.to_thread(tls.context, cfg)
    app = make_app(core, tls_on=ssl_ctx is not None)
    guard = app[server.SERVING].guard
    runner = server.Runner(app, tls=ssl_ctx, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        for host in cfg.http.bind:
            try:
                socks = server.listening_sockets(host, cfg.http.port)
            except OSError as e:
                raise StenoError(f"web page: cannot listen on {host}:{cfg.http.port}: {e.strerror or e} "
                                 f"(another program uses the port? set http.port)") from None
            for sock in socks:
                # (no ssl_context: the runner's server makes the handshake, under its connection cap)
                site = web.SockSite(runner, sock, backlog=server.ACCEPT_BATCH)
                await site.start()
                sock.listen(server.LISTEN_QUEUE)
        url = listening_url(cfg, list(cfg.http.bind), "https" if ssl_ctx is not None else "http")
        log.info("web page listening on %s (%d ms; at most %d connections)", url,
                 (time.monotonic() - started) * 1000, guard.cap)
        yield url
    finally:
        await runner.cleanup()
