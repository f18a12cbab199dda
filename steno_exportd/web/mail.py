"""Sessions by email from the web page (form and API), the outbox and the schedules as JSON."""
from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from steno_exportd.errors import InvalidArgument
from steno_exportd.web.context import CTX, WebContext

MAX_RECIPIENTS_TEXT = 16_000        # the form's address field (50 addresses of at most 320 characters)


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
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise InvalidArgument("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    unknown = sorted(set(body) - {"recipients", "formats", "template"})
    if unknown:
        raise InvalidArgument(f"unknown keys {unknown[:10]}; valid: formats, recipients, template")
    template = body.get("template") or None
    if template is not None and not isinstance(template, str):
        raise InvalidArgument("template: a string")
    entry = await ctx.core.email_sessions([request.match_info["key"]], _strings(body.get("formats", []), "formats"),
                                          _strings(body.get("recipients"), "recipients"), template)
    return web.json_response(outbox_json(entry), status=202)


async def email_form(request: web.Request) -> web.Response:
    """The session page's "Send by email" form: addresses one per line (or separated by commas)."""
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    form = await request.post()
    text = str(form.get("recipients", ""))
    if len(text) > MAX_RECIPIENTS_TEXT:
        raise InvalidArgument(f"too many addresses ({len(text):,} characters; at most {MAX_RECIPIENTS_TEXT:,})")
    recipients = [a.strip() for a in re.split(r"[\n,;]", text) if a.strip()]
    formats = [str(f) for f in form.getall("formats", [])]
    await ctx.core.email_sessions([s.id], formats, recipients)
    raise web.HTTPSeeOther(f"/sessions/{s.id}#email")


async def outbox(request: web.Request) -> web.Response:
    return web.json_response([outbox_json(e) for e in request.app[CTX].core.outbox.list()])


async def schedules(request: web.Request) -> web.Response:
    return web.json_response([schedule_json(s) for s in request.app[CTX].core.schedules.list()])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/sessions/{key}/email", email_api)
    r.add_post("/sessions/{key}/email", email_form)
    r.add_get("/api/v1/outbox", outbox)
    r.add_get("/api/v1/schedules", schedules)
