"""Sessions x formats -> the files to write for one session (name, renderer or source, size)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from steno_exportd.engine.naming import resolve_collision, safe_name

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    name: str                       # safe name inside the session folder
    fmt: str
    version: str
    template: str = ""
    source: Path | None = None      # a copy (audio); None: rendered
    size: int = 0                   # exact for copies, 0 for renders (unknown until rendered)
    heavy: bool = False
    error: str = ""                 # planned but impossible (missing audio, unknown renderer)


def registry() -> Any:
    import steno_exportd.render as render
    return render


def render_options(template: str) -> Any:
    try:
        from steno_exportd.render import RenderOptions
        return RenderOptions(template=template)
    except (ImportError, TypeError):
        return type("RenderOptions", (), {"template": template})()


def plan_session(session: Any, formats: tuple[str, ...], template: str, include_audio: bool,
                 reg: Any = None) -> list[PlannedFile]:
    """The files of one session, in format order, with case-insensitively unique safe names."""
    reg = reg or registry()
    opts = render_options(template)
    out: list[PlannedFile] = []
    taken: set[str] = set()
    for fmt in formats:
        if fmt == "audio" and not include_audio:
            continue
        try:
            r = reg.get(fmt)
        except Exception as e:  # noqa: BLE001 - one format's problem never stops the others
            out.append(PlannedFile(f"{fmt}", fmt, "", error=f"renderer {fmt}: {e}"))
            continue
        version = str(getattr(r, "version", ""))
        if fmt == "audio":
            try:
                src = Path(r.source_path(session)) if hasattr(r, "source_path") else (
                    session.audio.path if session.audio else None)
            except Exception as e:  # noqa: BLE001
                src, err = None, str(e)
            else:
                err = ""
            if src is None or not src.is_file():
                out.append(PlannedFile("audio", fmt, version,
                                       error=err or f"audio file missing: {src or 'no audio recorded'}"))
                continue
            name = safe_name(r.filename(session, opts) if hasattr(r, "filename") else src.name)
            name = resolve_collision(name, taken)
            taken.add(name)
            out.append(PlannedFile(name, fmt, version, source=src, size=src.stat().st_size))
            continue
        name = resolve_collision(safe_name(r.filename(session, opts)), taken)
        taken.add(name)
        out.append(PlannedFile(name, fmt, version, template=template if fmt in ("pdf", "docx") else "",
                               heavy=bool(getattr(r, "heavy", False))))
    return out


def render_file(pf: PlannedFile, session: Any, reg: Any = None) -> bytes:
    reg = reg or registry()
    opts = render_options(pf.template or "detailed")
    if pf.heavy and hasattr(reg, "render_in_process"):
        return reg.render_in_process(pf.fmt, session, opts)
    return reg.get(pf.fmt).render(session, opts)
