"""The openpyxl side of XLSX: three sheets written in write-only mode (fast for 2-hour meetings).

Every text cell is stored as a string; one that starts with = + - @ tab or CR also gets Excel's
quote prefix (OWASP rule), so editing it never turns it into a formula.
"""
from __future__ import annotations

import io

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Alignment, Font, PatternFill

from steno_exportd.model import Session
from steno_exportd.render.base import RenderOptions
from steno_exportd.render.common import FORMULA_LEAD, clean, hms, one_line, speaker_rows

MAX_CELL = 32767          # Excel's limit of characters in a cell


def build(s: Session, options: RenderOptions) -> bytes:
    """XLSX bytes of one session."""
    wb = Workbook(write_only=True)
    accent = options.accent_color.lstrip("#").upper()
    head_font = Font(bold=True, color="FFFFFF")
    head_fill = PatternFill("solid", fgColor=accent)
    wrap = Alignment(wrap_text=True, vertical="top")

    def sheet(title: str, header: list[str], widths: list[float], rows) -> None:
        ws = wb.create_sheet(title)
        for i, w in enumerate(widths):
            ws.column_dimensions[chr(ord("A") + i)].width = w
        ws.freeze_panes = "A2"
        cells = []
        for h in header:
            c = WriteOnlyCell(ws, h)
            c.font, c.fill = head_font, head_fill
            cells.append(c)
        ws.append(cells)
        for row in rows:
            ws.append([_cell(ws, v, wrap) for v in row])

    sheet("Transcript", ["Time", "Speaker", "Text", "Start (s)", "End (s)", "Confidence"], [10, 24, 90, 10, 10, 11],
          ([hms(g.start), one_line(g.speaker_name) or "Unknown speaker", one_line(g.text), round(g.start, 3),
            round(g.end, 3), g.confidence] for g in s.segments))
    sheet("Action items", ["Action", "Owner", "Due", "Done"], [70, 24, 12, 8],
          ([one_line(a.text), one_line(a.owner), a.due, "yes" if a.done else "no"] for a in s.action_items))
    sheet("Participants", ["Name", "Role", "Speaking time", "Share (%)", "Words"], [30, 30, 14, 10, 10],
          ([r.name, r.role, hms(r.seconds), round(r.share, 1), r.words] for r in speaker_rows(s)))
    wb.properties.title = clean(one_line(s.title))[:255] or "Untitled session"
    wb.properties.creator = clean(one_line(options.company))[:255] or "Silent Steno"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _cell(ws, value, wrap: Alignment):
    if not isinstance(value, str):
        return value
    value = clean(value)[:MAX_CELL]
    c = WriteOnlyCell(ws, value)
    c.data_type = "s"                       # never a formula, whatever it starts with
    if value.startswith(FORMULA_LEAD):
        c.quotePrefix = True
    if len(value) > 60:
        c.alignment = wrap
    return c
