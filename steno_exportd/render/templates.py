"""Jinja2 templates for txt/md/html: built-in ones, overridden or added by a user folder."""
from __future__ import annotations

import functools
import logging
import os

import re

import jinja2

from steno_exportd.render.common import hms

log = logging.getLogger(__name__)
BUILTIN = os.path.join(os.path.dirname(__file__), "templates")


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def mdescape(text: str) -> str:
    """Markdown-safe text: markup characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", text or "")


@functools.lru_cache(maxsize=8)
def _env(folder: str | None, autoescape: bool) -> jinja2.Environment:
    paths = ([folder] if folder and os.path.isdir(folder) else []) + [BUILTIN]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(paths), autoescape=autoescape,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.ChainableUndefined)
    env.filters["hms"] = hms
    env.filters["mdescape"] = mdescape
    return env


@functools.lru_cache(maxsize=8)
def _builtin_env(autoescape: bool) -> jinja2.Environment:
    return _env(None, autoescape)


def render(name: str, context: dict, folder: str | None, warnings: list[str], autoescape: bool = False) -> str:
    """Render template `name` from the user folder (else built-in); a broken user one falls back."""
    env = _env(folder, autoescape)
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as e:
        where = f"{e.filename or name}:{e.lineno}"
        msg = f"template {name} ({where}): {e.message}; using the built-in template"
    except jinja2.TemplateNotFound:
        raise
    except Exception as e:  # runtime error inside a user template
        line = _user_line(e, name)
        msg = f"template {name}{f' line {line}' if line else ''}: {type(e).__name__}: {e}; using the built-in template"
    if not folder:
        raise RuntimeError(msg)
    log.warning("%s", msg)
    warnings.append(msg)
    return _builtin_env(autoescape).get_template(name).render(**context)


def _user_line(e: BaseException, name: str) -> int | None:
    tb = e.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(name):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
