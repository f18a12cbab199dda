"""Renderer registry: format name -> Renderer; never imports reportlab, python-docx or openpyxl.

Each format lives in its own module, imported on first ``get(name)``; PDF and DOCX import
their heavy libraries only when they render, and are run in a worker process by
``render_in_process`` because reportlab holds the GIL.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import multiprocessing
import threading
from typing import Sequence

from steno_exportd.errors import NotFoundError
from steno_exportd.formats import DOCUMENT_TEMPLATES, FORMATS
from steno_exportd.model import Session
from steno_exportd.render.base import Rendered, Renderer, RenderOptions

__all__ = ["names", "get", "template_names", "RenderOptions", "Renderer", "Rendered", "render_in_process",
           "render_result_in_process", "async_render", "shutdown"]

_MODULES = {"txt": "txt", "md": "md", "html": "html", "json": "json_", "srt": "srt", "vtt": "vtt",
            "csv": "csv_", "xlsx": "xlsx", "pdf": "pdf", "docx": "docx_", "ics": "ics", "audio": "audio"}
_cache: dict[str, Renderer] = {}


def names() -> list[str]:
    """Every format name, in formats.FORMATS order."""
    return list(FORMATS)


def template_names() -> list[str]:
    """Every document template name."""
    return list(DOCUMENT_TEMPLATES)


def get(name: str) -> Renderer:
    """The renderer of a format, or NotFoundError listing the valid names."""
    r = _cache.get(name)
    if r is None:
        if name not in _MODULES:
            raise NotFoundError(f"unknown format {name!r}; valid formats: {', '.join(FORMATS)}")
        r = _cache[name] = importlib.import_module(f"{__name__}.{_MODULES[name]}").RENDERER
    return r


def _work(name: str, what: Session | Sequence[Session], options: RenderOptions | None) -> Rendered:
    r = get(name)
    if isinstance(what, Session):
        return r.render_result(what, options)
    return r.render_merged_result(list(what), options)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            _pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
        return _pool


def shutdown() -> None:
    """Stop the worker process (idempotent)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def render_result_in_process(name: str, what: Session | Sequence[Session],
                             options: RenderOptions | None = None) -> Rendered:
    """Render (merged when given a list); heavy formats run in the worker process."""
    if not get(name).heavy:
        return _work(name, what, options)
    try:
        return _executor().submit(_work, name, what, options).result()
    except concurrent.futures.process.BrokenProcessPool:
        shutdown()
        return _executor().submit(_work, name, what, options).result()


def render_in_process(name: str, what: Session | Sequence[Session], options: RenderOptions | None = None) -> bytes:
    """Bytes of render_result_in_process."""
    return render_result_in_process(name, what, options).data


async def async_render(name: str, what: Session | Sequence[Session],
                       options: RenderOptions | None = None) -> Rendered:
    """Render without blocking the loop: heavy in the worker process, light in a thread."""
    if get(name).heavy:
        fut = _executor().submit(_work, name, what, options)
        return await asyncio.wrap_future(fut)
    return await asyncio.to_thread(_work, name, what, options)
