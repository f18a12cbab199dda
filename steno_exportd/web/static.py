"""The page's own script and style sheet, served from memory: read once when the page starts (a few KiB), so a
request costs no file system call and no thread; each answer has an ETag and says to ask again (no-cache), so a
browser never keeps a script from before an upgrade, and asking again is a 304 without the body."""
from __future__ import annotations

import dataclasses
import hashlib
import mimetypes
from pathlib import Path

from aiohttp import web

MAX_FILES = 64                    # what the package ships: a few; a bound all the same
MAX_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str                      # quoted, from the content


FILES = web.AppKey("static", dict)      # name -> StaticFile: the WebContext's, set with it


def load(folder: Path) -> dict[str, StaticFile]:
    """The regular files directly in ``folder`` (no links followed, no sub-folders), by name."""
    files: dict[str, StaticFile] = {}
    total = 0
    for p in sorted(folder.iterdir())[:MAX_FILES]:
        if p.is_symlink() or not p.is_file():
            continue
        body = p.read_bytes()
        total += len(body)
        if total > MAX_BYTES:
            raise ValueError(f"{folder}: more than {MAX_BYTES} bytes of static files")
        kind = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        files[p.name] = StaticFile(body, kind, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return files


def _matches(header: str, etag: str) -> bool:
    """If-None-Match names this version (a list of tags, weak or not, or *)."""
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


async def serve_file(request: web.Request) -> web.Response:
    f = request.app[FILES].get(request.match_info["name"])
    if f is None:
        raise web.HTTPNotFound()
    headers = {"ETag": f.etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("If-None-Match", ""), f.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=f.body, headers={**headers, "Content-Type": f.content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/static/{name}", serve_file)
