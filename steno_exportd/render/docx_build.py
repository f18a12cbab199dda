"""The python-docx side of DOCX rendering: headings, tables, header/footer with page X of Y."""
from __future__ import annotations

import dataclasses
import io

import docx
from docx.enum.table import WD_TABLE_ALIGNMENT
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from docx.shared import Cm, Pt, RGBColor

from steno_exportd.model import Session
from steno_exportd.render.base import RenderOptions
from steno_exportd.render import scripts
from steno_exportd.render.common import date_text, duration_text, hms, one_line, speaker_colours, speaker_rows, stable_zip
from steno_exportd.render.common import clean as _clean_base

import re

# XML 1.0 forbids most C0 controls even when escaped; clean() removes them, this catches the rest.
_XML_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean(text: str | None) -> str:
    return _XML_BAD.sub("", _clean_base(text))


def _field(run, instr: str) -> None:
    """Insert a Word field (PAGE, NUMPAGES) into a run."""
    for tag, attr in (("w:fldChar", "begin"), ("w:instrText", instr), ("w:fldChar", "separate"),
                      ("w:t", "1"), ("w:fldChar", "end")):
        el = OxmlElement(tag)
        if tag == "w:fldChar":
            el.set(qn("w:fldCharType"), attr)
        else:
            el.set(qn("xml:space"), "preserve")
            el.text = attr if tag == "w:t" else f" {attr} "
        run._r.append(el)


# Children of w:pPr that must come after w:bidi (ECMA-376 CT_PPr sequence).
_AFTER_BIDI = {qn(f"w:{t}") for t in ("adjustRightInd", "snapToGrid", "spacing", "ind", "contextualSpacing",
                                      "mirrorIndents", "suppressOverlap", "jc", "textDirection", "textAlignment",
                                      "textboxTightWrap", "outlineLvl", "divId", "cnfStyle", "rPr", "sectPr",
                                      "pPrChange")}


def _lang_attrs(text: str, language: str) -> tuple[bool, str]:
    """(right-to-left, the w:lang element's attributes) for a paragraph of text."""
    lang = scripts.language(text, language)
    rtl = scripts.direction(text) == "rtl"
    if scripts.is_cjk(lang):
        attrs = f'w:val="{language}" w:eastAsia="{lang}"'
    elif rtl:
        attrs = f'w:val="{language}" w:bidi="{lang}"'
    else:
        attrs = f'w:val="{lang}"'
    return rtl, attrs


def _mark(p, text: str, language: str) -> None:
    """Mark a python-docx paragraph with its language and, for right-to-left text, its direction."""
    from lxml import etree
    rtl, attrs = _lang_attrs(text, language)
    el = p._p
    if rtl:
        ppr = el.get_or_add_pPr()
        bidi = OxmlElement("w:bidi")
        nxt = next((c for c in ppr if c.tag in _AFTER_BIDI), None)
        if nxt is not None:
            nxt.addprevious(bidi)
        else:
            ppr.append(bidi)
    for r in el.iter(qn("w:r")):
        rpr = r.get_or_add_rPr()
        if rtl:
            rpr.append(OxmlElement("w:rtl"))
        rpr.append(etree.fromstring(f'<w:lang xmlns:w="{_W}" {attrs}/>'))


def _shade(cell, hex_color: str) -> None:
    tc_pr = cell._tc.get_or_add_tcPr()
    shd = OxmlElement("w:shd")
    shd.set(qn("w:val"), "clear")
    shd.set(qn("w:color"), "auto")
    shd.set(qn("w:fill"), hex_color.lstrip("#"))
    tc_pr.append(shd)


def build(sessions: list[Session], options: RenderOptions, merged: bool, warnings: list[str]) -> bytes:
    """DOCX bytes of one session or several merged (with a contents list)."""
    d = docx.Document()
    t = options.doc_template(warnings)
    if t.accent_color:
        options = dataclasses.replace(options, accent_color=t.accent_color)
    accent = RGBColor.from_string(options.accent_color.lstrip("#").upper())
    sec = d.sections[0]
    if (t.page_size or options.page_size).lower() == "letter":
        sec.page_width, sec.page_height = Cm(21.59), Cm(27.94)
    else:
        sec.page_width, sec.page_height = Cm(21.0), Cm(29.7)
    for side in ("left_margin", "right_margin", "top_margin", "bottom_margin"):
        setattr(sec, side, Cm(t.margin_cm))
    normal = d.styles["Normal"]
    normal.font.name = "DejaVu Sans"
    normal.font.size = Pt(10)
    normal.element.rPr.rFonts.set(qn("w:eastAsia"), "DejaVu Sans")
    for name in ("Title", "Heading 1", "Heading 2"):
        st = d.styles[name]
        st.font.color.rgb = accent
        st.font.name = "DejaVu Sans"
    title = f"Meetings ({len(sessions)})" if merged else (one_line(sessions[0].title) or "Untitled session")
    d.core_properties.title = clean(title)[:255]       # the core properties allow 255 characters
    d.core_properties.author = clean(one_line(options.company))[:255] or "Silent Steno"
    hp = sec.header.paragraphs[0]
    hp.text = clean(title) + (f"    {clean(one_line(options.company))}" if options.company else "")
    hp.runs[0].font.size = Pt(8)
    hp.runs[0].font.color.rgb = RGBColor(0x5F, 0x6B, 0x7A)
    fp = sec.footer.paragraphs[0]
    fp.alignment = WD_ALIGN_PARAGRAPH.RIGHT
    for part in ("page ", "PAGE", " of ", "NUMPAGES"):
        r = fp.add_run()
        r.font.size = Pt(8)
        if part.isupper():
            _field(r, part)
        else:
            r.text = part
    if options.logo:
        try:
            d.add_picture(options.logo, height=Cm(1.4))
        except Exception as e:  # unreadable logo: the report still renders
            warnings.append(f"logo {options.logo} unusable: {e}")
    if merged:
        d.add_heading(clean(title), 0)
        d.add_heading("Contents", 1)
        for i, s in enumerate(sessions, 1):
            name = clean(one_line(s.title)) or "Untitled session"
            _mark(d.add_paragraph(f"{i}. {name} — {date_text(s.start_time, options.time_zone)} "
                                  f"({duration_text(s.duration_seconds)})"), name, options.language)
    for i, s in enumerate(sessions):
        if merged:
            d.add_page_break()
        _session(d, s, options, merged, accent, t.sections)
    buf = io.BytesIO()
    d.save(buf)
    return stable_zip(buf.getvalue())


def _table(d, header: list[str], rows: list[list[str]], widths: list[float], accent_hex: str, language: str):
    t = d.add_table(rows=1, cols=len(header))
    t.style = "Table Grid" if "Table Grid" in [s.name for s in d.styles] else t.style
    t.alignment = WD_TABLE_ALIGNMENT.LEFT
    # LibreOffice lays tables out by the grid (w:tblGrid), Word by the cell widths: set both, fixed.
    t.autofit = False
    for gc, w in zip(t._tbl.tblGrid.gridCol_lst, widths):
        gc.w = Cm(w)
    for c, h in zip(t.rows[0].cells, header):
        c.text = h
        c.paragraphs[0].runs[0].bold = True
        c.paragraphs[0].runs[0].font.color.rgb = RGBColor(0xFF, 0xFF, 0xFF)
        _shade(c, accent_hex)
    for row in rows:
        cells = t.add_row().cells
        for c, v in zip(cells, row):
            c.text = clean(v)
            _mark(c.paragraphs[0], c.text, language)
    for row in t.rows:
        for c, w in zip(row.cells, widths):
            c.width = Cm(w)
    return t


_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def _transcript_xml(d, s: Session, language: str) -> None:
    """Append one paragraph per segment as WordprocessingML built in one parse.

    Adding runs through python-docx's object API costs ~0.6 ms each; a 2,000-segment meeting
    would take seconds, the XML string takes a few milliseconds.
    """
    from lxml import etree
    from xml.sax.saxutils import escape

    colours = speaker_colours(s)
    parts = [f'<r xmlns:w="{_W}">']
    for g in s.segments:
        name = clean(one_line(g.speaker_name)) or "Unknown speaker"
        text = clean(one_line(g.text))
        rtl, attrs = _lang_attrs(text, language)
        bidi, rtl_r = ("<w:bidi/>", "<w:rtl/>") if rtl else ("", "")
        who_rtl, who_attrs = _lang_attrs(name, language)
        colour = colours.get(one_line(g.speaker_name) or "Unknown speaker", "000000").lstrip("#").upper()
        parts.append(
            f'<w:p><w:pPr>{bidi}<w:spacing w:after="60"/></w:pPr>'
            f'<w:r><w:rPr><w:color w:val="7A8594"/><w:sz w:val="16"/>{rtl_r}</w:rPr>'
            f'<w:t xml:space="preserve">{hms(g.start)}  </w:t></w:r>'
            f'<w:r><w:rPr><w:b/><w:color w:val="{colour}"/>{"<w:rtl/>" if who_rtl else ""}<w:lang {who_attrs}/>'
            f'</w:rPr><w:t xml:space="preserve">{escape(name)}  </w:t></w:r>'
            f'<w:r><w:rPr>{rtl_r}<w:lang {attrs}/></w:rPr><w:t xml:space="preserve">{escape(text)}</w:t></w:r></w:p>')
    parts.append("</r>")
    root = etree.fromstring("".join(parts).encode("utf-8"))
    sect = d.element.body.sectPr
    for p in list(root):
        if sect is not None:
            sect.addprevious(p)
        else:
            d.element.body.append(p)


def _session(d, s: Session, options: RenderOptions, merged: bool, accent, sections) -> None:
    lang = options.language

    def para(text: str):
        p = d.add_paragraph(text)
        _mark(p, text, lang)
        return p

    if "header" in sections:
        title = clean(one_line(s.title)) or "Untitled session"
        _mark(d.add_heading(title, 1 if merged else 0), title, lang)
        meta = [("Date", date_text(s.start_time, options.time_zone)), ("Duration", duration_text(s.duration_seconds)),
                ("Location", one_line(s.summary.location)), ("Platform", one_line(s.meeting_platform)),
                ("Session", s.uuid)]
        p = d.add_paragraph()
        for k, v in meta:
            if v:
                r = p.add_run(f"{k} ")
                r.bold = True
                p.add_run(f"{clean(v)}    ")
        if s.description:
            para(clean(s.description))
    h = 2 if merged else 1
    if "summary" in sections:
        d.add_heading("Summary", h)
        paras = [x.strip() for x in clean(s.summary_text).split("\n\n") if x.strip()]
        for x in paras or ["No summary available."]:
            para(x)
    if "action_items" in sections:
        d.add_heading("Action items", h)
        if s.action_items:
            _table(d, ["", "Action", "Owner", "Due"],
                   [["☑" if a.done else "☐", one_line(a.text), one_line(a.owner) or "—",
                     a.due.isoformat() if a.due else "—"] for a in s.action_items],
                   [0.8, 9.7, 4.0, 2.5], options.accent_color, lang)
        else:
            d.add_paragraph("No action items.")
    if "topics" in sections and s.topics:
        d.add_heading("Topics", h)
        para(" · ".join(clean(one_line(t)) for t in s.topics))
    if "participants" in sections:
        d.add_heading("Participants", h)
        rows = speaker_rows(s)
        if rows:
            _table(d, ["Name", "Role", "Speaking time", "Share", "Words"],
                   [[r.name, r.role, hms(r.seconds), f"{r.share:.1f} %", f"{r.words:,}"] for r in rows],
                   [5.0, 4.0, 3.0, 2.5, 2.5], options.accent_color, lang)
        else:
            d.add_paragraph("No participants recorded.")
    if "transcript" in sections:
        d.add_heading("Transcript", h)
        if not s.segments:
            d.add_paragraph("No transcript available.")
        if s.segments:
            _transcript_xml(d, s, lang)
