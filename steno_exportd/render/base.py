"""Renderer base class, options and result types shared by every format."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from typing import Sequence

from steno_exportd.errors import InvalidArgument, NotFoundError, RenderError
from steno_exportd.formats import DOCUMENT_TEMPLATES
from steno_exportd.model import Session

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """How to render: template name plus the styling of config [render]."""

    template: str = "detailed"
    template_dir: str | None = None
    page_size: str = "A4"
    font_path: str | None = None
    logo: str | None = None
    accent_color: str = "#1f4e79"
    company: str = ""
    audio_filename: str | None = None   # HTML player source when audio is exported beside it
    time_zone: str = ""                 # IANA name; "" = the system's
    language: str = "en"                # BCP 47 tag of the document; other scripts are marked per paragraph

    @classmethod
    def from_config(cls, rcfg, template: str = "detailed", audio_filename: str | None = None) -> "RenderOptions":
        """Options from a config.RenderConfig."""
        return cls(template=template, template_dir=rcfg.template_dir or None, page_size=rcfg.page_size,
                   font_path=rcfg.font_path or None, logo=rcfg.logo or None,
                   accent_color=rcfg.accent_color, company=rcfg.company, audio_filename=audio_filename,
                   time_zone=rcfg.time_zone, language=rcfg.language)

    def checked(self) -> "RenderOptions":
        """Self, or NotFoundError naming the valid templates (InvalidArgument for a bad colour)."""
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", self.accent_color):
            raise InvalidArgument(f"accent colour must be #rrggbb, got {self.accent_color[:20]!r}")
        if self.template not in DOCUMENT_TEMPLATES:
            from steno_exportd.render.doctemplates import resolve
            resolve(self.template, self.template_dir)
        return self

    def digest(self) -> str:
        """A short stable fingerprint: a file rendered with other options differs from one on a target."""
        text = repr(sorted(dataclasses.asdict(self).items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def doc_template(self, warnings: list[str] | None = None):
        """The DocTemplate (sections + styling) of self.template; problems of templates.toml to warnings."""
        from steno_exportd.render.doctemplates import available, resolve
        if warnings is not None:
            warnings.extend(available(self.template_dir)[1])
        return resolve(self.template, self.template_dir)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """Bytes of one rendering and what went wrong without stopping it."""

    data: bytes
    warnings: tuple[str, ...] = ()


class Renderer:
    """One export format: a pure function from session(s) to bytes."""

    name: str = ""
    extension: str = ""
    media_type: str = "application/octet-stream"
    version: int = 1
    heavy: bool = False
    mergeable: bool = False
    basename: str = "transcript"

    def filename(self, session: Session | None, options: RenderOptions) -> str:
        """File name inside the session folder (plain ASCII)."""
        return f"{self.basename}.{self.extension}"

    def merged_filename(self, options: RenderOptions) -> str:
        return f"merged-{self.filename(None, options)}"

    def render(self, session: Session, options: RenderOptions | None = None) -> bytes:
        return self.render_result(session, options).data

    def render_merged(self, sessions: Sequence[Session], options: RenderOptions | None = None) -> bytes:
        return self.render_merged_result(sessions, options).data

    def render_result(self, session: Session, options: RenderOptions | None = None) -> Rendered:
        return self._do([session], (options or RenderOptions()).checked(), merged=False)

    def render_merged_result(self, sessions: Sequence[Session], options: RenderOptions | None = None) -> Rendered:
        if not self.mergeable:
            raise RenderError(f"format {self.name!r} cannot merge sessions")
        return self._do(list(sessions), (options or RenderOptions()).checked(), merged=True)

    def _do(self, sessions: list[Session], options: RenderOptions, merged: bool) -> Rendered:
        warnings: list[str] = []
        try:
            data = self._render(sessions, options, merged, warnings)
        except (RenderError, NotFoundError):
            raise
        except Exception as e:  # a renderer bug must name the session, not kill a job silently
            raise RenderError(f"{self.name}: cannot render {', '.join(s.summary.short_id for s in sessions)}: "
                              f"{type(e).__name__}: {e}") from e
        for w in warnings:
            log.warning("%s: %s", self.name, w)
        return Rendered(data, tuple(warnings))

    def _render(self, sessions: list[Session], options: RenderOptions, merged: bool,
                warnings: list[str]) -> bytes:
        raise NotImplementedError

    def source_path(self, session: Session) -> Path:
        raise RenderError(f"format {self.name!r} has no source file")
