"""JSON API under /api/v1/ (described by /api/v1/openapi.json) and the live event stream (SSE)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import re
from typing import Any

from aiohttp import web

from steno_exportd import events as ev
from steno_exportd.errors import InvalidArgument, StenoError
from steno_exportd.search import MAX_LIMIT, MAX_OFFSET, MAX_QUERY_CHARS, SearchHit, SearchResults
from steno_exportd.web.context import (CTX, MAX_PER_PAGE, WebContext, bounded, client_addr, device_json, job_json,
                                       link_key, number, query_sessions, read_json, search_sessions, session_json,
                                       summary_json)
from steno_exportd.web.links import began, new_link, revoke
from steno_exportd.web.server import SERVING

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
DEVICE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


async def list_sessions(request: web.Request) -> web.Response:
    res = await query_sessions(request.app[CTX], request.query)
    return web.json_response({**{k: v for k, v in res.items() if k not in ("items", "listing")},
                              "items": [summary_json(s) for s in res["items"]]})


async def search(request: web.Request) -> web.Response:
    """Words said (and titles, summaries, action items, places, tags, people): ?q=&limit=&offset=."""
    ctx: WebContext = request.app[CTX]
    res = await search_sessions(ctx, request.query)
    return web.json_response(search_json(res, functools.partial(link_key, await ctx.core.listing())))


def search_json(r: SearchResults, key: Any) -> dict:
    """Each hit's snippet is plain text; ``marks`` are the matched [start, end) character ranges in it. ``key(id,
    uuid)``: what the URLs name a meeting by (link_key, as the search page's links)."""
    def hit(k: str, h: SearchHit) -> dict:
        return {"kind": h.kind, "snippet": h.snippet, "marks": [list(m) for m in h.marks], "seconds": h.seconds,
                "speaker": h.speaker, "url": f"/sessions/{k}" + (f"#t={h.seconds:.3f}" if h.seconds is not None else "")}
    keys = {m.session_id: key(m.session_id, m.uuid) for m in r.sessions}
    return {"query": r.query, "total": r.total, "offset": r.offset, "limit": r.limit, "indexed": r.indexed,
            "pending": r.pending, "broad": r.broad,
            "items": [{"id": m.session_id, "uuid": m.uuid, "title": m.title,
                       "start_time": m.start_time.isoformat() if m.start_time else None, "matches": m.hit_count,
                       "url": f"/sessions/{keys[m.session_id]}", "hits": [hit(keys[m.session_id], h) for h in m.hits]}
                      for m in r.sessions]}


async def get_session(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return web.json_response(session_json(s, await ctx.link_key(s)))       # (its recording's URL: this meeting's)


async def list_formats(request: web.Request) -> web.Response:
    from steno_exportd import render
    return web.json_response({"formats": render.names(), "templates": render.template_names()})


async def list_devices(request: web.Request) -> web.Response:
    return web.json_response([device_json(d) for d in request.app[CTX].core.devices.list()])


async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response([job_json(j) for j in sorted(request.app[CTX].core.jobs.list(), key=lambda j: -j.id)])


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(job_json(request.app[CTX].core.jobs.get(_job_id(request))))


def _job_id(request: web.Request) -> int:
    return number(request.match_info["id"], "job id")


async def cancel_job(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    job_id = _job_id(request)
    ctx.core.jobs.get(job_id)
    res = ctx.core.jobs.cancel(job_id)
    if asyncio.iscoroutine(res):
        await res
    return web.json_response(job_json(ctx.core.jobs.get(job_id)))


async def eject(request: web.Request) -> web.Response:
    job = await request.app[CTX].core.eject(bounded(request.match_info["id"], "device id", 128, DEVICE_ID))
    return web.json_response(job_json(job), status=202)


async def start_export(request: web.Request) -> web.Response:
    """{"sessions": [ids] | "new" | "all", "formats": [...], "device": id | "target": dir, "options": {...}}."""
    from steno_exportd.engine.options import ExportOptions

    ctx: WebContext = request.app[CTX]
    body = await read_json(request)
    sessions = body.get("sessions")
    if not (sessions in ("new", "all") or (isinstance(sessions, list) and sessions
                                            and all(isinstance(x, (int, str)) for x in sessions))):
        raise InvalidArgument('sessions: a non-empty list of ids, or "new" or "all"')
    formats = body.get("formats") or []       # none: the core's default (a remote's own formats for smb:)
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise InvalidArgument("formats: a list of format names")
    opts = body.get("options") or {}
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    if not isinstance(opts, dict):
        raise InvalidArgument(f"options: an object with keys among {sorted(fields)}")
    if set(opts) - fields:
        raise InvalidArgument(f"options: unknown keys {sorted(set(opts) - fields)}; valid: {sorted(fields)}")
    if isinstance(sessions, list) and len(sessions) > 10_000:
        raise InvalidArgument("sessions: at most 10,000 in one export")
    if "device" in body:
        dev = ctx.core.devices.get(bounded(str(body["device"]), "device", 128, DEVICE_ID))
        if not dev.mount_point:
            raise StenoError(f"the stick {dev.label or dev.id} is not mounted (state: {dev.state})")
        target = dev.mount_point
        opts = {"target_name": dev.label or dev.id, **opts, "device_id": dev.id}   # the stick's job, whatever is sent
    elif isinstance(body.get("target"), str) and body["target"]:
        target = body["target"]             # its kind in the core's target registry checks it
    else:
        raise InvalidArgument('give "device" (a stick id from /api/v1/devices) or "target"')
    try:
        options = ExportOptions(**opts)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"options: {e}") from None
    job = await ctx.core.export_sessions(sessions, formats, target, options)
    return web.json_response(job_json(job), status=202)


async def history(request: web.Request) -> web.Response:
    session = bounded(request.query.get("session", ""), "session", 64) or None
    rows = await asyncio.to_thread(request.app[CTX].core.state.history, session, 500)
    return web.json_response(rows)


async def create_link(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    body = await read_json(request)
    pin = body.get("pin") or ""
    if not isinstance(pin, str):
        raise InvalidArgument("pin: a string of digits")
    return web.json_response(await new_link(request, s, body.get("hours", ""), body.get("max_downloads", ""), pin),
                             status=201)


async def session_links(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    mine = await asyncio.to_thread(ctx.store.links, s.id, s.uuid, began(s))   # (made for this meeting only)
    return web.json_response([x.public() for x in mine])


async def revoke_link(request: web.Request) -> web.Response:
    return web.json_response((await revoke(request.app[CTX], request.match_info["token"])).public())


async def audit_log(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return web.json_response(await asyncio.to_thread(ctx.store.audit_log, s.id))


async def status(request: web.Request) -> web.Response:
    core = request.app[CTX].core
    return web.json_response({"status": core.status_text(), "auto_export": core.auto_export,
                              "samba_enabled": core.sharing_enabled,
                              "samba_state": getattr(core, "samba_state", "off"),
                              "remote_folder": core.remote_folder})


def _event_json(e: Any) -> tuple[str, dict] | None:
    if isinstance(e, ev.JobUpdated):
        return "job", job_json(e.job)
    if isinstance(e, ev.JobRemoved):
        return "job_removed", {"id": e.job_id}
    if isinstance(e, ev.DeviceUpdated):
        return "device", device_json(e.device)
    if isinstance(e, ev.DeviceRemoved):
        return "device_removed", {"id": e.device_id}
    if isinstance(e, ev.SessionsChanged):
        return "sessions", {"added": list(e.added), "changed": list(e.changed), "removed": list(e.removed)}
    if isinstance(e, ev.StatusChanged):
        return "status", {"key": e.key, "value": e.value if isinstance(e.value, (str, int, bool)) else str(e.value)}
    return None


async def events_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events fed by the core's event bus; the browser's EventSource reconnects by itself."""
    ctx: WebContext = request.app[CTX]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    ctx.streams.add(resp)
    resp._steno_task = asyncio.current_task()  # type: ignore[attr-defined]
    request.app[SERVING].guard.streams.add(request.protocol)     # may be closed first when connections run out
    agen = ctx.core.events.subscribe()
    watch = ctx.grants.open(request, asyncio.current_task())     # cancelled when its login ends
    try:
        await resp.write(b"retry: 2000\n\n")
        for d in ctx.core.devices.list():
            await resp.write(_sse("device", device_json(d)))
        for j in ctx.core.jobs.list():
            await resp.write(_sse("job", job_json(j)))
        await resp.write(_sse("status", {"key": "samba_enabled", "value": bool(ctx.core.sharing_enabled)}))
        await resp.write(_sse("status", {"key": "samba_state", "value": str(getattr(ctx.core, "samba_state", "off"))}))
        nxt = asyncio.ensure_future(agen.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({nxt}, timeout=KEEPALIVE_SECONDS)
                if not done:
                    await resp.write(b": keepalive\n\n")
                    continue
                e = nxt.result()
                nxt = asyncio.ensure_future(agen.__anext__())
                item = _event_json(e)
                if item:
                    await resp.write(_sse(*item))
        finally:
            nxt.cancel()
    except (ConnectionResetError, asyncio.CancelledError, StopAsyncIteration):
        pass
    finally:
        ctx.grants.close(watch)
        if watch is not None and watch.ended:
            log.info("event stream of %s closed: %s %s", client_addr(request), watch.grant.what, watch.ended)
        ctx.streams.discard(resp)
        with contextlib.suppress(Exception):
            await agen.aclose()
    return resp


def _sse(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def openapi(request: web.Request) -> web.Response:
    from steno_exportd import __version__
    return web.json_response(openapi_document(__version__))


def openapi_document(version: str) -> dict:
    """OpenAPI 3.0.3: every /api/v1 operation with its parameters, bodies and answers (tests/web/test_openapi.py
    checks it with openapi-spec-validator and fuzzes the real daemon from it with Schemathesis)."""
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    arr = lambda item: {"type": "array", "items": item}  # noqa: E731
    text = {"type": "string"}
    opt_text = {"type": "string", "nullable": True}
    num, opt_num, integer = {"type": "number"}, {"type": "number", "nullable": True}, {"type": "integer"}

    def op(summary: str, ok: dict, params: tuple = (), body: str = "", status: str = "200") -> dict:
        d: dict = {"summary": summary, "responses": {
            status: {"description": "OK", "content": {"application/json": {"schema": ok}}},
            "4XX": {"description": "the request cannot be served; the body says why",
                    "content": {"application/json": {"schema": ref("Error")}}}}}
        if params:
            d["parameters"] = [{"name": n, "in": where, "required": where == "path", "schema": sch}
                               for n, where, sch in params]
        if body:
            d["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
        return d
    key = ("key", "path", {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$",
                           "description": "session id (ASCII digits), uuid or short id"})
    job_id = ("id", "path", {"type": "integer", "minimum": 0, "maximum": 10 ** 18 - 1})
    token = ("token", "path", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
    listq = (("q", "query", {"type": "string", "maxLength": 200}),
             ("participant", "query", {"type": "string", "maxLength": 200}),
             ("from", "query", {"type": "string", "format": "date"}),
             ("to", "query", {"type": "string", "format": "date"}),
             ("sort", "query", {"type": "string", "enum": ["date", "title", "duration"]}),
             ("order", "query", {"type": "string", "enum": ["asc", "desc"]}),
             ("page", "query", {"type": "integer", "minimum": 1, "maximum": 10 ** 6}),
             ("per_page", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE}))
    summary = {"type": "object", "required": ["id", "uuid", "short_id", "title", "status", "exportable"],
               "properties": {"id": integer, "uuid": text, "short_id": text, "title": opt_text, "status": text,
                              "start_time": opt_text, "duration_seconds": opt_num, "location": opt_text,
                              "participant_count": {"type": "integer", "nullable": True}, "tags": arr(text),
                              "exportable": {"type": "boolean"}, "problems": arr(text)}}
    session = {"allOf": [ref("SessionSummary"), {"type": "object", "properties": {
        "description": opt_text, "summary": opt_text, "topics": arr(text),
        "participants": arr({"type": "object"}), "action_items": arr({"type": "object"}),
        "segments": arr({"type": "object"}),
        "audio": {"type": "object", "nullable": True, "properties": {"url": text, "size": integer}}}}]}
    job = {"type": "object", "required": ["id", "operation", "state", "progress"], "properties": {
        "id": integer, "operation": text, "target": text, "state": text, "progress": num,
        "bytes_done": integer, "bytes_total": integer, "files_done": integer, "files_total": integer,
        "rate": num, "expected_end": num, "current_file": text, "error": text, "sessions": arr(integer),
        "formats": arr(text), "device_id": text, "created": num, "finished": num,
        "results": arr({"type": "object", "properties": {"session_id": integer, "title": opt_text,
                                                          "ok": {"type": "boolean"}, "skipped": {"type": "boolean"},
                                                          "error": text}})}}
    device = {"type": "object", "required": ["id", "state"], "properties": {
        "id": text, "label": text, "uuid": text, "fs_type": text, "size": integer, "free": integer,
        "mount_point": text, "state": text, "error": text}}
    link = {"type": "object", "required": ["token", "session_id", "state", "url"], "properties": {
        "token": text, "session_id": integer, "created": num, "expires": num, "max_downloads": integer,
        "downloads": integer, "pin": {"type": "boolean"}, "state": text, "url": text,
        "made_by": {"type": "string", "enum": ["device", "page", "password", "pairing", ""],
                    "description": "what made it: the recorder (touchscreen, D-Bus, CLI), the web page without "
                                   "a login, a browser login's kind, or '' (unknown: made by an older version)"},
        "made_by_login": {"type": "string", "description": "the browser login that made it (else '')"},
        "made_by_text": text}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "steno-exportd", "version": version,
                 "description": "The Silent Steno export daemon. State-changing requests need the X-CSRF-Token "
                                "header (the token is in the page's <meta name=csrf>) and, from a browser, an "
                                "Origin of this very page. Logged in (password mode): the steno_session cookie."},
        "paths": {
            "/api/v1/status": {"get": op("daemon status", ref("Status"))},
            "/api/v1/sessions": {"get": op("search, sort and page sessions", ref("SessionPage"), listq)},
            "/api/v1/search": {"get": op("sessions whose words match q (what was said, summaries, action items, "
                                         "titles, places, tags, people), best first", ref("SearchResults"),
                                         (("q", "query", {"type": "string", "maxLength": MAX_QUERY_CHARS}),
                                          ("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
                                          ("offset", "query", {"type": "integer", "minimum": 0,
                                                               "maximum": MAX_OFFSET})))},
            "/api/v1/sessions/{key}": {"get": op("one session (id, uuid or short id)", ref("Session"), (key,))},
            "/api/v1/sessions/{key}/share-links": {
                "get": op("share links of a session", arr(ref("ShareLink")), (key,)),
                "post": op("make a share link", ref("ShareLink"), (key,), "ShareLinkRequest", "201")},
            "/api/v1/sessions/{key}/audit": {"get": op("download audit log of a session", arr(ref("AuditEntry")),
                                                       (key,))},
            "/api/v1/share-links/{token}/revoke": {"post": op("revoke a share link", ref("ShareLink"), (token,))},
            "/api/v1/formats": {"get": op("formats and templates", {"type": "object", "properties": {
                "formats": arr(text), "templates": arr(text)}})},
            "/api/v1/devices": {"get": op("USB sticks", arr(ref("Device")))},
            "/api/v1/devices/{id}/eject": {"post": op("eject a stick", ref("Job"), (
                ("id", "path", {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"}),), status="202")},
            "/api/v1/jobs": {"get": op("jobs, newest first", arr(ref("Job")))},
            "/api/v1/jobs/{id}": {"get": op("one job", ref("Job"), (job_id,))},
            "/api/v1/jobs/{id}/cancel": {"post": op("cancel a job", ref("Job"), (job_id,))},
            "/api/v1/exports": {"post": op("start an export job", ref("Job"), (), "ExportRequest", "202")},
            "/api/v1/history": {"get": op("export history", arr({"type": "object"}),
                                          (("session", "query", {"type": "string", "maxLength": 64}),))},
            "/api/v1/events": {"get": {"summary": "live events: job, device, sessions, status", "responses": {
                "200": {"description": "an endless text/event-stream",
                        "content": {"text/event-stream": {"schema": text}}}}}},
            "/api/v1/sessions/{key}/email": {
                "post": op("mail a session (stored in the outbox, then sent)", {"type": "object"}, (key,),
                           "EmailRequest", "202")},
            "/api/v1/outbox": {"get": op("the outbox: queued, sent and failed messages, with the reason",
                                         arr({"type": "object"}))},
            "/api/v1/schedules": {"get": op("scheduled exports with their next and last run", arr({"type": "object"}))},
            "/api/v1/openapi.json": {"get": op("this document", {"type": "object"})},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": text, "status": integer}},
            "Status": {"type": "object", "properties": {"status": text, "auto_export": {"type": "boolean"},
                                                        "samba_enabled": {"type": "boolean"}, "samba_state": text}},
            "SessionSummary": summary,
            "Session": session,
            "SearchResults": {"type": "object", "required": ["query", "total", "offset", "limit", "items"],
                              "properties": {
                "query": text, "total": integer, "offset": integer, "limit": integer, "indexed": integer,
                "pending": integer, "broad": {"type": "boolean"}, "items": arr({
                    "type": "object", "required": ["id", "uuid", "title", "matches", "url", "hits"], "properties": {
                        "id": integer, "uuid": text, "title": opt_text, "start_time": opt_text, "matches": integer,
                        "url": text, "hits": arr({"type": "object", "properties": {
                            "kind": text, "snippet": text, "marks": arr(arr(integer)), "seconds": opt_num,
                            "speaker": opt_text, "url": text}})}})}},
            "SessionPage": {"type": "object", "required": ["items", "total", "page", "pages"], "properties": {
                "items": arr(ref("SessionSummary")), "total": integer, "page": integer, "pages": integer,
                "per_page": integer, "sort": text, "order": text, "query": {"type": "object"}}},
            "ShareLink": link,
            "AuditEntry": {"type": "object", "properties": {"at": num, "addr": text, "what": text, "via": text}},
            "Job": job,
            "Device": device,
            "ExportRequest": {"type": "object", "required": ["sessions"], "properties": {
                "sessions": {"oneOf": [{"type": "array", "minItems": 1, "maxItems": 10000,
                                        "items": {"oneOf": [integer, {"type": "string", "maxLength": 64}]}},
                                       {"type": "string", "enum": ["new", "all"]}]},
                "formats": arr({"type": "string", "maxLength": 40}),
                "device": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"},
                "target": {"type": "string", "maxLength": 4096,
                           "description": "a folder under export.allowed_dirs, or smb:<remote> (then formats "
                                          "default to the remote's)"},
                "options": {"type": "object"}}},
            "EmailRequest": {"type": "object", "required": ["recipients"], "properties": {
                "recipients": {"type": "array", "maxItems": 50, "items": {"type": "string", "maxLength": 320}},
                "formats": {"type": "array", "items": {"type": "string"},
                            "description": "empty: export.formats"},
                "template": {"type": "string"}}},
            "ShareLinkRequest": {"type": "object", "properties": {
                "hours": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 24 * 366},
                "max_downloads": {"type": "integer", "minimum": 1, "maximum": 1000},
                "pin": {"type": "string", "pattern": "^[0-9]{6,12}$"}}},
        }},
    }


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/status", status)
    r.add_get("/api/v1/sessions", list_sessions)
    r.add_get("/api/v1/search", search)
    r.add_get("/api/v1/sessions/{key}", get_session)
    r.add_get("/api/v1/sessions/{key}/share-links", session_links)
    r.add_post("/api/v1/sessions/{key}/share-links", create_link)
    r.add_get("/api/v1/sessions/{key}/audit", audit_log)
    r.add_post("/api/v1/share-links/{token}/revoke", revoke_link)
    r.add_get("/api/v1/formats", list_formats)
    r.add_get("/api/v1/devices", list_devices)
    r.add_post("/api/v1/devices/{id}/eject", eject)
    r.add_get("/api/v1/jobs", list_jobs)
    r.add_get("/api/v1/jobs/{id}", get_job)
    r.add_post("/api/v1/jobs/{id}/cancel", cancel_job)
    r.add_post("/api/v1/exports", start_export)
    r.add_get("/api/v1/history", history)
    r.add_get("/api/v1/events", events_stream)
    r.add_get("/api/v1/openapi.json", openapi)
