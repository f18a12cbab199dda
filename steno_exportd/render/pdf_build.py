"""The reportlab side of PDF rendering: fonts, styles, story, header/footer with page X of Y."""
from __future__ import annotations

import dataclasses
import io
import os

from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.rl_accel import fp_str
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4, LETTER
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm, mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (BaseDocTemplate, CondPageBreak, Flowable, Frame, Image, KeepTogether,
                                PageBreak, PageTemplate, Paragraph, Spacer, Table, TableStyle)
from reportlab.platypus.tableofcontents import TableOfContents

from steno_exportd.model import Session
from steno_exportd.render import scripts
from steno_exportd.render.base import RenderOptions
from steno_exportd.render.common import (clean, date_text, duration_text, hms, one_line, speaker_colours,
                                         speaker_rows)
from steno_exportd.render.fonts import dejavu, find_font
from steno_exportd.render.pdf_text import FontChain, paragraph, wrap_lines

_chains: dict[str, tuple[FontChain, FontChain, tuple[str, ...]]] = {}
# Binary (deflated) streams: ASCII85 makes files 25% larger and, without reportlab's optional C
# accelerator, costs pure-Python time per embedded font; every PDF reader takes binary streams.
rl_config.useA85 = 0


@dataclasses.dataclass(frozen=True)
class Style:
    """Styling of a document template (sizes in points)."""

    base_size: float = 10
    title_size: float = 22
    heading_size: float = 14
    transcript_size: float = 9.5
    margin: float = 1.8 * cm




def _fonts(options: RenderOptions, warnings: list[str]) -> tuple[FontChain, FontChain]:
    """(regular, bold) font chains, made once per process and font_path; font warnings every time."""
    key = options.font_path or ""
    if key not in _chains:
        found: list[str] = []
        reg, bold = find_font(options.font_path, found)
        dv_reg, dv_bold = dejavu()
        if reg is None:
            found.append("no TrueType font found (install fonts-dejavu-core); non-Latin text is lost")
        regular = [p for p in (reg, dv_reg) if p]
        bolds = [p for p in (bold or reg, dv_bold, reg, dv_reg) if p]
        _chains[key] = (FontChain(regular), FontChain(bolds, standard="Helvetica-Bold"), tuple(found))
    regular_chain, bold_chain, found_ = _chains[key]
    warnings.extend(found_)
    return regular_chain, bold_chain


def _missing_glyphs(sessions: list[Session], chain: FontChain, warnings: list[str]) -> None:
    chars: set[str] = set()
    for s in sessions:
        chars.update(s.title, s.summary_text or "", s.description or "", *(g.text for g in s.segments),
                     *(g.speaker_name for g in s.segments), *(a.text for a in s.action_items),
                     *(p.name for p in s.participants), *s.topics)
    missing = chain.missing(chars)
    if missing:
        warnings.append(f"the PDF fonts lack {len(missing)} characters (shown as boxes): "
                        + "".join(missing[:40]) + ("..." if len(missing) > 40 else ""))


GUTTER = 3.3 * cm


class TranscriptLine(Flowable):
    """One segment: speaker (wrapped, in the speaker's colour) and time in a left gutter, then the text.

    A left-to-right text paragraph is built from pre-parsed fragments (no markup parser per line),
    which keeps a 2,000-segment transcript close to the cost of bare paragraphs; the speaker's name
    is laid out once per speaker and drawn again for each of their lines.
    """

    def __init__(self, speaker: "_Name", time: str, para: Flowable, st: "_Builder", head: bool = True):
        super().__init__()
        self.speaker, self.time, self.para, self.st, self.head = speaker, time, para, st, head

    def wrap(self, aw, ah):
        self.aw = aw
        _, h = self.para.wrap(aw - GUTTER, ah)
        self.height = max(h, self.speaker.height if self.head else 0)
        return aw, self.height

    def split(self, aw, ah):
        if self.head and self.speaker.height > ah:     # the name would not fit here: the line starts on the next page
            return []
        parts = self.para.split(aw - GUTTER, ah)
        if len(parts) < 2:
            return []
        return [TranscriptLine(self.speaker, self.time, parts[0], self.st, self.head),
                TranscriptLine(self.speaker, self.time, parts[1], self.st, False)]

    def getSpaceAfter(self):
        return self.st.s_seg.spaceAfter

    def drawOn(self, canvas, x, y, _sW=0):
        """One graphics state and one translation (to the text's origin) per line."""
        canvas.saveState()
        canvas.translate(x + GUTTER, y + self.height - self.para.height)
        self._draw_at_text(canvas)
        canvas.restoreState()

    def draw(self):
        self.canv.translate(GUTTER, self.height - self.para.height)
        self._draw_at_text(self.canv)

    def _draw_at_text(self, c) -> None:
        """Draw with the origin at the text paragraph's bottom left (the gutter is to its left)."""
        if self.head:
            self.speaker.draw(c, -GUTTER, self.para.height, self.time, self.st)
        self.para.canv = c
        try:
            self.para.draw()
        finally:
            del self.para.canv


class _Name:
    """A speaker's full name in the gutter, wrapped once per speaker, drawn with the time in one text object."""

    def __init__(self, name: str, colour, b: "_Builder"):
        self.size = b.s_seg.fontSize - 0.5
        self.leading = self.size * 1.2
        self.rg = f"{fp_str(colour.red, colour.green, colour.blue)} rg"
        width = GUTTER - 0.3 * cm
        chain = b.bold_chain
        rtl = scripts.has_rtl(name)
        logical = wrap_lines(scripts.shape(name) if rtl else name, chain, self.size, width)
        base = "R" if scripts.direction(name) == "rtl" else "L"
        self.lines = []       # (x, runs) per line; right-to-left names end at the gutter's right edge
        for line in logical or [""]:
            runs = chain.runs(scripts.reorder(line, base) if rtl else line)
            x = width - sum(pdfmetrics.stringWidth(t, f, self.size) for f, t in runs) if base == "R" else 0.0
            self.lines.append((x, runs))
        self.tsize = b.s_seg.fontSize - 2
        # name lines, the time under them, and room for the time's descenders
        self.height = (len(self.lines) - 1) * self.leading + self.size + self.tsize + 5
        self._doc = None        # the document the operators below were made for
        self._ops = ""

    def draw(self, c, left: float, top: float, time: str, b: "_Builder") -> None:
        """The name below top and the time under it (relative moves: cheaper than absolute origins).

        The name's operators are made once per speaker and document (the first line puts its glyphs
        in the fonts' subsets) and repeated for every other line: one Tm and the time are new.
        """
        x0 = self.lines[0][0]
        if self._doc is not c._doc:
            t = c.beginText(x0, 0)
            # colour operators formatted once per speaker: setFillColor formats and checks alpha every call
            t._code.append(self.rg)
            prev = x0
            for i, (x, runs) in enumerate(self.lines):
                if i:
                    t.moveCursor(x - prev, self.leading)
                    prev = x
                for f, text in runs:
                    t.setFont(f, self.size)
                    t.textOut(text)
            t.moveCursor(-prev, self.tsize + 3)
            t._code.append(b.grey_rg)
            self._ops = " ".join(t._code[2:])       # after BT and the origin
            self._doc = c._doc
        c._code.append(f"BT 1 0 0 1 {fp_str(left + x0, top - self.size)} Tm {self._ops} "
                       f"{b.time_ops(c, time, self.tsize)} ET")


class _Doc(BaseDocTemplate):
    """Adds PDF outline entries and table-of-contents notifications for headings."""

    def afterFlowable(self, flowable):
        key = getattr(flowable, "_bookmark", None)
        if key:
            level, text, toc_markup = flowable._outline
            self.canv.bookmarkPage(key)
            self.canv.addOutlineEntry(text, key, level=level, closed=level > 0)
            if level == 0 and getattr(self, "_toc_on", False):
                self.notify("TOCEntry", (0, toc_markup, self.page, key))


def _numbered_canvas(title: str, company: str, chain: FontChain, accent, page_size):
    """A canvas that knows the page count when it draws headers and footers."""
    width = page_size[0] - 3.6 * cm
    head_title = chain.fit(title, 8, width * (0.6 if company else 1.0))
    head_company = chain.fit(company, 8, width * 0.38)
    foot = chain.fit("Silent Steno" + (f" · {company}" if company else ""), 8, width * 0.7)

    class NumberedCanvas(rl_canvas.Canvas):
        def __init__(self, *a, **kw):
            kw["initialFontName"] = chain.primary       # no unused, unembedded Helvetica in the file
            super().__init__(*a, **kw)
            self._pages = []

        def showPage(self):
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self._decorate(total)
                super().showPage()
            super().save()

        def _decorate(self, total: int) -> None:
            w, h = page_size
            self.saveState()
            self.setFillColor(colors.HexColor("#5f6b7a"))
            if self._pageNumber > 1:
                chain.draw(self, 1.8 * cm, h - 1.1 * cm, head_title, 8)
                if company:
                    chain.draw(self, w - 1.8 * cm, h - 1.1 * cm, head_company, 8, right=True)
                self.setStrokeColor(accent)
                self.setLineWidth(0.6)
                self.line(1.8 * cm, h - 1.25 * cm, w - 1.8 * cm, h - 1.25 * cm)
            self.setStrokeColor(colors.HexColor("#d5dbe3"))
            self.setLineWidth(0.4)
            self.line(1.8 * cm, 1.45 * cm, w - 1.8 * cm, 1.45 * cm)
            chain.draw(self, 1.8 * cm, 1.0 * cm, foot, 8)
            chain.draw(self, w - 1.8 * cm, 1.0 * cm, f"page {self._pageNumber} of {total}", 8, right=True)
            self.restoreState()

    return NumberedCanvas


class _Builder:
    def __init__(self, options: RenderOptions, warnings: list[str]):
        self.o = options
        self.w = warnings
        self.chain, self.bold_chain = _fonts(options, warnings)
        self.font, self.bold = self.chain.primary, self.bold_chain.primary
        self.t = options.doc_template(warnings)
        self.accent_hex = self.t.accent_color or options.accent_color
        self.accent = colors.HexColor(self.accent_hex)
        self.st = Style(self.t.base_size, self.t.title_size, self.t.heading_size, self.t.transcript_size,
                        self.t.margin_cm * cm)
        self.page = LETTER if (self.t.page_size or options.page_size).lower() == "letter" else A4
        f, b, st, a = self.font, self.bold, self.st, self.accent
        grey = colors.HexColor("#5f6b7a")
        self.s_body = ParagraphStyle("body", fontName=f, fontSize=st.base_size, leading=st.base_size * 1.4,
                                     spaceAfter=4)
        self.s_title = ParagraphStyle("title", fontName=b, fontSize=st.title_size, leading=st.title_size * 1.2,
                                      textColor=a, spaceAfter=6)
        self.s_h1 = ParagraphStyle("h1", fontName=b, fontSize=st.heading_size, leading=st.heading_size * 1.3,
                                   textColor=a, spaceBefore=12, spaceAfter=6)
        self.s_meta = ParagraphStyle("meta", fontName=f, fontSize=9, leading=12, textColor=grey)
        self.s_cell = ParagraphStyle("cell", fontName=f, fontSize=9, leading=11.5)
        self.s_cellr = ParagraphStyle("cellr", parent=self.s_cell, alignment=TA_RIGHT)
        self.s_head = ParagraphStyle("head", fontName=b, fontSize=8.5, leading=11, textColor=grey)
        self.s_seg = ParagraphStyle("seg", fontName=f, fontSize=st.transcript_size,
                                    leading=st.transcript_size * 1.35, spaceAfter=5, leftIndent=0)
        self.s_empty = ParagraphStyle("empty", parent=self.s_body, textColor=grey)
        self.s_company = ParagraphStyle("company", fontName=b, fontSize=9, leading=12, textColor=grey)
        self.s_toc = ParagraphStyle("toc", fontName=f, fontSize=11, leading=16)
        self.grey = grey
        self.grey_rg = f"{fp_str(grey.red, grey.green, grey.blue)} rg"
        self.n_bm = 0
        self.names: dict[str, _Name] = {}
        self.colours: dict[str, str] = {}
        self.proto = Paragraph("x", self.s_seg).frags[0]
        self._time_text = None

    def time_ops(self, c, time: str, size: float) -> str:
        """Text operators of a time in the regular font (font selection included), for a text object."""
        t = self._time_text
        if t is None or t._canvas is not c:
            t = self._time_text = c.beginText(0, 0)
        t._code = []
        t.setFont(self.font, size)          # selected again in each text object (a standard font: Tf here)
        return " ".join([*t._code, t._formatText(time)])

    def para(self, text: str, style) -> Flowable:
        """Plain text in style, any script (bold styles use the bold chain)."""
        return paragraph(text, style, self.bold_chain if style.fontName == self.bold else self.chain)

    def mk(self, text: str, bold: bool = False) -> str:
        """Paragraph markup of plain text in a regular style (bold: the bold chain, named explicitly)."""
        if bold:
            return f'<font name="{self.bold}">' + self.bold_chain.markup(text) + "</font>"
        return self.chain.markup(text, self.font)

    def heading(self, text: str, style, level: int):
        plain = one_line(text) or "Untitled session"
        para = self.para(plain, style)
        self.n_bm += 1
        para._bookmark = f"h{self.n_bm}"
        toc = self.chain.markup(scripts.visual(plain) if scripts.has_rtl(plain) else plain, self.s_toc.fontName)
        para._outline = (level, plain, toc)
        return para

    def segment_text(self, text: str) -> Flowable:
        """A transcript paragraph from fragments (one per font run; no markup parsing)."""
        if scripts.has_rtl(text):
            return paragraph(text, self.s_seg, self.chain)
        frags = []
        for f, t in self.chain.runs(text):
            frag = self.proto.clone()
            frag.text, frag.fontName = t, f
            frags.append(frag)
        return Paragraph("", self.s_seg, frags=frags)

    def speaker(self, name: str) -> _Name:
        colour = self.colours.get(name, self.accent_hex)
        hit = self.names.get(name + colour)
        if hit is None:
            hit = self.names[name + colour] = _Name(name, colors.HexColor(colour), self)
        return hit

    def table(self, rows, widths, header=True):
        t = Table(rows, colWidths=widths, repeatRows=1 if header else 0)
        t.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), self.font), 
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LINEBELOW", (0, 0), (-1, 0), 0.8, self.accent) if header else ("TOPPADDING", (0, 0), (-1, -1), 3),
            ("LINEBELOW", (0, 1), (-1, -1), 0.3, colors.HexColor("#e3e7ee")),
            ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ("LEFTPADDING", (0, 0), (-1, -1), 4), ("RIGHTPADDING", (0, 0), (-1, -1), 4),
        ]))
        return t

    def session_story(self, s: Session, merged: bool) -> list:
        sections = self.t.sections
        width = self.page[0] - 2 * self.st.margin
        out: list = []
        if "header" in sections:
            if self.o.logo and not merged:
                out.append(self.logo())
            if self.o.company and not merged:
                out.append(self.para(one_line(self.o.company).upper(), self.s_company))
            out.append(self.heading(s.title or "Untitled session", self.s_title, 0))
            meta = [("Date", date_text(s.start_time, self.o.time_zone)), ("Duration", duration_text(s.duration_seconds)),
                    ("Location", one_line(s.summary.location)), ("Platform", one_line(s.meeting_platform)),
                    ("Participants", str(len(speaker_rows(s))) if s.segments or s.participants else "none recorded"),
                    ("Session", s.uuid)]
            out.append(Paragraph("&nbsp;&nbsp;&nbsp;".join(f"{self.mk(k, bold=True)} {self.mk(v)}"
                                                           for k, v in meta if v), self.s_meta))
            out.append(Spacer(1, 4))
            line = Table([[""]], colWidths=[width], rowHeights=[2])
            line.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), self.font), ("LINEABOVE", (0, 0), (-1, -1), 1.5, self.accent)]))
            out.append(line)
            if s.description:
                out.append(self.para(clean(s.description), self.s_meta))
        if "summary" in sections:
            out.append(self.heading("Summary", self.s_h1, 1))
            paras = [x for x in clean(s.summary_text).split("\n\n") if x.strip()]
            out += [self.para(x, self.s_body) for x in paras] or \
                [Paragraph("No summary available.", self.s_empty)]
        if "action_items" in sections:
            out.append(self.heading("Action items", self.s_h1, 1))
            if s.action_items:
                rows = [[Paragraph("", self.s_head), Paragraph("Action", self.s_head), Paragraph("Owner", self.s_head),
                         Paragraph("Due", self.s_head)]]
                for a in s.action_items:
                    rows.append([Paragraph("☑" if a.done else "☐", self.s_cell), self.para(one_line(a.text), self.s_cell),
                                 self.para(one_line(a.owner) or "—", self.s_cell),
                                 Paragraph(a.due.isoformat() if a.due else "—", self.s_cell)])
                out.append(self.table(rows, [0.7 * cm, width - 7.7 * cm, 4.5 * cm, 2.5 * cm]))
            else:
                out.append(Paragraph("No action items.", self.s_empty))
        if "topics" in sections and s.topics:
            out.append(self.heading("Topics", self.s_h1, 1))
            out.append(self.para(" · ".join(one_line(t) for t in s.topics), self.s_body))
        if "participants" in sections:
            out.append(self.heading("Participants", self.s_h1, 1))
            rows_ = speaker_rows(s)
            if rows_:
                head_r = ParagraphStyle("headr", parent=self.s_head, alignment=TA_RIGHT)
                rows = [[Paragraph("Name", self.s_head), Paragraph("Role", self.s_head),
                         Paragraph("Speaking time", head_r), Paragraph("Share", self.s_head),
                         Paragraph("Words", head_r)]]
                for r in rows_:
                    rows.append([self.para(r.name, self.s_cell), self.para(r.role, self.s_cell),
                                 Paragraph(hms(r.seconds), self.s_cellr), self.share_bar(r.share),
                                 Paragraph(f"{r.words:,}", self.s_cellr)])
                out.append(KeepTogether(self.table(rows, [width - 13 * cm, 3.5 * cm, 2.8 * cm, 4.5 * cm, 2.2 * cm])))
                if s.segments:          # who spoke when, the same figure as on the web page
                    from steno_exportd.render.pdf_timeline import SpeakerTimeline
                    out.append(KeepTogether([Spacer(1, 8), Paragraph("Who spoke when", self.s_head),
                                             Spacer(1, 3), SpeakerTimeline(s, width, self)]))
            else:
                out.append(Paragraph("No participants recorded.", self.s_empty))
        if "transcript" in sections:
            if len(sections) > 2:
                out.append(CondPageBreak(6 * cm))
            out.append(self.heading("Transcript", self.s_h1, 1))
            if s.segments:
                self.colours = speaker_colours(s)
                for g in s.segments:
                    who = self.speaker(one_line(g.speaker_name) or "Unknown speaker")
                    out.append(TranscriptLine(who, hms(g.start), self.segment_text(one_line(g.text)), self))
            else:
                out.append(Paragraph("No transcript available.", self.s_empty))
        return out

    def share_bar(self, share: float):
        share = max(0.0, min(100.0, share))
        bar = Table([["", ""]], colWidths=[max(0.01, 2.4 * cm * share / 100), max(0.01, 2.4 * cm * (1 - share / 100))],
                    rowHeights=[6])
        bar.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), self.font), ("BACKGROUND", (0, 0), (0, 0), self.accent),
                                 ("BACKGROUND", (1, 0), (1, 0), colors.HexColor("#e3e7ee")),
                                 ("LEFTPADDING", (0, 0), (-1, -1), 0), ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                                 ("TOPPADDING", (0, 0), (-1, -1), 0), ("BOTTOMPADDING", (0, 0), (-1, -1), 0)]))
        t = Table([[bar, Paragraph(f"{share:.1f} %", self.s_cellr)]], colWidths=[2.5 * cm, 1.8 * cm])
        t.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), self.font), ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("RIGHTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 0),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 0)]))
        return t

    def logo(self):
        try:
            img = Image(self.o.logo)
            ratio = img.imageWidth / float(img.imageHeight or 1)
            img.drawHeight = 1.4 * cm
            img.drawWidth = 1.4 * cm * ratio
            img.hAlign = "LEFT"
            return img
        except Exception as e:  # unreadable logo: the report still renders
            self.w.append(f"logo {self.o.logo} unusable: {e}")
            return Spacer(1, 0)


def build(sessions: list[Session], options: RenderOptions, merged: bool, warnings: list[str]) -> bytes:
    """PDF bytes of one session or several merged (with a table of contents)."""
    b = _Builder(options, warnings)
    _missing_glyphs(sessions, b.chain, warnings)
    title = (f"Meetings ({len(sessions)})" if merged else one_line(sessions[0].title) or "Untitled session")
    buf = io.BytesIO()
    m = b.st.margin
    doc = _Doc(buf, pagesize=b.page, leftMargin=m, rightMargin=m, topMargin=m, bottomMargin=m,
               title=title, author=options.company or "Silent Steno", creator="steno-exportd",
               subject=f"{options.template} report")
    frame = Frame(m, m, b.page[0] - 2 * m, b.page[1] - 2 * m, id="body")
    doc.addPageTemplates([PageTemplate(id="page", frames=[frame])])
    story: list = []
    if merged:
        doc._toc_on = True
        if options.logo:
            story.append(b.logo())
        if options.company:
            story.append(b.para(one_line(options.company).upper(), b.s_company))
        story.append(b.para(title, b.s_title))
        story.append(Paragraph("Contents", b.s_h1))
        toc = TableOfContents(tableStyle=TableStyle([("FONTNAME", (0, 0), (-1, -1), b.font),
                                                     ("VALIGN", (0, 0), (-1, -1), "TOP"),
                                                     ("LEFTPADDING", (0, 0), (-1, -1), 0),
                                                     ("RIGHTPADDING", (0, 0), (-1, -1), 0)]))
        toc.levelStyles = [b.s_toc]
        story.append(toc)
        for s in sessions:
            story.append(PageBreak())
            story += b.session_story(s, merged=True)
        canvasmaker = _numbered_canvas(title, one_line(options.company), b.chain, b.accent, b.page)
        doc.multiBuild(story, canvasmaker=canvasmaker)
    else:
        story = b.session_story(sessions[0], merged=False)
        doc.build(story, canvasmaker=_numbered_canvas(title, one_line(options.company), b.chain, b.accent, b.page))
    return buf.getvalue()
