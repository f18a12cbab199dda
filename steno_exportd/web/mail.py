"""Sessions by email from the web page (form and API), the outbox and the schedules as JSON."""
from __future__ import annotations

import functools
import re
from typing import Any

from aiohttp import web

from steno_exportd.errors import InvalidArgument
from steno_exportd.formats import FORMATS
from steno_exportd.outbox.queue import MAX_SESSIONS
from steno_exportd.web.context import CTX, WebContext, link_key, number, read_form, read_json, session_key
from steno_exportd.web.human import fmt_when
from steno_exportd.web.links import link_maker

MAX_RECIPIENTS_TEXT = 16_000        # the form's address field (50 addresses of at most 320 characters)
OUTBOX_SHOWN = 50                   # messages the selection's mail page lists, newest first


def outbox_json(e: Any) -> dict:
    return {"id": e.id, "kind": e.kind, "subject": e.subject, "state": str(e.state),
            "recipients": list(e.recipients), "delivered": list(e.delivered), "refused": list(e.refused),
            "left_out": list(e.left_out), "sessions": list(e.sessions), "attempts": e.attempts, "size": e.size,
            "error": e.error, "created": e.created, "next_attempt": e.next_attempt, "finished": e.finished}


def schedule_json(s: Any) -> dict:
    return {"name": s.name, "when": s.when, "target": s.target, "sessions": s.sessions, "formats": list(s.formats),
            "next_run": s.next_run, "last_run": s.last_run, "last_result": s.last_result, "catch_up": s.catch_up}


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise InvalidArgument(f"{what}: a list of strings")
    return value


async def email_api(request: web.Request) -> web.Response:
    """POST {"recipients": [...], "formats": [...], "template": "..."}: 202 with the outbox message."""
    ctx: WebContext = request.app[CTX]
    body = await read_json(request)     # (within http.body_timeout; nested too deep is malformed, not a traceback)
    unknown = sorted(set(body) - {"recipients", "formats", "template"})
    if unknown:
        raise InvalidArgument(f"unknown keys {unknown[:10]}; valid: formats, recipients, template")
    template = body.get("template") or None
    if template is not None and not isinstance(template, str):
        raise InvalidArgument("template: a string")
    made_by, login_id = link_maker(request)
    entry = await ctx.core.email_sessions([request.match_info["key"]], _strings(body.get("formats", []), "formats"),
                                          _strings(body.get("recipients"), "recipients"), template,
                                          made_by=made_by, login_id=login_id)
    return web.json_response(outbox_json(entry), status=202)


def _recipients(form: Any) -> list[str]:
    """The form's address field: one address per line (or separated by commas), bounded."""
    text = str(form.get("recipients", ""))
    if len(text) > MAX_RECIPIENTS_TEXT:
        raise InvalidArgument(f"too many addresses ({len(text):,} characters; at most {MAX_RECIPIENTS_TEXT:,})")
    return [a.strip() for a in re.split(r"[\n,;]", text) if a.strip()]


async def email_form(request: web.Request) -> web.Response:
    """The session page's "Send by email" form: addresses one per line (or separated by commas)."""
    ctx: WebContext = request.app[CTX]
    key = session_key(request.match_info["key"])
    form = await read_form(request)
    recipients = _recipients(form)
    formats = [str(f) for f in form.getall("formats", [])] if form else []
    made_by, login_id = link_maker(request)
    # the key as the page names the meeting (its uuid), resolved once by the core: looked up here and then mailed by
    # its number, a restore of the recorder's database in between mailed the meeting that took the number
    await ctx.core.email_sessions([key], formats, recipients, made_by=made_by, login_id=login_id)
    raise web.HTTPSeeOther(f"/sessions/{key}#email")


def _selected(values: list[str]) -> list[int | str]:
    """The meetings ticked on the list page: each key well-formed, at most one message's worth."""
    if len(values) > MAX_SESSIONS:
        raise InvalidArgument(f"{len(values):,} meetings selected; at most {MAX_SESSIONS} go in one message")
    return [session_key(str(v)) for v in values]


async def selection_page(request: web.Request) -> web.Response:
    """GET /email?id=..: the selected meetings with the form that mails them (no JavaScript needed); the outbox."""
    ctx: WebContext = request.app[CTX]
    keys = _selected(request.query.getall("id", []))
    listing = await ctx.core.listing()            # summaries: no transcript is loaded to show a title
    chosen = [listing.by_id[i] for i in dict.fromkeys(listing.resolve(k) for k in keys)]
    sent = None
    if "sent" in request.query:
        entries = {e.id: e for e in ctx.core.outbox.list()}
        sent = entries.get(number(request.query["sent"], "sent"))
    # the form names them as the list did (link_key): by number, a restore before "Send" mailed the meeting that took it
    return ctx.render_page(request, "email.html", chosen=chosen, sent=sent, email_on=ctx.cfg.email.enabled,
                           key=functools.partial(link_key, listing),
                           when=fmt_when, formats=list(FORMATS), default_formats=ctx.cfg.export.formats,
                           mails=list(reversed(ctx.core.outbox.list()))[:OUTBOX_SHOWN])


async def selection_send(request: web.Request) -> web.Response:
    """POST /email: the selected meetings in one message, through the same core call as the session page."""
    ctx: WebContext = request.app[CTX]
    form = await read_form(request)
    keys = _selected(form.getall("id", []) if form else [])
    if not keys:
        raise InvalidArgument("select at least one meeting")
    made_by, login_id = link_maker(request)
    entry = await ctx.core.email_sessions(keys, [str(f) for f in form.getall("formats", [])], _recipients(form),
                                          made_by=made_by, login_id=login_id)
    raise web.HTTPSeeOther(f"/email?sent={entry.id}")


async def outbox_action(request: web.Request) -> web.Response:
    """POST /email/outbox/{id}/retry|cancel: the outbox page's buttons; the core checks the id and the state."""
    core = request.app[CTX].core
    if request.match_info["action"] == "retry":       # composed anew: its new links are this browser's
        made_by, login_id = link_maker(request)
        await core.retry_mail(request.match_info["id"], made_by=made_by, login_id=login_id)
    else:
        await core.cancel_mail(request.match_info["id"])
    raise web.HTTPSeeOther("/email#outbox")


async def outbox(request: web.Request) -> web.Response:
    return web.json_response([outbox_json(e) for e in request.app[CTX].core.outbox.list()])


async def schedules(request: web.Request) -> web.Response:
    return web.json_response([schedule_json(s) for s in request.app[CTX].core.schedules.list()])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/sessions/{key}/email", email_api)
    r.add_post("/sessions/{key}/email", email_form)
    r.add_get("/email", selection_page)
    r.add_post("/email", selection_send)
    r.add_post("/email/outbox/{id}/{action:retry|cancel}", outbox_action)
    r.add_get("/api/v1/outbox", outbox)
    r.add_get("/api/v1/schedules", schedules)
