"""Sessions x formats -> the files to write for one session (name, renderer or source, size)."""
from __future__ import annotations

import dataclasses
import logging
import types
from pathlib import Path
from typing import Callable

from steno_exportd.config import Config
from steno_exportd.engine.naming import resolve_collision, safe_name
from steno_exportd.errors import StenoError
from steno_exportd.model import Session
from steno_exportd.recordings import SourceRef
from steno_exportd.render.base import RenderOptions

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    name: str                       # safe name inside the session folder
    fmt: str
    version: str                    # renderer version + options fingerprint: a change re-renders
    template: str = ""
    source: Path | None = None      # a copy (audio); None: rendered
    size: int = 0                   # exact for copies, 0 for renders (unknown until rendered)
    heavy: bool = False
    error: str = ""                 # planned but impossible (missing audio, unknown renderer)
    options: RenderOptions = RenderOptions()


def registry() -> types.ModuleType:
    import steno_exportd.render as render
    return render


def render_options(cfg: Config, template: str | None, audio_filename: str | None = None) -> RenderOptions:
    """The one place render options are made: config [render], the job's template (else export.template)."""
    return RenderOptions.from_config(cfg.render, template or cfg.export.template, audio_filename)


def plan_session(session: Session, formats: tuple[str, ...], options: RenderOptions, include_audio: bool,
                 reg: types.ModuleType | None = None) -> list[PlannedFile]:
    """The files of one session, in format order, with case-insensitively unique safe names.

    The recording is planned first so the HTML page can play it by its name in the same folder.
    """
    reg = reg or registry()
    taken: set[str] = set()
    audio: PlannedFile | None = None
    if "audio" in formats and include_audio:
        audio = _plan_audio(session, reg, options, taken)
        if not audio.error:
            options = dataclasses.replace(options, audio_filename=audio.name)
    out: list[PlannedFile] = []
    for fmt in formats:
        if fmt == "audio":
            if audio is not None:
                out.append(audio)
            continue
        try:
            r = reg.get(fmt)
        except StenoError as e:   # one format's problem never stops the others
            out.append(PlannedFile(f"{fmt}", fmt, "", error=f"renderer {fmt}: {e}"))
            continue
        name = resolve_collision(safe_name(r.filename(session, options)), taken)
        taken.add(name)
        out.append(PlannedFile(name, fmt, f"{r.version}+{options.digest()}",
                               template=options.template if fmt in ("pdf", "docx") else "",
                               heavy=r.heavy, options=options))
    return out


def _plan_audio(session: Session, reg: types.ModuleType, options: RenderOptions, taken: set[str]) -> PlannedFile:
    r = reg.get("audio")
    version = str(r.version)
    try:
        src, err = r.source_path(session), ""
    except StenoError as e:
        src, err = None, str(e)
    if src is None or not src.is_file():
        return PlannedFile("audio", "audio", version, error=err or f"audio file missing: {src or 'no audio recorded'}")
    name = resolve_collision(safe_name(r.filename(session, options)), taken)
    taken.add(name)
    return PlannedFile(name, "audio", version, source=src, size=src.stat().st_size)


def source_ref(pf: PlannedFile, session: Session, data_dir: Path) -> SourceRef:
    """A planned copy's recording as the library checked it (same device and inode), to be opened through the data
    folder without following a symlink (SourceRef.open): never the file a symlink swapped in since names."""
    assert pf.source is not None
    ref = SourceRef(Path(pf.source), Path(data_dir))
    audio = session.audio
    if audio is not None and audio.path == pf.source and audio.dev:
        ref = dataclasses.replace(ref, dev=audio.dev, ino=audio.ino)
    return ref


def render_file(pf: PlannedFile, session: Session, reg: types.ModuleType | None = None,
                cancelled: Callable[[], bool] | None = None) -> bytes:
    """The bytes of a planned rendered file (heavy formats in the worker process, stopped by ``cancelled``)."""
    reg = reg or registry()
    if pf.heavy:
        return reg.render_in_process(pf.fmt, session, pf.options, cancelled)
    return reg.get(pf.fmt).render(session, pf.options)
