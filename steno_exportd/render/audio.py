"""The original recording, copied as is (no transcoding)."""
from __future__ import annotations

from pathlib import Path

from steno_exportd.errors import RenderError
from steno_exportd.model import Session
from steno_exportd.render.base import Renderer, RenderOptions

_TYPES = {"flac": "audio/flac", "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg",
          "opus": "audio/ogg", "m4a": "audio/mp4", "aac": "audio/aac", "webm": "audio/webm"}


class AudioRenderer(Renderer):
    name, extension, media_type, version = "audio", "flac", "audio/flac", 1

    def _ext(self, session: Session | None) -> str:
        a = session.audio if session else None
        ext = ""
        if a is not None:
            ext = (a.file_format or Path(a.filename).suffix.lstrip(".") or "").lower()
        ext = "".join(c for c in ext if c.isascii() and c.isalnum())[:8]
        return ext or "bin"

    def filename(self, session: Session | None, options: RenderOptions | None = None) -> str:
        return f"audio.{self._ext(session)}"

    def media_type_for(self, session: Session) -> str:
        return _TYPES.get(self._ext(session), "application/octet-stream")

    def source_path(self, session: Session) -> Path:
        """Path of the recording, or RenderError when the session has no usable audio."""
        if session.audio is None or session.audio.path is None:
            raise RenderError(f"session {session.summary.short_id} has no usable audio file")
        return Path(session.audio.path)

    def _render(self, sessions, options, merged, warnings) -> bytes:
        path = self.source_path(sessions[0])
        try:
            return path.read_bytes()
        except OSError as e:
            raise RenderError(f"cannot read audio {path}: {e.strerror}") from e


RENDERER = AudioRenderer()
