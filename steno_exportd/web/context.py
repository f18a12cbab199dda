"""What every handler shares: the WebContext, request keys and helpers, the session query, JSON shapes."""
from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from aiohttp import web

from steno_exportd import search
from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.web import auth
from steno_exportd.web.cache import RenderCache
from steno_exportd.web.store import Store

CTX = web.AppKey("ctx", object)
SID = web.RequestKey("sid", str)
CSRF = web.RequestKey("csrf", str)
PKG = Path(__file__).parent
PER_PAGE = 50
MAX_PER_PAGE = 200
SEARCH_PER_PAGE = 20
SORTS = {"date": lambda s: (s.start_time or dt.datetime.min.replace(tzinfo=dt.timezone.utc)),
         "title": lambda s: (s.title or "").casefold(),
         "duration": lambda s: s.duration_seconds or 0}


class WebContext:
    """What the handlers share: the core, the signer, the stores and a cached session listing."""

    def __init__(self, core: Any) -> None:
        import jinja2

        self.core = core
        cfg = core.cfg
        state = Path(cfg.state.dir)
        self.signer = auth.Signer(auth.load_secret(str(state)))
        self.limiter = auth.LoginLimiter(cfg.http.auth.max_failed_logins, cfg.http.auth.lockout_seconds)
        self.networks = auth.Networks(cfg.http.auth.allowed_networks)
        self.store = Store(state / "web.db")
        self.cache = RenderCache(state / "cache" / "render", cfg.http.cache_max_mb * 1024 * 1024)
        from steno_exportd.engine.hashcache import HashCache
        self.hashes = HashCache(state / "cache" / "hashes.db")
        self.jinja = jinja2.Environment(loader=jinja2.FileSystemLoader(str(PKG / "templates")),
                                        autoescape=True, trim_blocks=True, lstrip_blocks=True)
        self._listing: tuple[Any, list] = (None, [])
        self.streams: set[web.StreamResponse] = set()

    @property
    def cfg(self) -> Any:
        return self.core.cfg

    async def sessions(self) -> list:
        """Every session summary, newest first; re-read only when the database changed."""
        lib = self.core.library

        def work() -> tuple[Any, list]:
            version = lib.data_version()
            if self._listing[0] == version:
                return self._listing
            return version, lib.list_sessions()
        self._listing = await asyncio.to_thread(work)
        return self._listing[1]

    async def session(self, key: str) -> Any:
        k: int | str = int(key) if key.isdigit() else key
        if not key or len(key) > 64:
            raise NotFoundError(f"no session {key!r}")
        return await asyncio.to_thread(self.core.library.get_session, k)

    def render_page(self, request: web.Request, name: str, status: int = 200, **kw: Any) -> web.Response:
        kw.setdefault("csrf", request.get(CSRF, ""))
        kw.setdefault("auth_mode", self.cfg.http.auth.mode)
        kw.setdefault("logged_in", bool(request.get(SID)) and self.cfg.http.auth.mode == "password")
        html = self.jinja.get_template(name).render(**kw)
        return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


def client_addr(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else ""


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/")


# ---- the session listing (the meetings page and GET /api/v1/sessions) --------------------

def _date(value: str, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def _int(value: str, name: str, default: int, lo: int, hi: int) -> int:
    if value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not a number") from None
    if not lo <= n <= hi:
        raise InvalidArgument(f"{name}: {n} is out of range {lo}..{hi}")
    return n


async def query_sessions(ctx: WebContext, q: Any) -> dict:
    """Search (text, participant, dates), sort and page the session list; bad parameters are 400."""
    text = q.get("q", "").strip()[:200].casefold()
    who = q.get("participant", "").strip()[:200]
    since, until = _date(q.get("from", ""), "from"), _date(q.get("to", ""), "to")
    sort = q.get("sort", "date")
    if sort not in SORTS:
        raise InvalidArgument(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
    order = q.get("order", "desc" if sort in ("date", "duration") else "asc")
    if order not in ("asc", "desc"):
        raise InvalidArgument("order: asc or desc")
    per_page = _int(q.get("per_page", ""), "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    page = _int(q.get("page", ""), "page", 1, 1, 10 ** 6)
    items = await ctx.sessions()
    if text:
        items = [s for s in items if text in (s.title or "").casefold() or text in (s.location or "").casefold()
                 or text == s.short_id or any(text in t.casefold() for t in s.tags)]
    if who:
        ids = await asyncio.to_thread(ctx.core.library.sessions_with_participant, who)
        items = [s for s in items if s.id in ids]
    if since or until:
        def day(s: Any) -> dt.date | None:
            return s.start_time.astimezone().date() if s.start_time else None
        items = [s for s in items if day(s) and (not since or day(s) >= since) and (not until or day(s) <= until)]
    items = sorted(items, key=SORTS[sort], reverse=order == "desc")
    total = len(items)
    pages = max(1, -(-total // per_page))
    page = min(page, pages)          # past the end (a stale link after sessions went): the last page
    start = (page - 1) * per_page
    return {"items": items[start:start + per_page], "total": total, "page": page, "pages": pages,
            "per_page": per_page, "sort": sort, "order": order,
            "query": {"q": q.get("q", ""), "participant": who, "from": q.get("from", ""), "to": q.get("to", "")}}


async def search_sessions(ctx: WebContext, q: Any) -> search.SearchResults:
    """Words said in the meetings (``q``), ``limit`` sessions from ``offset``; bad parameters are 400."""
    limit = _int(q.get("limit", ""), "limit", SEARCH_PER_PAGE, 1, search.MAX_LIMIT)
    offset = _int(q.get("offset", ""), "offset", 0, 0, search.MAX_OFFSET)
    return await ctx.core.search(q.get("q", ""), limit, offset)


# ---- JSON shapes (the API, the SSE stream and the pages' initial state) --------------------

def summary_json(s: Any) -> dict:
    return {"id": s.id, "uuid": s.uuid, "short_id": s.short_id, "title": s.title, "status": s.status,
            "start_time": s.start_time.isoformat() if s.start_time else None,
            "duration_seconds": s.duration_seconds, "location": s.location,
            "participant_count": s.participant_count, "tags": list(s.tags), "exportable": s.exportable,
            "problems": [f"{p.field}: {p.reason}" for p in s.problems]}


def session_json(s: Any) -> dict:
    out = summary_json(s.summary)
    out.update({
        "description": s.description, "summary": s.summary_text, "topics": list(s.topics),
        "participants": [{"speaker_id": p.speaker_id, "name": p.name, "speaking_seconds": p.speaking_seconds,
                          "speaking_percentage": p.speaking_percentage, "words": p.word_count}
                         for p in s.participants],
        "action_items": [{"text": a.text, "owner": a.owner, "due": a.due.isoformat() if a.due else None,
                          "done": a.done} for a in s.action_items],
        "segments": [{"start": g.start, "end": g.end, "speaker": g.speaker_name, "text": g.text,
                      "confidence": g.confidence} for g in s.segments],
        "audio": {"url": f"/sessions/{s.id}/audio", "size": s.audio.size} if s.audio else None,
        "problems": [f"{p.field}: {p.reason}" for p in s.problems],
    })
    return out


def job_json(j: Any) -> dict:
    return {"id": j.id, "operation": j.operation, "target": j.target, "state": str(j.state),
            "progress": round(j.progress, 4), "bytes_done": j.bytes_done, "bytes_total": j.bytes_total,
            "files_done": j.files_done, "files_total": j.files_total, "rate": j.rate,
            "expected_end": j.expected_end, "current_file": j.current_file, "error": j.error,
            "sessions": list(j.sessions), "formats": list(j.formats), "device_id": j.device_id,
            "created": j.created, "finished": j.finished,
            "results": [{"session_id": r.session_id, "title": r.title, "ok": r.ok, "skipped": r.skipped,
                         "status": str(r.status), "warnings": list(r.warnings), "error": r.error} for r in j.results]}


def device_json(d: Any) -> dict:
    return {"id": d.id, "label": d.label, "uuid": d.uuid, "fs_type": d.fs_type, "size": d.size, "free": d.free,
            "mount_point": d.mount_point, "state": str(d.state), "error": d.error, "skip_reason": d.skip_reason}
