"""CSV: one row per segment, UTF-8 with BOM (Excel shows accents), RFC 4180 quoting.

A text cell starting with = + - @ tab or CR gets a leading quote (OWASP CSV injection rule), so a
spreadsheet shows it as text and never runs it as a formula.
"""
from __future__ import annotations

import csv
import io

from steno_exportd.render.base import Renderer
from steno_exportd.render.common import formula_safe, one_line
from steno_exportd.render.cues import ts


class CsvRenderer(Renderer):
    name, extension, media_type, version = "csv", "csv", "text/csv; charset=utf-8", 2

    def _render(self, sessions, options, merged, warnings) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(["start", "end", "start_seconds", "end_seconds", "speaker", "text", "confidence"])
        for seg in sessions[0].segments:
            w.writerow([ts(seg.start, "."), ts(seg.end, "."), f"{seg.start:.3f}", f"{seg.end:.3f}",
                        formula_safe(one_line(seg.speaker_name)), formula_safe(one_line(seg.text)),
                        "" if seg.confidence is None else f"{seg.confidence:.3f}"])
        return buf.getvalue().encode("utf-8-sig")


RENDERER = CsvRenderer()
