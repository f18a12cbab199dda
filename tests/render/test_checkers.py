"""Outputs checked by tools nobody here wrote: LibreOffice, tidy, srt, webvtt-py, openpyxl, Chromium."""
from __future__ import annotations

import csv
import html
import io
import re
import shutil
import subprocess
import zipfile

import pytest

from steno_exportd import render
from tests.parts import require_tool
from tests.render import sessions as S

LONG = S.long_session(200)
MULTI = S.multilingual_session()
HOSTILE = S.hostile_titles_session()
SCRIPTS = S.scripts_session()


def soffice_convert(tmp_path, name: str, data: bytes, to: str) -> bytes:
    """Convert with LibreOffice headless (its own profile, so parallel runs never share one)."""
    exe = shutil.which("soffice") or "soffice"
    require_tool("soffice")
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / "lo-out"
    p = subprocess.run([exe, f"-env:UserInstallation=file://{tmp_path}/lo-profile", "--headless",
                        "--convert-to", to, "--outdir", str(out), str(src)], capture_output=True, text=True,
                       timeout=180)
    stem = name.rsplit(".", 1)[0]
    hits = list(out.glob(f"{stem}.*")) if out.is_dir() else []
    assert p.returncode == 0 and hits, p.stdout + p.stderr
    return hits[0].read_bytes()


@pytest.mark.parametrize("session", [MULTI, HOSTILE, SCRIPTS], ids=["multilingual", "hostile", "scripts"])
def test_libreoffice_converts_the_docx(tmp_path, session):
    data = render.get("docx").render(session)
    text = soffice_convert(tmp_path, "report.docx", data, "txt:Text (encoded):UTF8").decode("utf-8-sig")
    for g in session.segments[:3]:
        assert " ".join(g.text.split())[:20] in text


def test_docx_action_table_columns_keep_their_widths_in_libreoffice(tmp_path):
    data = render.get("docx").render(MULTI, render.RenderOptions(template="action_items"))
    html = soffice_convert(tmp_path, "actions.docx", data, "html").decode("utf-8", "replace")
    table = re.search(r"<table.*?</table>", html, re.S | re.I).group(0)
    widths = [int(w) for w in re.findall(r'<col width="?(\d+)', table, re.I)]
    assert len(widths) == 4, table[:500]
    box, action, owner, due = widths
    assert action > 2 * owner and owner > due and due > box, widths


def test_xlsx_reads_back_with_openpyxl_and_libreoffice(tmp_path):
    import openpyxl
    data = render.get("xlsx").render(MULTI)
    wb = openpyxl.load_workbook(io.BytesIO(data))
    assert wb.sheetnames == ["Transcript", "Action items", "Participants"]
    rows = list(wb["Transcript"].iter_rows(values_only=True))
    assert rows[0][:3] == ("Time", "Speaker", "Text")
    assert [r[2] for r in rows[1:]] == [" ".join(g.text.split()) for g in MULTI.segments]
    assert rows[1][1] == MULTI.segments[0].speaker_name and rows[3][0] == "00:00:40"
    actions = list(wb["Action items"].iter_rows(values_only=True))
    assert actions[1][0] == MULTI.action_items[0].text and actions[1][1] == "Борис"
    people = list(wb["Participants"].iter_rows(values_only=True))
    assert "Δημήτρης Παπαδόπουλος" in [p[0] for p in people]
    out = soffice_convert(tmp_path, "t.xlsx", data, "csv:Text - txt - csv (StarCalc):44,34,76")
    first = list(csv.reader(io.StringIO(out.decode("utf-8"))))
    assert first[1][2] == S.CYRILLIC


def test_xlsx_formula_cells_are_text(tmp_path):
    import openpyxl
    data = render.get("xlsx").render(HOSTILE)
    wb = openpyxl.load_workbook(io.BytesIO(data))
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for c in row:
                assert c.data_type != "f", (ws.title, c.coordinate, c.value)
    texts = [r[2] for r in wb["Transcript"].iter_rows(min_row=2, values_only=True)]
    assert texts[0] == S.FORMULAS[0]              # shown as typed, stored as text with a quote prefix
    assert all(c.quotePrefix for c in wb["Transcript"]["C"][1:5])
    sheet = zipfile.ZipFile(io.BytesIO(data)).read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet
    out = soffice_convert(tmp_path, "h.xlsx", data, "csv:Text - txt - csv (StarCalc):44,34,76").decode()
    assert "HYPERLINK" in out and "evil.example" in out     # LibreOffice read it as text, not a link


@pytest.mark.parametrize("session", [LONG, MULTI, HOSTILE, SCRIPTS], ids=["long", "multilingual", "hostile",
                                                                          "scripts"])
def test_html_passes_tidy(tmp_path, session):
    require_tool("tidy")
    f = tmp_path / "t.html"
    f.write_bytes(render.get("html").render(session, render.RenderOptions(audio_filename="audio.wav")))
    p = subprocess.run(["tidy", "-q", "-e", "-utf8", str(f)], capture_output=True, text=True)
    # tidy exits 0 when clean, 1 for warnings, 2 for errors
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("session", [LONG, MULTI, HOSTILE, SCRIPTS], ids=["long", "multilingual", "hostile",
                                                                          "scripts"])
def test_subtitle_lines_at_most_42_characters_with_the_speaker(session):
    import srt
    import webvtt
    subs = list(srt.parse(render.get("srt").render(session).decode()))
    assert subs
    for s in subs:
        lines = s.content.split("\n")
        assert 1 <= len(lines) <= 2 and all(len(x) <= 42 for x in lines), lines
    caps = list(webvtt.from_string(render.get("vtt").render(session).decode()))
    for c in caps:
        lines = html.unescape(c.text).split("\n")       # what the player shows
        assert 1 <= len(lines) <= 2 and all(len(x) <= 42 for x in lines), lines
    words = " ".join(" ".join(s.content.split("\n")) for s in subs)
    for g in session.segments[:5]:
        assert g.text.split()[0][:10] in words


def _docx_colours(data: bytes) -> dict[str, str]:
    xml = zipfile.ZipFile(io.BytesIO(data)).read("word/document.xml").decode()
    out = {}
    who = r'\d\d:\d\d:\d\d  </w:t></w:r><w:r><w:rPr><w:b/><w:color w:val="([0-9A-F]{6})"/>.*?</w:rPr><w:t[^>]*>([^<]*?)\s*</w:t>'
    for colour, name in re.findall(who, xml):
        out.setdefault(name.strip(), colour.lower())
    return out


def _html_colours(data: bytes) -> dict[str, str]:
    html = data.decode()
    classes = dict(re.findall(r"\.(sp\d+) \{ --who: #([0-9a-f]{6}); \}", html))
    out = {}
    for cls, name in re.findall(r'<span class="who (sp\d+)"[^>]*>([^<]*)</span>', html):
        out.setdefault(name, classes[cls])
    return out


def _pdf_colours(data: bytes, tmp_path) -> set[str]:
    require_tool("qpdf")
    src, qdf = tmp_path / "c.pdf", tmp_path / "c.qdf"
    src.write_bytes(data)
    subprocess.run(["qpdf", "--qdf", "--object-streams=disable", str(src), str(qdf)], check=True)
    ops = re.findall(rb"([\d.]+) ([\d.]+) ([\d.]+) rg", qdf.read_bytes())
    return {"%02x%02x%02x" % tuple(round(float(v) * 255) for v in op) for op in ops}


def test_speaker_colours_distinct_and_the_same_in_pdf_html_docx(tmp_path):
    s = LONG
    html = _html_colours(render.get("html").render(s))
    docx = _docx_colours(render.get("docx").render(s))
    names = {g.speaker_name for g in s.segments}
    assert set(html) == names and set(docx) == names
    assert len(set(html.values())) == len(names)
    assert html == docx
    pdf = _pdf_colours(render.get("pdf").render(s, render.RenderOptions(template="transcript")), tmp_path)
    assert set(html.values()) <= pdf, (html, pdf)


def test_long_word_stays_inside_the_html_card(tmp_path, chromium_page):
    (tmp_path / "t.html").write_bytes(render.get("html").render(HOSTILE))
    page = chromium_page
    page.set_viewport_size({"width": 800, "height": 900})
    page.goto((tmp_path / "t.html").as_uri())
    over = page.evaluate("""() => Array.from(document.querySelectorAll('section.card, header.doc, main'))
        .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.className || el.tagName)""")
    assert over == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_long_word_wraps_in_the_pdf():
    from tests.render.test_scripts import pdftotext
    text = pdftotext(render.get("pdf").render(HOSTILE, render.RenderOptions(template="transcript")))
    assert S.LONG_WORD[:60] in text.replace("\n", "")
