"""Document templates: a list of sections plus styling; built-in ones, overridden/added by templates.toml.

`<render.template_dir>/templates.toml`::

    [board]                       # a new template name (or summary/detailed/... to override)
    sections = ["header", "summary", "action_items"]
    base_size = 11                # points; also title_size, heading_size, transcript_size
    margin_cm = 2.5
    accent_color = "#7a1f1f"      # overrides render.accent_color
    page_size = "Letter"          # overrides render.page_size
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib

from steno_exportd import safeparse
from steno_exportd.errors import NotFoundError

log = logging.getLogger(__name__)
SECTION_NAMES = ("header", "summary", "action_items", "topics", "participants", "transcript")


@dataclasses.dataclass(frozen=True)
class DocTemplate:
    name: str
    sections: tuple[str, ...]
    base_size: float = 10
    title_size: float = 22
    heading_size: float = 14
    transcript_size: float = 9.5
    margin_cm: float = 1.8
    accent_color: str | None = None
    page_size: str | None = None


BUILTIN = {
    "summary": DocTemplate("summary", ("header", "summary", "action_items", "topics", "participants"), base_size=10.5),
    "detailed": DocTemplate("detailed", SECTION_NAMES),
    "action_items": DocTemplate("action_items", ("header", "action_items"), base_size=11),
    "transcript": DocTemplate("transcript", ("header", "participants", "transcript"), transcript_size=10),
}
_cache: dict[str, tuple[float, dict[str, DocTemplate], tuple[str, ...]]] = {}


def _parse(path: str) -> tuple[dict[str, DocTemplate], tuple[str, ...]]:
    problems: list[str] = []
    out: dict[str, DocTemplate] = {}
    try:
        with open(path, "rb") as f:
            data = safeparse.toml_loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return {}, (f"{path}: {e}; using the built-in document templates",)
    for name, spec in data.items():
        if not isinstance(spec, dict) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
            problems.append(f"{path}: [{name}] is not a template table with a plain name; ignored")
            continue
        base = BUILTIN.get(name, BUILTIN["detailed"])
        kw: dict = {}
        try:
            if "sections" in spec:
                secs = tuple(str(s) for s in spec["sections"])
                bad = [s for s in secs if s not in SECTION_NAMES]
                if bad:
                    problems.append(f"{path}: [{name}] unknown sections {bad} ignored; valid: "
                                    + ", ".join(SECTION_NAMES))
                kw["sections"] = tuple(s for s in secs if s in SECTION_NAMES)
            for k in ("base_size", "title_size", "heading_size", "transcript_size", "margin_cm"):
                if k in spec:
                    v = float(spec[k])
                    if not 0.3 <= v <= 72:
                        raise ValueError(f"{k} = {v} out of range")
                    kw[k] = v
            if "accent_color" in spec:
                if not re.fullmatch(r"#[0-9a-fA-F]{6}", str(spec["accent_color"])):
                    raise ValueError("accent_color must be #rrggbb")
                kw["accent_color"] = str(spec["accent_color"])
            if "page_size" in spec:
                if str(spec["page_size"]) not in ("A4", "Letter"):
                    raise ValueError("page_size must be A4 or Letter")
                kw["page_size"] = str(spec["page_size"])
        except (TypeError, ValueError) as e:
            problems.append(f"{path}: [{name}] {e}; ignored")
            continue
        out[name] = dataclasses.replace(base, name=name, **kw)
    return out, tuple(problems)


def available(template_dir: str | None) -> tuple[dict[str, DocTemplate], tuple[str, ...]]:
    """Built-in templates updated by the user's templates.toml, and problems found in it."""
    path = os.path.join(template_dir, "templates.toml") if template_dir else ""
    if not path or not os.path.isfile(path):
        return BUILTIN, ()
    mtime = os.stat(path).st_mtime
    hit = _cache.get(path)
    if hit is None or hit[0] != mtime:
        user, problems = _parse(path)
        for p in problems:
            log.warning("%s", p)
        hit = _cache[path] = (mtime, {**BUILTIN, **user}, problems)
    return hit[1], hit[2]


def resolve(name: str, template_dir: str | None) -> DocTemplate:
    """The template called name, or NotFoundError listing the valid names."""
    templates, _ = available(template_dir)
    if name not in templates:
        raise NotFoundError(f"unknown template {name!r}; valid templates: {', '.join(templates)}")
    return templates[name]
