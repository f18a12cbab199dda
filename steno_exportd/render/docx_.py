"""Word documents (python-docx, imported only when rendering): the same templates as the PDF."""
from __future__ import annotations

from steno_exportd.model import Session
from steno_exportd.render.base import Renderer, RenderOptions


class DocxRenderer(Renderer):
    name, extension, version = "docx", "docx", 1
    media_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    heavy = True
    mergeable = True

    def filename(self, session: Session | None, options: RenderOptions) -> str:
        return f"report-{options.template}.docx"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        from steno_exportd.render import docx_build  # python-docx: heavy, only here
        return docx_build.build(sessions, options, merged, warnings)


RENDERER = DocxRenderer()
