"""Any script in one document: PDF text extracts in logical order, fonts embedded, lang/dir marked."""
from __future__ import annotations

import io
import re
import subprocess
import unicodedata
import zipfile

import pytest

from steno_exportd import render
from tests.parts import require, require_tool
from tests.render import sessions as S

SESSION = S.scripts_session()
_BIDI_MARKS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def pdftotext(data: bytes) -> str:
    """pdftotext's text with its own bidi embedding marks removed and presentation forms folded (NFKC)."""
    require_tool("pdftotext")
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", "-", "-"], input=data, capture_output=True,
                         check=True).stdout.decode()
    return unicodedata.normalize("NFKC", _BIDI_MARKS.sub("", out))


def pdffonts(data: bytes, tmp_path) -> list[list[str]]:
    """Rows of `pdffonts`: name, type, encoding, emb, sub, uni, object, ID."""
    require_tool("pdffonts")
    f = tmp_path / "x.pdf"
    f.write_bytes(data)
    out = subprocess.run(["pdffonts", str(f)], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines()[2:] if line.strip()]


def qpdf_check(data: bytes, tmp_path) -> None:
    require_tool("qpdf")
    f = tmp_path / "q.pdf"
    f.write_bytes(data)
    p = subprocess.run(["qpdf", "--check", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def cjk_font() -> str:
    from steno_exportd.render.fonts import fallback_fonts
    fonts = fallback_fonts()
    require(bool(fonts), "a CJK TrueType font (fonts-droid-fallback)")
    return fonts[0]


@pytest.mark.parametrize("template", ["detailed", "summary"])
def test_pdf_extracts_japanese_arabic_greek_in_logical_order(template):
    cjk_font()
    res = render.get("pdf").render_result(SESSION, render.RenderOptions(template=template))
    text = pdftotext(res.data)
    for sentence in (S.JAPANESE, S.ARABIC, S.GREEK):
        assert sentence in text, (sentence, text[:2000])
    if template == "detailed":
        for sentence in (S.CHINESE, S.HEBREW, S.CYRILLIC, S.LATIN):
            assert sentence in text, sentence
    assert not [w for w in res.warnings if "lacks" in w], res.warnings


def test_pdf_rtl_is_shaped_and_right_aligned_in_visual_order():
    """The drawn glyphs of an Arabic line are joined forms in visual (right-to-left) order."""
    require_tool("pdftotext")
    data = render.get("pdf").render(SESSION, render.RenderOptions(template="transcript"))
    raw = subprocess.run(["pdftotext", "-enc", "UTF-8", "-raw", "-", "-"], input=data, capture_output=True,
                         check=True).stdout.decode()
    raw = _BIDI_MARKS.sub("", raw)
    # joined presentation forms (FExx) are drawn: the letters are shaped, not isolated
    assert any(0xFE70 <= ord(c) <= 0xFEFF for c in raw)


def test_cjk_font_path_keeps_latin_cyrillic_and_greek(tmp_path):
    font = cjk_font()
    opts = render.RenderOptions(template="detailed", font_path=font)
    res = render.get("pdf").render_result(SESSION, opts)
    text = pdftotext(res.data)
    for sentence in (S.LATIN, S.CYRILLIC, S.GREEK, S.JAPANESE):
        assert sentence in text, sentence
    assert not [w for w in res.warnings if "lacks" in w], res.warnings


@pytest.mark.parametrize("merged", [False, True])
def test_pdf_every_font_embedded_and_qpdf_clean(tmp_path, merged):
    cjk_font()
    r = render.get("pdf")
    opts = render.RenderOptions(template="detailed", company="ACME")
    data = r.render_merged([SESSION, S.hostile_titles_session()], opts) if merged else r.render(SESSION, opts)
    rows = pdffonts(data, tmp_path)
    assert rows
    not_embedded = [row for row in rows if row[-5] != "yes"]
    assert not not_embedded, rows
    assert not [row for row in rows if "Helvetica" in row[0]], rows
    qpdf_check(data, tmp_path)


def test_pdf_full_speaker_names_in_the_transcript():
    text = pdftotext(render.get("pdf").render(S.multilingual_session(), render.RenderOptions(template="transcript")))
    assert "…" not in text
    body = text.split("Transcript", 1)[1]
    assert "Παπαδόπουλος" in body and "Δημήτρης" in body


def test_html_marks_language_and_direction_per_paragraph():
    html = render.get("html").render(SESSION).decode()
    assert re.search(r'<html lang="en"', html)
    ar = re.search(r'<span class="txt"[^>]*>' + re.escape(S.ARABIC) + "<", html)
    assert ar and 'dir="rtl"' in ar.group(0) and 'lang="ar"' in ar.group(0)
    he = re.search(r'<span class="txt"[^>]*>' + re.escape(S.HEBREW) + "<", html)
    assert he and 'dir="rtl"' in he.group(0) and 'lang="he"' in he.group(0)
    ja = re.search(r'<span class="txt"[^>]*>' + re.escape(S.JAPANESE) + "<", html)
    assert ja and 'lang="ja"' in ja.group(0) and 'dir="ltr"' in ja.group(0)
    el = re.search(r'<span class="txt"[^>]*>' + re.escape(S.GREEK) + "<", html)
    assert el and 'lang="el"' in el.group(0)


def test_html_language_from_config():
    html = render.get("html").render(SESSION, render.RenderOptions(language="de")).decode()
    assert '<html lang="de"' in html


def test_docx_marks_rtl_paragraphs_and_languages():
    data = render.get("docx").render(SESSION)
    xml = zipfile.ZipFile(io.BytesIO(data)).read("word/document.xml").decode()
    paras = re.findall(r"<w:p[ >].*?</w:p>", xml, re.S)
    ar = [p for p in paras if S.ARABIC in p and "Budget" not in p]
    assert ar and all("<w:bidi/>" in p and "<w:rtl/>" in p and 'w:bidi="ar"' in p for p in ar), ar[:1]
    ja = [p for p in paras if S.JAPANESE in p and "<w:t" in p]
    assert ja and all('w:eastAsia="ja"' in p for p in ja)
    gr = [p for p in paras if S.GREEK in p]
    assert gr and not any("<w:bidi/>" in p for p in gr)


def test_times_in_the_recorders_time_zone():
    s = S.multilingual_session()          # starts 2026-03-04 09:30 UTC
    opts = render.RenderOptions(time_zone="Europe/Athens")
    assert "2026-03-04 11:30 EET" in render.get("txt").render(s, opts).decode()
    assert "2026-03-04 11:30 EET" in render.get("html").render(s, opts).decode()
    assert "2026-03-04 11:30 EET" in pdftotext(render.get("pdf").render(s, opts))
    ny = render.get("md").render(s, render.RenderOptions(time_zone="America/New_York")).decode()
    assert "2026-03-04 04:30 EST" in ny
