"""Hostile titles and names (markup, control characters, formula prefixes, 300-character words, mixed
scripts) through every format; each output read back by a parser nobody here wrote."""
from __future__ import annotations

import csv
import html
import io
import json
import re
import subprocess
import unicodedata

import pytest

from steno_exportd import render
from steno_exportd.formats import FORMATS
from steno_exportd.render.common import one_line
from tests.parts import require_tool
from tests.render import sessions as S

HOSTILE = S.hostile_titles_session()
OPTS = render.RenderOptions()
_MARKS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def pdftotext(data: bytes) -> str:
    require_tool("pdftotext")
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", "-", "-"], input=data, capture_output=True,
                         check=True).stdout.decode()
    return unicodedata.normalize("NFKC", _MARKS.sub("", out))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "audio"])
def test_every_format_renders_hostile_titles(fmt):
    r = render.get(fmt)
    data = r.render(HOSTILE, OPTS)
    assert data
    if r.mergeable:
        assert r.render_merged([HOSTILE, S.multilingual_session()], OPTS)


@pytest.mark.parametrize("template", ["detailed", "summary"])
def test_merged_pdf_contents_keep_markup_as_text(template):
    title = "R&D <i>unclosed & a<b"
    s1 = S.retitled(S.multilingual_session(), title)
    s2 = S.retitled(S.empty_session(), "<draft> plan")
    data = render.get("pdf").render_merged([s1, s2], render.RenderOptions(template=template))
    text = pdftotext(data)
    contents = text.split("Contents", 1)[1]
    assert title in contents and "<draft> plan" in contents


def test_pdf_hostile_title_everywhere(tmp_path):
    text = pdftotext(render.get("pdf").render(HOSTILE, OPTS))
    assert "R&D <i>unclosed & a<b <draft>" in text
    assert "=HYPERLINK(" in text


def test_csv_neutralises_formula_cells():
    rows = list(csv.reader(io.StringIO(render.get("csv").render(HOSTILE).decode("utf-8-sig"), newline="")))
    cells = [c for row in rows[1:] for c in row[4:6]]
    for c in cells:
        assert not c[:1] in ("=", "+", "-", "@", "\t", "\r"), c
    texts = [row[5] for row in rows[1:]]
    assert texts[0] == "'" + S.FORMULAS[0] and texts[1] == "'+1+2" and texts[3] == "'@SUM(A1:A2)"
    # numbers stay numbers
    assert all(re.fullmatch(r"\d+\.\d{3}", row[2]) for row in rows[1:])


def test_srt_and_vtt_keep_tags_as_text():
    import srt
    import webvtt
    srt_text = render.get("srt").render(HOSTILE).decode()
    for sub in srt.parse(srt_text):
        # no player-interpreted markup: <b>, <i>, <font>, {\an8} never reach the player as tags
        assert not re.search(r"<\s*/?\s*[A-Za-z]", sub.content), sub.content
        assert "{\\" not in sub.content
    vtt = list(webvtt.from_string(render.get("vtt").render(HOSTILE).decode()))
    assert any("<i>unclosed & a<b" in html.unescape(c.text) for c in vtt)   # escaped, shown as typed


def test_ics_hostile_summary_parses_back():
    import icalendar
    cal = icalendar.Calendar.from_ical(render.get("ics").render(HOSTILE))
    todos = list(cal.walk("VTODO"))
    assert [str(t["SUMMARY"]) for t in todos] == [one_line(a.text) for a in HOSTILE.action_items]
    assert one_line(S.HOSTILE_TITLE) in str(cal["X-WR-CALNAME"])


def test_html_hostile_title_escaped_and_valid():
    import html5lib
    data = render.get("html").render(HOSTILE)
    parser = html5lib.HTMLParser(strict=True)
    doc = parser.parse(data)
    assert not parser.errors
    text = data.decode()
    assert "<i>unclosed" not in text and "&lt;i&gt;unclosed" in text
    assert "<b>Eve</b>" not in text and "<font" not in text


def test_docx_hostile_title_round_trips():
    import docx
    d = docx.Document(io.BytesIO(render.get("docx").render(HOSTILE)))
    text = "\n".join(p.text for p in d.paragraphs)
    assert one_line(S.HOSTILE_TITLE).replace("\x07", "") in text


def test_json_hostile_title_verbatim_but_clean():
    doc = json.loads(render.get("json").render(HOSTILE))
    assert doc["session"]["title"] == S.HOSTILE_TITLE.replace("\x07", "")
