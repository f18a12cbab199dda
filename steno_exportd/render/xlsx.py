"""Excel workbooks (openpyxl, imported only when rendering): transcript, action items, participants."""
from __future__ import annotations

from steno_exportd.render.base import Renderer


class XlsxRenderer(Renderer):
    name, extension, version = "xlsx", "xlsx", 1
    media_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    heavy = True

    def _render(self, sessions, options, merged, warnings) -> bytes:
        from steno_exportd.render import xlsx_build  # openpyxl: heavy, only here
        return xlsx_build.build(sessions[0], options)


RENDERER = XlsxRenderer()
