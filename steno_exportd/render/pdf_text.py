"""Text in any script for reportlab: a font fallback chain per glyph and right-to-left paragraphs.

reportlab draws one font per fragment and glyphs left to right. So each text is cut into runs
by the first font of the chain that has the glyph (the configured font, DejaVu Sans, then a CJK
font), and a paragraph with right-to-left letters is wrapped in logical order, then each line is
put in visual order with Arabic letters joined (python-bidi, arabic-reshaper).
"""
from __future__ import annotations

import re
from xml.sax.saxutils import escape

from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFError, TTFont
from reportlab.platypus import Flowable, Paragraph

from steno_exportd.render import scripts
from steno_exportd.render.fonts import fallback_fonts

_loaded: dict[str, tuple[str, frozenset[int]] | None] = {}    # path -> (registered name, code points)


def load(path: str) -> tuple[str, frozenset[int]] | None:
    """Register a TrueType font once per process; None when reportlab cannot embed it."""
    if path not in _loaded:
        name = f"Steno{len(_loaded)}"
        try:
            font = TTFont(name, path, subfontIndex=0)
        except (TTFError, OSError, ValueError, KeyError, IndexError):  # CFF-based, broken: try the next
            _loaded[path] = None
            return None
        pdfmetrics.registerFont(font)
        pdfmetrics.registerFontFamily(name, normal=name, bold=name, italic=name, boldItalic=name)
        _loaded[path] = (name, frozenset(font.face.charToGlyph))
    return _loaded[path]


def _ranges(cps: frozenset[int]) -> str:
    out, it = [], iter(sorted(c for c in cps if c > 0x20 and not 0xd800 <= c <= 0xdfff))
    start = prev = next(it, None)
    for c in it:
        if c != prev + 1:
            out.append((start, prev))
            start = c
        prev = c
    if start is not None:
        out.append((start, prev))
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in out)


class FontChain:
    """Fonts tried in order for each character; CJK fallbacks are loaded only when a text needs them."""

    def __init__(self, paths: list[str], fallbacks: tuple[str, ...] | None = None, standard: str = "Helvetica"):
        self.fonts = [f for f in (load(p) for p in dict.fromkeys(paths)) if f is not None]
        if not self.fonts:   # no TrueType font at all: a standard PDF font, Latin-1 only
            self.fonts = [(standard, frozenset(range(32, 256)))]
        self.primary = self.fonts[0][0]
        self._pending = list(fallback_fonts() if fallbacks is None else fallbacks)
        self._cache: dict[str, str | None] = {}
        # everything the primary font draws, whitespace included: the common case is one run
        self._other = re.compile(f"[^\\s{_ranges(self.fonts[0][1])}]")

    def font_of(self, ch: str) -> str | None:
        """Registered name of the first font with a glyph for ch; None when no font has it."""
        hit = self._cache.get(ch, "")
        if hit != "":
            return hit
        cp = ord(ch)
        found = next((n for n, cps in self.fonts if cp in cps), None)
        while found is None and self._pending and not ch.isspace():
            f = load(self._pending.pop(0))
            if f is not None:
                self.fonts.append(f)
                found = f[0] if cp in f[1] else None
        self._cache[ch] = found
        return found

    def runs(self, text: str) -> list[tuple[str, str]]:
        """(font name, text) runs; spaces and characters no font has stay in the current run."""
        if self._other.search(text) is None:
            return [(self.primary, text)]
        out: list[tuple[str, str]] = []
        cur, buf = self.primary, []
        for ch in text:
            f = None if ch.isspace() else self.font_of(ch)
            if f is not None and f != cur:
                if buf:
                    out.append((cur, "".join(buf)))
                cur, buf = f, []
            buf.append(ch)
        if buf:
            out.append((cur, "".join(buf)))
        return out

    def missing(self, chars: set[str]) -> list[str]:
        """Characters no font of the chain draws (shown as boxes)."""
        return sorted(c for c in chars if ord(c) >= 32 and not c.isspace() and not 0x200b <= ord(c) <= 0x206f
                      and self.font_of(c) is None)

    def width(self, text: str, size: float) -> float:
        return sum(pdfmetrics.stringWidth(t, f, size) for f, t in self.runs(text))

    def markup(self, text: str, base: str | None = None) -> str:
        """Paragraph markup of plain text: escaped, with a <font> tag for every run not in base."""
        base = base or self.primary
        return "".join(escape(t) if f == base else f'<font name="{f}">{escape(t)}</font>' for f, t in self.runs(text))

    def draw(self, canv, x: float, y: float, text: str, size: float, right: bool = False) -> None:
        """Draw one line (visual order for right-to-left text) at x (or ending at x when right)."""
        if scripts.has_rtl(text):
            text = scripts.visual(text)
        runs = self.runs(text)
        if right:
            x -= sum(pdfmetrics.stringWidth(t, f, size) for f, t in runs)
        for f, t in runs:
            canv.setFont(f, size)
            canv.drawString(x, y, t)
            x += pdfmetrics.stringWidth(t, f, size)

    def fit(self, text: str, size: float, width: float) -> str:
        """text cut with an ellipsis to fit width (running headers only; the body always wraps)."""
        if self.width(text, size) <= width:
            return text
        while text and self.width(text + "…", size) > width:
            text = text[:-1]
        return text + "…"


def wrap_lines(text: str, chain: FontChain, size: float, width: float) -> list[str]:
    """Greedy word wrap in logical order by drawn width; a word longer than a line is cut."""
    lines: list[str] = []
    cur = ""
    for word in text.split():
        cand = f"{cur} {word}" if cur else word
        if chain.width(cand, size) <= width:
            cur = cand
            continue
        if cur:
            lines.append(cur)
        cur = word
        while chain.width(cur, size) > width and len(cur) > 1:
            cut = len(cur) - 1
            while cut > 1 and chain.width(cur[:cut], size) > width:
                cut -= 1
            lines.append(cur[:cut])
            cur = cur[cut:]
    if cur:
        lines.append(cur)
    return lines


class BidiParagraph(Flowable):
    """A paragraph with right-to-left letters: wrapped in logical order, each line drawn in visual order.

    It lays out and draws its own lines (one text object), which costs less than a reportlab
    Paragraph with per-run markup.
    """

    def __init__(self, text: str, style: ParagraphStyle, chain: FontChain,
                 lines: list[tuple[float, list[tuple[str, str]]]] | None = None):
        super().__init__()
        self.text, self.style, self.chain = text, style, chain
        self.base = scripts.direction(text)
        self._lines = lines
        self._aw = -1.0 if lines is None else None

    def _layout(self, aw: float) -> list[tuple[float, list[tuple[str, str]]]]:
        size, chain = self.style.fontSize, self.chain
        base = "R" if self.base == "rtl" else "L"
        out = []
        for line in wrap_lines(scripts.shape(self.text), chain, size, max(1.0, aw - 1.0)):
            runs = chain.runs(scripts.reorder(line, base))
            width = sum(pdfmetrics.stringWidth(t, f, size) for f, t in runs)
            out.append((aw - width if base == "R" else 0.0, runs))
        return out

    def wrap(self, aw, ah):
        if self._aw is not None and aw != self._aw:
            self._lines, self._aw = self._layout(aw), aw
        self.width, self.height = aw, len(self._lines) * self.style.leading
        return self.width, self.height

    def split(self, aw, ah):
        self.wrap(aw, ah)
        n = int(ah // self.style.leading)
        if n <= 0 or n >= len(self._lines):
            return [] if n <= 0 else [self]
        return [BidiParagraph(self.text, self.style, self.chain, self._lines[:n]),
                BidiParagraph(self.text, self.style, self.chain, self._lines[n:])]

    def draw(self):
        st = self.style
        t = self.canv.beginText(0, self.height - st.fontSize)
        t.setFillColor(st.textColor)
        prev = 0.0
        for i, (x, runs) in enumerate(self._lines):
            t.moveCursor(x - prev, st.leading if i else 0)
            prev = x
            for f, text in runs:
                t.setFont(f, st.fontSize)
                t._code.append(t._formatText(text))     # textOut without the width it would measure again
        self.canv.drawText(t)

    def getSpaceBefore(self):
        return self.style.spaceBefore

    def getSpaceAfter(self):
        return self.style.spaceAfter


def paragraph(text: str, style: ParagraphStyle, chain: FontChain) -> Flowable:
    """A flowable of plain text in style, any script."""
    if scripts.has_rtl(text):
        return BidiParagraph(text, style, chain)
    return Paragraph(chain.markup(text, style.fontName).replace("\n", "<br/>"), style)
