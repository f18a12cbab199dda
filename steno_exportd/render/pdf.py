"""PDF reports (reportlab, imported only when rendering): summary/detailed/action_items/transcript."""
from __future__ import annotations

from steno_exportd.model import Session
from steno_exportd.render.base import Renderer, RenderOptions


class PdfRenderer(Renderer):
    name, extension, media_type, version = "pdf", "pdf", "application/pdf", 2
    heavy = True
    mergeable = True
    basename = "report"

    def filename(self, session: Session | None, options: RenderOptions) -> str:
        return f"report-{options.template}.pdf"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        from steno_exportd.render import pdf_build  # reportlab: heavy, only here
        return pdf_build.build(sessions, options, merged, warnings)


RENDERER = PdfRenderer()
