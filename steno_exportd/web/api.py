"""JSON API under /api/v1/ (described by /api/v1/openapi.json) and the live event stream (SSE)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any

from aiohttp import web

from steno_exportd import events as ev
from steno_exportd.errors import InvalidArgument, NotFoundError, StenoError
from steno_exportd.search import SearchHit, SearchResults
from steno_exportd.web.context import (CTX, WebContext, device_json, job_json, query_sessions, search_sessions,
                                       session_json, summary_json)
from steno_exportd.web.links import new_link

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0


async def _body(request: web.Request) -> dict:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise InvalidArgument("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return data


async def list_sessions(request: web.Request) -> web.Response:
    res = await query_sessions(request.app[CTX], request.query)
    return web.json_response({**{k: v for k, v in res.items() if k != "items"},
                              "items": [summary_json(s) for s in res["items"]]})


async def search(request: web.Request) -> web.Response:
    """Words said (and titles, summaries, action items, places, tags, people): ?q=&limit=&offset=."""
    return web.json_response(search_json(await search_sessions(request.app[CTX], request.query)))


def search_json(r: SearchResults) -> dict:
    """Each hit's snippet is plain text; ``marks`` are the matched [start, end) character ranges in it."""
    def hit(sid: int, h: SearchHit) -> dict:
        return {"kind": h.kind, "snippet": h.snippet, "marks": [list(m) for m in h.marks], "seconds": h.seconds,
                "speaker": h.speaker, "url": f"/sessions/{sid}" + (f"#t={h.seconds:.3f}" if h.seconds is not None else "")}
    return {"query": r.query, "total": r.total, "offset": r.offset, "limit": r.limit, "indexed": r.indexed,
            "pending": r.pending, "broad": r.broad,
            "items": [{"id": m.session_id, "uuid": m.uuid, "title": m.title,
                       "start_time": m.start_time.isoformat() if m.start_time else None, "matches": m.hit_count,
                       "url": f"/sessions/{m.session_id}", "hits": [hit(m.session_id, h) for h in m.hits]}
                      for m in r.sessions]}


async def get_session(request: web.Request) -> web.Response:
    s = await request.app[CTX].session(request.match_info["key"])
    return web.json_response(session_json(s))


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
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise NotFoundError(f"no job {raw!r}")
    return int(raw)


async def cancel_job(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    job_id = _job_id(request)
    ctx.core.jobs.get(job_id)
    res = ctx.core.jobs.cancel(job_id)
    if asyncio.iscoroutine(res):
        await res
    return web.json_response(job_json(ctx.core.jobs.get(job_id)))


async def eject(request: web.Request) -> web.Response:
    job = await request.app[CTX].core.eject(request.match_info["id"])
    return web.json_response(job_json(job), status=202)


async def start_export(request: web.Request) -> web.Response:
    """{"sessions": [ids] | "new" | "all", "formats": [...], "device": id | "target": dir, "options": {...}}."""
    from steno_exportd.engine.options import ExportOptions

    ctx: WebContext = request.app[CTX]
    body = await _body(request)
    sessions = body.get("sessions")
    if not (sessions in ("new", "all") or (isinstance(sessions, list) and sessions
                                            and all(isinstance(x, (int, str)) for x in sessions))):
        raise InvalidArgument('sessions: a non-empty list of ids, or "new" or "all"')
    formats = body.get("formats") or []       # none: the core's default (a remote's own formats for smb:)
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise InvalidArgument("formats: a list of format names")
    opts = body.get("options") or {}
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    if not isinstance(opts, dict) or set(opts) - fields:
        raise InvalidArgument(f"options: unknown keys {sorted(set(opts) - fields)}; valid: {sorted(fields)}")
    if "device" in body:
        dev = ctx.core.devices.get(str(body["device"]))
        if not dev.mount_point:
            raise StenoError(f"the stick {dev.label or dev.id} is not mounted (state: {dev.state})")
        target = dev.mount_point
        opts = {"target_name": dev.label or dev.id, "device_id": dev.id, **opts}
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
    rows = await asyncio.to_thread(request.app[CTX].core.state.history, request.query.get("session") or None, 500)
    return web.json_response(rows)


async def create_link(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    body = await _body(request)
    pin = body.get("pin") or ""
    if not isinstance(pin, str):
        raise InvalidArgument("pin: a string of 4 to 12 digits")
    return web.json_response(await new_link(ctx, s.id, body.get("hours", ""), body.get("max_downloads", ""), pin),
                             status=201)


async def session_links(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return web.json_response([x.public() for x in await asyncio.to_thread(ctx.store.links, s.id)])


async def revoke_link(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    return web.json_response((await asyncio.to_thread(ctx.store.revoke, request.match_info["token"])).public())


async def audit_log(request: web.Request) -> web.Response:
    ctx: WebContext = request.app[CTX]
    s = await ctx.session(request.match_info["key"])
    return web.json_response(await asyncio.to_thread(ctx.store.audit_log, s.id))


async def status(request: web.Request) -> web.Response:
    core = request.app[CTX].core
    return web.json_response({"status": core.status_text(), "auto_export": core.auto_export,
                              "samba_enabled": core.sharing_enabled,
                              "samba_state": getattr(core, "samba_state", "off")})


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
    agen = ctx.core.events.subscribe()
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
    def op(summary: str, params: tuple = (), body: str = "", ok: str = "200") -> dict:
        d: dict = {"summary": summary, "responses": {ok: {"description": "OK"},
                                                     "4XX": {"description": "error: {\"error\": message}"}}}
        if params:
            d["parameters"] = [{"name": n, "in": where, "required": where == "path", "schema": {"type": t}}
                               for n, where, t in params]
        if body:
            d["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": body}}}}
        return d
    key = ("key", "path", "string")
    listq = tuple((n, "query", t) for n, t in (("q", "string"), ("participant", "string"), ("from", "string"),
                                                ("to", "string"), ("sort", "string"), ("order", "string"),
                                                ("page", "integer"), ("per_page", "integer")))
    return {
        "openapi": "3.0.3",
        "info": {"title": "steno-exportd", "version": version,
                 "description": "The Silent Steno export daemon. State-changing requests need the X-CSRF-Token "
                                "header (the token is in the page's <meta name=csrf>)."},
        "paths": {
            "/api/v1/status": {"get": op("daemon status")},
            "/api/v1/sessions": {"get": op("search, sort and page sessions", listq)},
            "/api/v1/search": {"get": op("sessions whose words match q (what was said, summaries, action items, "
                                         "titles, places, tags, people), best first",
                                         (("q", "query", "string"), ("limit", "query", "integer"),
                                          ("offset", "query", "integer")))},
            "/api/v1/sessions/{key}": {"get": op("one session (id, uuid or short id)", (key,))},
            "/api/v1/sessions/{key}/share-links": {
                "get": op("share links of a session", (key,)),
                "post": op("make a share link", (key,), "#/components/schemas/ShareLinkRequest", "201")},
            "/api/v1/sessions/{key}/audit": {"get": op("download audit log of a session", (key,))},
            "/api/v1/share-links/{token}/revoke": {"post": op("revoke a share link", (("token", "path", "string"),))},
            "/api/v1/formats": {"get": op("formats and templates")},
            "/api/v1/devices": {"get": op("USB sticks")},
            "/api/v1/devices/{id}/eject": {"post": op("eject a stick", (("id", "path", "string"),), ok="202")},
            "/api/v1/jobs": {"get": op("jobs, newest first")},
            "/api/v1/jobs/{id}": {"get": op("one job", (("id", "path", "integer"),))},
            "/api/v1/jobs/{id}/cancel": {"post": op("cancel a job", (("id", "path", "integer"),))},
            "/api/v1/exports": {"post": op("start an export job", (), "#/components/schemas/ExportRequest", "202")},
            "/api/v1/history": {"get": op("export history", (("session", "query", "string"),))},
            "/api/v1/events": {"get": op("live events (text/event-stream): job, device, sessions, status")},
            "/api/v1/sessions/{key}/email": {
                "post": op("mail a session (stored in the outbox, then sent)", (key,),
                           "#/components/schemas/EmailRequest", "202")},
            "/api/v1/outbox": {"get": op("the outbox: queued, sent and failed messages, with the reason")},
            "/api/v1/schedules": {"get": op("scheduled exports with their next and last run")},
            "/api/v1/openapi.json": {"get": op("this document")},
        },
        "components": {"schemas": {
            "ExportRequest": {"type": "object", "required": ["sessions"], "properties": {
                "sessions": {"oneOf": [{"type": "array", "items": {"type": ["integer", "string"]}},
                                       {"type": "string", "enum": ["new", "all"]}]},
                "formats": {"type": "array", "items": {"type": "string"}},
                "device": {"type": "string"},
                "target": {"type": "string", "description": "a folder under export.allowed_dirs, or smb:<remote> "
                                                            "(then formats default to the remote's)"},
                "options": {"type": "object"}}},
            "EmailRequest": {"type": "object", "required": ["recipients"], "properties": {
                "recipients": {"type": "array", "maxItems": 50, "items": {"type": "string", "maxLength": 320}},
                "formats": {"type": "array", "items": {"type": "string"},
                            "description": "empty: export.formats"},
                "template": {"type": "string"}}},
            "ShareLinkRequest": {"type": "object", "properties": {
                "hours": {"type": "number"}, "max_downloads": {"type": "integer"},
                "pin": {"type": "string", "pattern": "^[0-9]{4,12}$"}}},
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
