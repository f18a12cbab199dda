"""What every handler shares: the WebContext, request keys and helpers, bounded parameters, the session query,
JSON shapes."""
from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from steno_exportd import safeparse, search
from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.web import auth, human, static
from steno_exportd.web.cache import RenderCache
from steno_exportd.web.grants import OpenStreams
from steno_exportd.web.server import RefusalLog

CTX = web.AppKey("ctx", object)
REFUSALS = web.AppKey("refusals", RefusalLog)      # one rate-limited log line per refused client
SID = web.RequestKey("sid", str)            # the login's id ("" when not logged in)
LOGIN = web.RequestKey("login", object)     # the Login itself (only when logged in)
CSRF = web.RequestKey("csrf", str)
PKG = Path(__file__).parent
PER_PAGE = 50
MAX_PER_PAGE = 200
SEARCH_PER_PAGE = 20
SORTS = {"date": lambda s: (s.start_time or dt.datetime.min.replace(tzinfo=dt.timezone.utc)),
         "title": lambda s: (s.title or "").casefold(),
         "duration": lambda s: s.duration_seconds or 0}
KEY = re.compile(r"[A-Za-z0-9-]{1,64}")     # a uuid or a short id
DIGITS = re.compile(r"[0-9]{1,18}")         # ASCII only: int() also takes other scripts' digits and "1_0"
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class WebContext:
    """What the handlers share: the core, its access store, the CSRF signer, caches and the open streams."""

    def __init__(self, core: Any) -> None:
        import jinja2

        self.core = core
        cfg = core.cfg
        state = Path(cfg.state.dir)
        self.access = core.access
        self.signer = auth.Signer(auth.load_secret(str(state)))
        self.networks = auth.Networks(cfg.http.auth.allowed_networks)
        self.cache = RenderCache(state / "cache" / "render", cfg.http.cache_max_mb * 1024 * 1024)
        self.making: dict = {}      # cache key -> the one render of it under way (downloads.Making)
        self.rendering: dict = {}   # client -> [(cache key, request)] of the documents being made for it now
        from steno_exportd.engine.hashcache import HashCache
        self.hashes = HashCache(state / "cache" / "hashes.db", cfg.retention.hash_cache_entries)
        self.static = static.load(PKG / "static")   # the page's script and style sheet, in memory
        self.jinja = jinja2.Environment(loader=jinja2.FileSystemLoader(str(PKG / "templates")),
                                        autoescape=True, trim_blocks=True, lstrip_blocks=True)
        self.jinja.filters.update(when=human.when, size=human.size)
        self._names: tuple[Any, frozenset[str]] = (None, frozenset())
        self.streams: set[web.StreamResponse] = set()
        self.grants = OpenStreams(self.access.store)    # streams cut when the link or login they need ends
        self.tls = False
        self.source_files = 0               # recordings held open by ZIP downloads now ...
        self.source_budget = 64             # ... and at most (set by make_app from the open-file limit)

    @property
    def cfg(self) -> Any:
        return self.core.cfg

    @property
    def store(self) -> Any:
        return self.access.store

    def host_names(self) -> frozenset[str]:
        """auth.host_names for the config in force (recomputed after a reload)."""
        if self._names[0] is not self.cfg:
            self._names = (self.cfg, auth.host_names(self.cfg))
        return self._names[1]

    def password_tag(self) -> str:
        """Logins made under another password hash are over."""
        from steno_exportd.access import fingerprint
        return fingerprint(self.access.password_hash())

    async def sessions(self) -> list:
        """Every session summary, newest first: the core's one cached listing."""
        return list((await self.core.listing()).sessions)

    async def session(self, key: str) -> Any:
        """The session a URL names: its form checked here (a 400), then looked up by the core's key rule."""
        return await self.core.session(session_key(key))

    async def summary(self, key: str) -> Any:
        """The summary of the session a URL names (from the listing: no transcript loaded)."""
        return await self.core.summary(session_key(key))

    async def recording(self, key: str) -> Any:
        """The session a URL names (its summary) and its checked recording, without loading its transcript."""
        return await self.core.recording(session_key(key))

    async def link_key(self, s: Any) -> str:
        """What a meeting's page names it by in its own links (files, ZIP, recording, transcript lines, forms,
        "Send to"): see ``link_key``. A page of many meetings reads the listing once and calls that for each."""
        return link_key(await self.core.listing(), s.id, s.uuid)

    def render_page(self, request: web.Request, name: str, status: int = 200, **kw: Any) -> web.Response:
        kw.setdefault("csrf", request.get(CSRF, ""))
        kw.setdefault("auth_mode", self.cfg.http.auth.mode)
        kw.setdefault("logged_in", bool(request.get(SID)) and self.cfg.http.auth.mode == "password")
        kw.setdefault("has_password", bool(self.access.password_hash()))
        kw.setdefault("pairing", self.cfg.http.auth.pairing)
        kw.setdefault("email_on", self.cfg.email.enabled)
        # a share link's guest, or a browser not logged in: no links that only lead to the login page
        member = self.cfg.http.auth.mode != "password" or bool(request.get(SID))
        kw.setdefault("guest", not member or request.path.startswith("/s/"))
        html = self.jinja.get_template(name).render(**kw)
        return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


# ---- bounded parameters: anything else is a 400 that says what was expected ------------------

def session_key(raw: str) -> int | str:
    """A session id (ASCII digits), uuid or short id."""
    if raw.isascii() and raw.isdigit():
        if not DIGITS.fullmatch(raw):
            raise InvalidArgument(f"session id {raw[:24]!r}…: too long a number")
        return int(raw)
    if not KEY.fullmatch(raw):
        raise InvalidArgument(f"not a session id, uuid or short id: {raw[:40]!r}")
    return raw


def link_key(listing: Any, sid: int, uuid: str | None) -> str:
    """What a page names a meeting by in its links and forms (the meeting page's own, the meetings list's links and
    ticks, the history's and the search's links, the mail form's): its uuid when, read back as a URL's key
    (``session_key``), that names this meeting alone in ``listing``, so what they open is read bound to this meeting
    (after a restore of the recorder's database they answer 410 or 404, never the meeting that took its number);
    also when no session holds it now (the meeting left: 404). Else its id: a uuid the key rule cannot take or
    would take for another session (all digits: an id; eight characters: another's short id), or one several
    sessions share. Pure (dictionary look-ups): a page of rows reads the listing once, not once per row (a thread hop
    and a data_version query each: 0.25-0.42 s for 200 to 500 rows, against 2 ms once)."""
    try:
        key = session_key(uuid) if uuid else None
    except InvalidArgument:
        key = None
    if isinstance(key, str):
        holders = listing.keys.holders(key)
        try:
            named: tuple[int, ...] = (listing.resolve(key),)
        except NotFoundError:           # no session holds it, or several do
            named = ()
        if len(holders) <= 1 and named == holders:
            return key
    return str(sid)


def number(raw: str, what: str) -> int:
    """A non-negative whole number in ASCII digits (at most 18 of them)."""
    if not DIGITS.fullmatch(raw):
        raise InvalidArgument(f"{what}: {raw[:24]!r} is not a number (ASCII digits)")
    return int(raw)


def bounded(raw: str, what: str, limit: int = 64, pattern: re.Pattern | None = None) -> str:
    """A short text parameter (ids, tokens): at most limit characters, of the given pattern when one is given."""
    if len(raw) > limit or (pattern is not None and not pattern.fullmatch(raw)):
        raise InvalidArgument(f"{what}: {raw[:40]!r} is not valid")
    return raw


async def read_form(request: web.Request) -> Any:
    """The posted form, read within http.body_timeout; a malformed one is a 400 (never a 500)."""
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {}
    ctx: WebContext = request.app[CTX]
    try:
        async with asyncio.timeout(ctx.cfg.http.body_timeout):
            return await request.post()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the form came too slowly") from None
    except (ValueError, LookupError, UnicodeDecodeError, AssertionError, RequestPayloadError,
            HttpProcessingError) as e:         # (a part's broken headers: InvalidHeader)
        raise InvalidArgument(f"the form could not be read: {str(e).splitlines()[0][:80] if str(e) else e!r}") \
            from None


async def read_json(request: web.Request) -> dict:
    """The JSON object in the body, read within http.body_timeout; anything else is a 400."""
    ctx: WebContext = request.app[CTX]
    try:
        async with asyncio.timeout(ctx.cfg.http.body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request body came too slowly") from None
    except RequestPayloadError:
        raise InvalidArgument("the request body could not be read (its encoding or framing is broken)") from None
    try:
        data = safeparse.json_loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return data


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
        if not DATE.fullmatch(value):
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{name}: {value[:40]!r} is not a date (YYYY-MM-DD)") from None


def _int(value: str, name: str, default: int, lo: int, hi: int) -> int:
    if value == "":
        return default
    n = number(value, name)
    if not lo <= n <= hi:
        raise InvalidArgument(f"{name}: {n} is out of range {lo}..{hi}")
    return n


async def query_sessions(ctx: WebContext, q: Any) -> dict:
    """Search (text, participant, dates), sort and page the session list; bad parameters are 400. ``listing``: the
    one the items come from (their links' keys are read on it: ``link_key``)."""
    text = q.get("q", "").strip()[:200].casefold()
    who = q.get("participant", "").strip()[:200]
    since, until = _date(q.get("from", ""), "from"), _date(q.get("to", ""), "to")
    sort = q.get("sort", "date")
    if sort not in SORTS:
        raise InvalidArgument(f"sort: {sort[:40]!r} is not one of {', '.join(SORTS)}")
    order = q.get("order", "desc" if sort in ("date", "duration") else "asc")
    if order not in ("asc", "desc"):
        raise InvalidArgument("order: asc or desc")
    per_page = _int(q.get("per_page", ""), "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    page = _int(q.get("page", ""), "page", 1, 1, 10 ** 6)
    listing = await ctx.core.listing()
    items = list(listing.sessions)
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
    return {"items": items[start:start + per_page], "listing": listing, "total": total, "page": page, "pages": pages,
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


def session_json(s: Any, key: str = "") -> dict:
    """``key``: what the URLs in it name the meeting by (WebContext.link_key; its id when none is given)."""
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
        "audio": {"url": f"/sessions/{key or s.id}/audio", "size": s.audio.size} if s.audio else None,
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
