"""Every format renders every test session; each output is read back by an independent reader."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys

import pytest

from steno_exportd import render
from steno_exportd.errors import NotFoundError, RenderError
from steno_exportd.formats import FORMATS
from steno_exportd.render.common import one_line
from steno_exportd.render.cues import speaker_prefix
from steno_exportd.render.srt import plain
from tests.parts import require_tool
from tests.render import sessions as S

SESSIONS = S.all_sessions()
IDS = ["long", "multilingual", "hostile", "empty"]
OPTS = render.RenderOptions()
_cache: dict = {}


def rendered(fmt: str, i: int, template: str = "detailed") -> render.Rendered:
    key = (fmt, i, template)
    if key not in _cache:
        _cache[key] = render.get(fmt).render_result(SESSIONS[i], render.RenderOptions(template=template))
    return _cache[key]


def test_registry_lists_every_format_and_rejects_unknown_names():
    assert render.names() == list(FORMATS)
    with pytest.raises(NotFoundError) as e:
        render.get("rtf")
    assert "txt" in str(e.value) and "pdf" in str(e.value)
    with pytest.raises(NotFoundError) as e:
        render.get("txt").render(SESSIONS[1], render.RenderOptions(template="fancy"))
    assert "summary" in str(e.value) and "detailed" in str(e.value)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "audio"])
def test_renderer_attributes_and_ascii_filenames(fmt):
    r = render.get(fmt)
    assert r.name == fmt and r.version >= 1 and r.media_type
    assert r.heavy == (fmt in ("pdf", "docx", "xlsx"))
    for s in SESSIONS:
        name = r.filename(s, OPTS)
        assert name.isascii() and name.endswith("." + r.extension) and "/" not in name


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in ("audio", "pdf", "docx", "xlsx")])
@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_every_light_format_renders_every_session(fmt, i):
    data = rendered(fmt, i).data
    assert isinstance(data, bytes)
    data.decode("utf-8-sig")


def test_txt_has_header_summary_actions_and_timed_lines():
    text = rendered("txt", 0).data.decode()
    assert text.startswith("Quarterly planning")
    assert "Duration:     2 h 00 min" in text and "Anna Schmidt" in text
    assert "SUMMARY" in text and "Send the revised budget (owner: Anna Schmidt, due 2026-03-09)" in text
    seg = SESSIONS[0].segments[1]
    assert f"[00:00:03] {seg.speaker_name}: {seg.text}" in text
    empty = rendered("txt", 3).data.decode()
    assert "No summary available." in empty and "No transcript available." in empty
    assert "Participants: none recorded" in empty


def test_text_outputs_have_no_control_characters():
    for fmt in ("txt", "md", "html", "json", "srt", "vtt", "csv", "ics"):
        data = rendered(fmt, 2).data.decode("utf-8-sig")
        assert not any(ord(c) < 32 and c not in "\r\n\t" for c in data), fmt


def test_json_validates_against_the_shipped_schema():
    import jsonschema
    from steno_exportd.render.json_ import SCHEMA_PATH
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for i in range(4):
        doc = json.loads(rendered("json", i).data)
        validator.validate(doc)
        assert len(doc["segments"]) == len(SESSIONS[i].segments)
    doc = json.loads(rendered("json", 1).data)
    assert doc["segments"][0]["text"] == S.CYRILLIC and doc["schema_version"] == "1.0"
    assert doc["action_items"][0] == {"text": f"Перевести отчёт: {S.GREEK}", "owner": "Борис",
                                      "due": "2026-04-01", "done": False}


def _speakers(i):
    return {one_line(g.speaker_name) for g in SESSIONS[i].segments}


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_srt_parses_back_monotonic_with_speakers(i):
    import srt
    subs = list(srt.parse(rendered("srt", i).data.decode()))
    assert len(subs) >= len([g for g in SESSIONS[i].segments if g.text.strip()])
    starts = [s.start for s in subs]
    assert starts == sorted(starts)
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    for s in subs:
        assert s.end > s.start
        assert any(s.content.startswith(speaker_prefix(plain(name))) for name in _speakers(i)), s.content
        assert all(len(line) <= 42 for line in s.content.split("\n"))
        assert len(s.content.split("\n")) <= 2


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_vtt_parses_back_monotonic_with_voices(i):
    import webvtt
    from html import unescape
    caps = list(webvtt.from_string(rendered("vtt", i).data.decode()))
    assert len(caps) >= len([g for g in SESSIONS[i].segments if g.text.strip()])
    starts = [c.start for c in caps]
    assert starts == sorted(starts)
    for c in caps:
        assert c.end > c.start  # fixed-width HH:MM:SS.mmm strings compare in time order
        assert unescape(c.voice) in _speakers(i)
        assert "-->" not in c.text


def test_hostile_cue_text_survives_escaped():
    import webvtt
    from html import unescape
    caps = list(webvtt.from_string(rendered("vtt", 2).data.decode()))
    assert "<script>" in unescape(" ".join(c.text.replace("\n", " ") for c in caps[:1]))


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_csv_reads_back_with_bom(i):
    data = rendered("csv", i).data
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert len(rows) == len(SESSIONS[i].segments)
    for row, g in zip(rows, SESSIONS[i].segments):
        assert row["text"] == one_line(g.text) and row["speaker"] == one_line(g.speaker_name)
        assert abs(float(row["start_seconds"]) - g.start) < 0.001
    assert list(rows[0]) if rows else True


def test_csv_multilingual_accents_verbatim():
    rows = list(csv.reader(io.StringIO(rendered("csv", 1).data.decode("utf-8-sig"), newline="")))
    assert rows[0][:6] == ["start", "end", "start_seconds", "end_seconds", "speaker", "text"]
    assert rows[3][5] == S.LATIN and rows[1][5] == S.CYRILLIC


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_ics_parses_with_icalendar(i):
    import icalendar
    cal = icalendar.Calendar.from_ical(rendered("ics", i).data)
    todos = [c for c in cal.walk("VTODO")]
    assert len(todos) == len(SESSIONS[i].action_items)
    for todo, a in zip(todos, SESSIONS[i].action_items):
        assert str(todo["SUMMARY"]) == one_line(a.text)
        if a.due:
            assert todo.decoded("DUE") == a.due
        else:
            assert "DUE" not in todo
    if i == 0:
        assert str(todos[2]["STATUS"]) == "COMPLETED"


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_html_parses_strictly_and_escapes_markup(i):
    import html5lib
    data = rendered("html", i).data
    parser = html5lib.HTMLParser(strict=True)
    parser.parse(data)
    assert not parser.errors
    text = data.decode()
    assert "<script>alert" not in text
    assert "http://" not in text.replace("http://www.w3.org", "") and "src=\"http" not in text


def test_md_escapes_markup_and_lists_actions():
    md = rendered("md", 2).data.decode()
    assert "<script>" not in md and "\\<script\\>" in md
    md0 = rendered("md", 0).data.decode()
    assert "- [x] Close the Q1 report — **Boris Ivanov**" in md0
    assert "| Anna Schmidt | Chair, ACME |" in md0


@pytest.mark.parametrize("fmt", ["txt", "md", "html", "pdf", "docx"])
def test_merged_documents_have_contents_and_every_session(fmt):
    r = render.get(fmt)
    data = r.render_merged(SESSIONS[1:], OPTS)
    if fmt == "pdf":
        text = _pdftotext(data)
    elif fmt == "docx":
        import docx
        text = "\n".join(p.text for p in docx.Document(io.BytesIO(data)).paragraphs)
    else:
        text = data.decode()
    assert "Contents" in text
    assert "Международная встреча" in text and "Hostile" in text and "Untitled session" in text


def test_non_mergeable_format_says_so():
    with pytest.raises(RenderError):
        render.get("srt").render_merged(SESSIONS[:2], OPTS)


def _pdftotext(data: bytes) -> str:
    require_tool("pdftotext")
    return subprocess.run(["pdftotext", "-enc", "UTF-8", "-", "-"], input=data, capture_output=True,
                          check=True).stdout.decode()


# The long session's full transcript (detailed/transcript) is covered by test_pdf_long_meeting.
@pytest.mark.parametrize("i,template", [(i, t) for i in range(4) for t in ("summary", "detailed", "action_items",
                                                                        "transcript")
                                        if not (i == 0 and t in ("detailed", "transcript"))])
def test_pdf_every_template_every_session_text_extracts(i, template):
    res = rendered("pdf", i, template)
    assert res.data.startswith(b"%PDF")
    text = _pdftotext(res.data)
    assert "page 1 of" in text
    if i == 1 and template != "action_items":
        if template in ("summary", "detailed"):
            assert S.CYRILLIC in text and S.GREEK in text
    if i == 1 and template in ("detailed", "transcript"):
        assert S.LATIN in text
        assert S.CJK in text and not [w for w in res.warnings if "lack" in w], res.warnings   # the CJK fallback


def test_pdf_long_meeting_pages_numbered_with_participant_table():
    res = rendered("pdf", 0)
    text = _pdftotext(res.data)
    pages = text.count("\f")
    assert pages > 40 and f"page {pages} of {pages}" in text
    assert "Speaking time" in text and "Words" in text and "Anna Schmidt" in text
    assert SESSIONS[0].segments[-1].text.split()[0] in text


def test_pdf_hostile_and_empty_say_so():
    text = _pdftotext(rendered("pdf", 3).data)
    assert "No transcript available." in text and "No participants recorded." in text
    assert "No summary available." in text
    hostile = _pdftotext(rendered("pdf", 2).data)
    assert "<script>alert(1)</script>" in hostile and "]]>" in hostile


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_docx_opens_with_python_docx(i):
    import docx
    d = docx.Document(io.BytesIO(rendered("docx", i).data))
    text = "\n".join(p.text for p in d.paragraphs)
    cells = "\n".join(c.text for t in d.tables for row in t.rows for c in row.cells)
    if i == 1:
        assert S.CYRILLIC in text and S.GREEK in text
        assert "Chloé Dupont" in cells
        assert f"00:00:40  Chloé Dupont  {S.LATIN}" in text
    if i == 3:
        assert "No transcript available." in text
    footer = d.sections[0].footer._element.xml
    assert "NUMPAGES" in footer and "PAGE" in footer


def test_a_docx_rendered_again_later_is_the_same_file():
    """An export and the mail of it (or a second export) render the document at different times; the
    files, and so their SHA256SUMS, must be the same (python-docx dates the ZIP entries when it saves)."""
    import time
    first = render.get("docx").render_result(SESSIONS[1], OPTS).data
    time.sleep(2.1)         # a ZIP entry's time has 2-second steps
    assert render.get("docx").render_result(SESSIONS[1], OPTS).data == first


def test_audio_is_the_original_file(tmp_path):
    wav = S.write_wav(tmp_path / "rec.wav")
    s = S.with_audio(SESSIONS[1], wav)
    r = render.get("audio")
    assert r.filename(s, OPTS) == "audio.wav"
    assert r.source_path(s) == wav and r.render(s) == wav.read_bytes()
    with pytest.raises(RenderError):
        r.source_path(SESSIONS[3])


def test_user_template_overrides_and_broken_one_falls_back(tmp_path, caplog):
    (tmp_path / "txt.j2").write_text("CUSTOM {{ sessions[0].title }}\n")
    opts = render.RenderOptions(template_dir=str(tmp_path))
    assert render.get("txt").render(SESSIONS[1], opts).decode() == f"CUSTOM {one_line(SESSIONS[1].title)}\n"
    (tmp_path / "md.j2").write_text("line one\n{% for x in %}\n")
    res = render.get("md").render_result(SESSIONS[1], opts)
    assert res.data == rendered("md", 1).data
    assert any("md.j2" in w and ":2" in w for w in res.warnings), res.warnings
    (tmp_path / "html.j2").write_text("ok\n{{ 1 / 0 }}\n")
    res = render.get("html").render_result(SESSIONS[1], opts)
    assert res.data == rendered("html", 1).data
    assert any("html.j2" in w and "line 2" in w for w in res.warnings), res.warnings


def test_options_from_config():
    from steno_exportd import config
    cfg = config.load(None) if hasattr(config, "load") else None
    rc = getattr(cfg, "render", None) or config.RenderConfig()
    o = render.RenderOptions.from_config(rc, template="summary")
    assert o.template == "summary" and o.page_size == rc.page_size and o.accent_color == rc.accent_color


def test_render_in_process_and_async():
    import asyncio
    data = render.render_in_process("pdf", SESSIONS[1], render.RenderOptions(template="summary"))
    assert data.startswith(b"%PDF")
    merged = render.render_in_process("docx", SESSIONS[1:3], OPTS)
    assert merged[:2] == b"PK"
    res = asyncio.run(render.async_render("pdf", SESSIONS[2], OPTS))
    assert res.data.startswith(b"%PDF")
    assert asyncio.run(render.async_render("txt", SESSIONS[2], OPTS)).data == rendered("txt", 2).data
    render.shutdown()


def test_importing_daemon_modules_does_not_import_reportlab_or_docx():
    code = ("import sys, steno_exportd.render, steno_exportd.cli, steno_exportd.render.command\n"
            "import steno_exportd.daemon, steno_exportd.mail.sender\n"
            "from steno_exportd import render\n"
            "for n in render.names(): render.get(n).filename(None, render.RenderOptions())\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('reportlab', 'docx', 'openpyxl', 'bidi',\n"
            "                                                   'arabic_reshaper', 'aiosmtplib')]\n"
            "assert not bad, bad\n"
            "render.get('pdf').render(__import__('tests.render.sessions', fromlist=['x']).empty_session())\n"
            "assert 'reportlab' in sys.modules\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_pdf_letter_page_size_logo_and_missing_font_fallback(tmp_path):
    require_tool("pdfinfo")
    logo = tmp_path / "logo.png"
    import zlib, struct as st
    raw = b"".join(b"\x00" + bytes([31, 78, 121]) * 8 for _ in range(8))
    chunk = lambda t, d: st.pack(">I", len(d)) + t + d + st.pack(">I", zlib.crc32(t + d))  # noqa: E731
    logo.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", st.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    opts = render.RenderOptions(template="summary", page_size="Letter", logo=str(logo),
                                font_path=str(tmp_path / "nope.ttf"), company="ACME")
    res = render.get("pdf").render_result(SESSIONS[1], opts)
    (tmp_path / "r.pdf").write_bytes(res.data)
    info = subprocess.run(["pdfinfo", str(tmp_path / "r.pdf")], capture_output=True, text=True).stdout
    assert "612 x 792" in info
    assert any("nope.ttf" in w for w in res.warnings)
    assert S.GREEK in _pdftotext(res.data)


def test_random_unicode_never_breaks_any_format():
    import dataclasses
    import random
    from steno_exportd.model import ActionItem, Participant, Segment
    rnd = random.Random(3)
    pool = "".join(map(chr, list(range(0, 0x250)) + [0x2028, 0x2029, 0x200f, 0x202e, 0xfeff, 0xd800, 0xdfff,
                                                      0xfffe, 0x1f600, 0x4e2d, 0x0627, 0x05d0]))

    def junk(n=30):
        return "".join(rnd.choice(pool) for _ in range(n))
    base = SESSIONS[2]
    s = dataclasses.replace(
        base, summary=dataclasses.replace(base.summary, title=junk(), location=junk(), tags=(junk(),)),
        participants=(Participant(junk(5), junk(), junk(), junk()),),
        segments=tuple(Segment(i, i * 2.0, i * 2.0 + rnd.uniform(0, 9), junk(3), junk(), junk(200), None)
                       for i in range(20)),
        summary_text=junk(300), action_items=(ActionItem(junk(), junk(), dt.date(2026, 1, 1)),),
        topics=(junk(),), description=junk(), meeting_platform=junk())
    for fmt in FORMATS:
        if fmt == "audio":
            continue
        data = render.get(fmt).render(s, OPTS)
        assert data
    import srt
    import webvtt
    import icalendar
    import jsonschema
    list(srt.parse(render.get("srt").render(s).decode()))
    list(webvtt.from_string(render.get("vtt").render(s).decode()))
    icalendar.Calendar.from_ical(render.get("ics").render(s))
    from steno_exportd.render.json_ import SCHEMA_PATH
    jsonschema.validate(json.loads(render.get("json").render(s)), json.load(open(SCHEMA_PATH)))


def test_document_templates_defined_in_templates_toml(tmp_path):
    (tmp_path / "templates.toml").write_text(
        '[board]\nsections = ["header", "action_items", "bogus"]\nbase_size = 12\naccent_color = "#7a1f1f"\n'
        'page_size = "Letter"\n\n[summary]\nsections = ["header", "summary"]\n\n[bad]\nbase_size = "huge"\n')
    opts = render.RenderOptions(template="board", template_dir=str(tmp_path))
    assert render.get("pdf").filename(SESSIONS[0], opts) == "report-board.pdf"
    res = render.get("pdf").render_result(SESSIONS[0], opts)
    text = _pdftotext(res.data)
    assert "Action items" in text and "Transcript" not in text and "Summary" not in text
    assert any("bogus" in w for w in res.warnings) and any("[bad]" in w for w in res.warnings)
    txt = render.get("txt").render(SESSIONS[0], dataclasses_replace(opts, template="summary")).decode()
    assert "SUMMARY" in txt and "ACTION ITEMS" not in txt
    import docx
    d = docx.Document(io.BytesIO(render.get("docx").render(SESSIONS[0], opts)))
    assert abs(d.sections[0].page_width.cm - 21.59) < 0.01
    with pytest.raises(NotFoundError) as e:
        render.get("pdf").render(SESSIONS[0], dataclasses_replace(opts, template="bad"))
    assert "board" in str(e.value) and "detailed" in str(e.value)


def dataclasses_replace(o, **kw):
    import dataclasses
    return dataclasses.replace(o, **kw)
