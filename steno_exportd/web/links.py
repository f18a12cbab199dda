"""Share links: making (page form and API) and revoking them, the guest's share page, its PIN, its downloads.

A download takes one of the link's uses before it starts (Range requests too; HEAD takes none), gives it back
when it fails before its first byte, and is written to the audit log with the guest's address."""
from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from typing import Any, NoReturn

from aiohttp import web

from steno_exportd.access import fingerprint, share_url
from steno_exportd.access.store import BY_PAGE, SHARE
from steno_exportd.errors import (InvalidArgument, NotAllowedError, NotFoundError, SessionReplaced, StenoError,
                                  Throttled)
from steno_exportd.web import auth
from steno_exportd.web.context import CTX, LOGIN, REFUSALS, SID, WebContext, bounded, client_addr, read_form
from steno_exportd.web.downloads import download_name, one_of, send_audio, stream_zip
from steno_exportd.web.grants import GRANT, link_grant
from steno_exportd.web.human import fmt_duration, fmt_when

TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def link_maker(request: web.Request) -> tuple[str, str]:
    """(made_by, login_id) of a share link made for this request, also in a mail it asks for: this browser's
    login (its links are revoked with it), or the page when it needs no login (BY_PAGE)."""
    login = request.get(LOGIN)
    return (login.kind, login.id) if login is not None else (BY_PAGE, "")


async def new_link(request: web.Request, s: Any, hours: Any, max_downloads: Any, pin: str) -> dict:
    """A link to session ``s`` (it opens that meeting only), made by this browser's login (it is revoked with that
    login's links), or by the page when it needs no login."""
    ctx: WebContext = request.app[CTX]
    made_by, login_id = link_maker(request)
    try:
        link = await ctx.access.create_link(ctx.cfg, s.id, hours, max_downloads, pin, made_by, login_id, s.uuid)
    except NotAllowedError as e:            # the login ended while the link was being made
        raise web.HTTPUnauthorized(text=str(e)) from None
    return link.public()


async def create_share(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    form = await read_form(request)
    await new_link(request, s, form.get("hours", ""), form.get("max_downloads", ""), str(form.get("pin", "")))
    raise web.HTTPSeeOther(f"/sessions/{s.id}#share")


async def revoke(ctx: WebContext, token: str) -> Any:
    if not TOKEN.fullmatch(token):
        raise NotFoundError("no such share link")
    return await asyncio.to_thread(ctx.store.revoke, token)


async def revoke_share(request: web.Request) -> web.Response:
    link = await revoke(request.app[CTX], request.match_info["token"])
    raise web.HTTPSeeOther(f"/sessions/{link.session_id}#share")


def qr_svg(url: str, label: str) -> str:
    """``url`` as a QR code: an inline SVG (dark on white, 4-module quiet zone) that scales to its box."""
    import segno
    svg = segno.make(url, error="m").svg_inline(dark="#000", light="#fff", svgclass="qr", omitsize=True)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label, quote=True)}" ', 1)


async def link_views(request: web.Request, ctx: WebContext, s: Any) -> list[dict]:
    """The share links of session ``s`` for its page (those made for this meeting: store.links), newest first: full
    URL, uses left, QR code while usable, who made it."""
    me = request.get(SID, "")
    rows = await asyncio.to_thread(ctx.store.links, s.id, s.uuid, began(s))
    out = []
    for link in sorted(rows, key=lambda x: -x.created):
        view = link.public()
        view["full_url"] = share_url(ctx.cfg, link.token, request.headers.get("Host", ""), ctx.tls)
        view["left"] = max(0, link.max_downloads - link.downloads)
        view["made_by_me"] = bool(me) and link.made_by_login == me
        view["qr"] = qr_svg(view["full_url"], "QR code of the share link") if link.state == "active" else ""
        out.append(view)
    return out


def began(s: Any) -> float | None:
    """When session ``s`` (a summary or a whole session) was made, as ShareLink.for_meeting takes it: its row's
    creation, else its start (epoch seconds); None when neither is known."""
    s = getattr(s, "summary", s)
    when = s.created_at or s.start_time
    return when.timestamp() if when is not None else None


def _same_meeting(link: Any, s: Any) -> None:
    """The session id a link names is the meeting it was made for (session ``s``, a summary, is what the id names
    now), or the link is over (410): after the recorder's database was restored from a backup, the next meeting
    recorded takes the id of one made after the backup."""
    if not link.for_meeting(s.uuid, began(s)):
        _replaced()


def _replaced() -> NoReturn:
    raise web.HTTPGone(text="The meeting of this share link is no longer on this recorder. Ask for a new one.")


def _share_cookie(token: str) -> str:
    return auth.SHARE_COOKIE + token


async def _usable_link(request: web.Request, ctx: WebContext) -> Any:
    token = request.match_info["token"]
    try:
        link = await asyncio.to_thread(ctx.store.link, bounded(token, "link", 64, TOKEN))
    except (NotFoundError, InvalidArgument):
        raise web.HTTPNotFound(text="This share link does not exist. Ask for a new one.") from None
    if link.state != "active":
        raise web.HTTPGone(text=f"This share link is {link.state}. Ask for a new one.")
    return link


async def _pin_ok(request: web.Request, ctx: WebContext, link: Any) -> bool:
    """No PIN, or this browser entered it (a login scoped to the link, ended with the link)."""
    if not link.has_pin:
        return True
    value = request.cookies.get(_share_cookie(link.token), "")
    if not value:
        return False
    stored = await asyncio.to_thread(ctx.store.pin_hash, link.token)
    return await asyncio.to_thread(ctx.store.login_for, value, fingerprint(stored), link.token) is not None


async def share_page(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    link = await _usable_link(request, ctx)
    if not await _pin_ok(request, ctx, link):
        return ctx.render_page(request, "share_pin.html", token=link.token, error="")
    s = await ctx.session(str(link.session_id))
    _same_meeting(link, s)
    return ctx.render_page(request, "share.html", s=s, link=link.public(), when=fmt_when, dur=fmt_duration,
                           left=link.max_downloads - link.downloads, expires=link.expires)


async def share_pin(request: web.Request) -> web.Response:
    """One PIN guess: counted by the limiter (per address, network, overall) and by the link (it locks itself
    after http.share_links.max_wrong_pins), both before the PIN is checked."""
    ctx: WebContext = request.app[CTX]
    link = await _usable_link(request, ctx)
    if not link.has_pin:
        raise web.HTTPSeeOther(f"/s/{link.token}")
    addr = client_addr(request)
    try:
        attempt = ctx.access.limiter.acquire(addr)
    except Throttled as e:
        return _pin_refused(request, ctx, link.token, e)
    if not await asyncio.to_thread(ctx.store.reserve_pin_guess, link.token):
        attempt.cancelled()
        raise web.HTTPGone(text="This share link is locked after too many wrong PINs. Ask for a new one.")
    pin = str((await read_form(request)).get("pin", ""))[:32]
    stored = await asyncio.to_thread(ctx.store.pin_hash, link.token)
    try:
        ok = await ctx.access.passwords.verify(pin, stored)
    except BaseException as e:
        attempt.cancelled()
        await asyncio.to_thread(ctx.store.pin_was_right, link.token)    # never checked: not a wrong PIN
        if isinstance(e, Throttled):
            return _pin_refused(request, ctx, link.token, e)
        raise
    if not ok:
        attempt.failed()
        request.app[REFUSALS].note(addr, "wrong PIN for share link %s…", link.token[:6], level=logging.WARNING)
        return ctx.render_page(request, "share_pin.html", status=403, token=link.token, error="Wrong PIN.")
    attempt.succeeded()
    await asyncio.to_thread(ctx.store.pin_was_right, link.token)
    _, value = await asyncio.to_thread(ctx.store.create_login, SHARE, fingerprint(stored),
                                       max(60.0, link.expires - time.time()), addr,
                                       request.headers.get("User-Agent", ""), link.token)
    resp = web.HTTPSeeOther(f"/s/{link.token}")
    resp.set_cookie(_share_cookie(link.token), value, httponly=True, samesite="Strict", path=f"/s/{link.token}",
                    secure=ctx.tls)
    raise resp


def _pin_refused(request: web.Request, ctx: WebContext, token: str, e: Throttled) -> web.Response:
    wait = int(e.retry_after) + 1
    request.app[REFUSALS].note(client_addr(request), "share PIN: %s", str(e))
    resp = ctx.render_page(request, "share_pin.html", status=429, token=token,
                           error=f"Too many wrong PINs. Try again in {wait} seconds.")
    resp.headers["Retry-After"] = str(wait)
    return resp


class ShareUse:
    """One use of a link, taken before a download starts."""

    def __init__(self, ctx: WebContext, token: str, session_id: int, addr: str, what: str) -> None:
        self.ctx, self.token, self.session_id, self.addr, self.what = ctx, token, session_id, addr, what

    async def commit(self, detail: str) -> None:
        await asyncio.to_thread(self.ctx.store.audit, self.session_id, self.addr, self.what + detail,
                                f"share link {self.token[:6]}…")

    async def release(self) -> None:
        await asyncio.to_thread(self.ctx.store.release_use, self.token)


async def share_download(request: web.Request) -> web.StreamResponse:
    ctx: WebContext = request.app[CTX]
    generation = ctx.store.generation
    link = await _usable_link(request, ctx)
    if not await _pin_ok(request, ctx, link):
        raise web.HTTPForbidden(text="Enter the PIN first.")
    request[GRANT] = link_grant(ctx.access, link, generation)     # the link, not a login: cut when it ends
    what = one_of(request.match_info["what"], ("zip", "audio"), "download")
    summary = await ctx.summary(str(link.session_id))
    _same_meeting(link, summary)
    # what is sent is read bound to the meeting's uuid (the link's, or for a link from before uuids the one just
    # checked), never by its id alone: a restore of the recorder's database after that check gave the id to another
    # meeting, whose recording and transcript went out under the link (47 of 160 downloads in a swap loop)
    uuid = link.session_uuid or summary.uuid
    try:
        recording = (await ctx.core.recording(summary.id, uuid))[1] if what == "audio" else None
    except SessionReplaced:
        _replaced()
    use = None
    if request.method != "HEAD":
        if not await asyncio.to_thread(ctx.store.reserve_use, link.token):
            raise web.HTTPGone(text="This share link is used up. Ask for a new one.")
        use = ShareUse(ctx, link.token, summary.id, client_addr(request), what)
    via = f"share link {link.token[:6]}…"
    try:
        if what == "audio":
            return await send_audio(request, ctx, summary, recording, via=via, use=use)
        return await stream_zip(request, ctx, [summary.id], tuple(ctx.cfg.export.formats),
                                download_name(summary, "SilentSteno.zip"), via, use=use, uuids=(uuid,))
    except BaseException as e:
        if use is not None and what == "audio":      # nothing was sent: the use goes back (the ZIP does it itself)
            await use.release()
        if isinstance(e, SessionReplaced):
            _replaced()
        raise


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/sessions/{key}/share", create_share)
    r.add_post("/share/{token}/revoke", revoke_share)
    r.add_get("/s/{token}", share_page)
    r.add_post("/s/{token}", share_pin)
    r.add_get("/s/{token}/{what}", share_download)
