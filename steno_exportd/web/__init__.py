"""LAN web page (aiohttp). The daemon calls `serve(core)`; aiohttp is imported only then."""
from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator


@contextlib.asynccontextmanager
async def serve(core: Any) -> AsyncIterator[str]:
    """Run the web page; yields its URL."""
    from steno_exportd.web.app import serve as _serve
    async with _serve(core) as url:
        yield url


def make_app(core: Any) -> Any:
    from steno_exportd.web.app import make_app as _make_app
    return _make_app(core)
