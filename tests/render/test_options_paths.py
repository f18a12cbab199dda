"""config [render] reaches every export path: folder/stick, ZIP, tar.gz, the CLI; user templates by name."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from steno_exportd import config
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.plan import render_options
from tests.fakes import FakeLibrary
from tests.parts import require_tool
from tests.render import sessions as S
from tests.render.test_scripts import pdffonts, pdftotext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERIF = "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"
BOARD = '[board]\nsections = ["header", "action_items"]\naccent_color = "#7a1f1f"\n'


@pytest.fixture(autouse=True, scope="module")
def _worker():
    """The exports render PDF/DOCX in the worker process: stop it when the module is done."""
    yield
    from steno_exportd import render
    render.shutdown()


def _cfg(tmp_path, **render_kw) -> config.Config:
    tdir = tmp_path / "templates"
    tdir.mkdir(exist_ok=True)
    (tdir / "templates.toml").write_text(BOARD)
    r = {"company": "Globex Ltd", "font_path": SERIF, "accent_color": "#aa3300", "page_size": "Letter",
         "template_dir": str(tdir), "time_zone": "Europe/Athens"}
    r.update(render_kw)
    return config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")},
                             "state": {"dir": str(tmp_path / "state")}, "render": r})


def _library(tmp_path) -> FakeLibrary:
    (tmp_path / "rec").mkdir(exist_ok=True)
    wav = S.write_wav(tmp_path / "rec" / "m.wav", seconds=2)
    return FakeLibrary([S.with_audio(S.multilingual_session(), wav)])


def _check_pdf(data: bytes, tmp_path, template_sections: bool = False) -> None:
    require_tool("pdffonts", "pdfinfo")
    text = pdftotext(data)
    assert "Globex Ltd" in text or "GLOBEX LTD" in text
    assert "11:30 EET" in text
    fonts = [row[0] for row in pdffonts(data, tmp_path)]
    assert any("DejaVuSerif" in f for f in fonts), fonts
    f = tmp_path / "p.pdf"
    f.write_bytes(data)
    info = subprocess.run(["pdfinfo", str(f)], capture_output=True, text=True).stdout
    assert "612 x 792" in info


def test_render_options_come_from_the_config_and_the_job(tmp_path):
    cfg = _cfg(tmp_path)
    o = render_options(cfg, None)
    assert (o.company, o.font_path, o.accent_color, o.page_size, o.time_zone, o.template) == \
        ("Globex Ltd", SERIF, "#aa3300", "Letter", "Europe/Athens", cfg.export.template)
    assert o.template_dir == str(tmp_path / "templates")
    assert render_options(cfg, "board").template == "board"


def test_folder_export_carries_branding_and_plays_the_audio(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "stick"
    out.mkdir()
    res = run_export(_library(tmp_path), SimpleSpec(str(out), (2,), ("pdf", "html", "docx", "audio"),
                                                    ExportOptions()), cfg)
    assert all(r.ok for r in res), res
    folder = next(p for p in (out / "SilentSteno").iterdir() if p.is_dir())
    _check_pdf((folder / "report-detailed.pdf").read_bytes(), tmp_path)
    html = (folder / "transcript.html").read_text()
    assert "Globex Ltd" in html and "#aa3300" in html
    assert '<audio id="player" controls preload="metadata" src="audio.wav">' in html
    import docx
    d = docx.Document(str(folder / "report-detailed.docx"))
    assert "Globex Ltd" in d.sections[0].header.paragraphs[0].text


def test_html_without_audio_has_no_player(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    run_export(_library(tmp_path), SimpleSpec(str(out), (2,), ("html",), ExportOptions(include_audio=False)), cfg)
    html = next((out / "SilentSteno").rglob("transcript.html")).read_text()
    assert "<audio" not in html


def test_changed_branding_is_rendered_again_on_the_next_export(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    lib = _library(tmp_path)
    spec = SimpleSpec(str(out), (2,), ("html",), ExportOptions())
    run_export(lib, spec, _cfg(tmp_path))
    assert run_export(lib, spec, _cfg(tmp_path))[0].skipped
    res = run_export(lib, spec, _cfg(tmp_path, company="Initech"))
    assert not res[0].skipped and res[0].ok
    assert "Initech" in next((out / "SilentSteno").rglob("transcript.html")).read_text()


@pytest.mark.parametrize("name", ["x.zip", "x.tar.gz"])
def test_archive_export_carries_branding(tmp_path, name):
    cfg = _cfg(tmp_path)
    target = tmp_path / name
    res = run_export(_library(tmp_path), SimpleSpec(str(target), (2,), ("pdf", "html", "audio"),
                                                    ExportOptions(template="board")), cfg)
    assert all(r.ok for r in res), res
    if name.endswith(".zip"):
        z = zipfile.ZipFile(target)
        files = {n: z.read(n) for n in z.namelist()}
    else:
        with tarfile.open(target) as t:
            files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    pdf = next(v for k, v in files.items() if k.endswith("report-board.pdf"))
    _check_pdf(pdf, tmp_path)
    text = pdftotext(pdf)
    assert "Action items" in text and "Transcript" not in text
    html = next(v for k, v in files.items() if k.endswith("transcript-board.html")).decode()
    assert "Globex Ltd" in html and 'src="audio.wav"' in html


def test_cli_export_with_a_user_template_like_render(tmp_path):
    cfg_path = tmp_path / "config.toml"
    db = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "steno_exportd", "demo-data", "--out", str(db), "--sessions", "1",
                    "--seed", "3"], check=True, cwd=ROOT, capture_output=True, timeout=120)
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "templates.toml").write_text(BOARD)
    cfg_path.write_text(f'[recorder]\ndb_path = "{db}/silent_steno.db"\n[render]\ntemplate_dir = "{tdir}"\n'
                        f'company = "Globex Ltd"\n')
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run([sys.executable, "-m", "steno_exportd", "--config", str(cfg_path), "export", "--to", str(out),
                        "--sessions", "all", "--formats", "pdf,txt", "--template", "board"],
                       capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    pdf = next(out.rglob("report-board.pdf"))
    text = pdftotext(pdf.read_bytes())
    assert "GLOBEX LTD" in text and "Action items" in text and "Transcript" not in text
    r = subprocess.run([sys.executable, "-m", "steno_exportd", "--config", str(cfg_path), "render", "--db",
                        f"{db}/silent_steno.db", "--session", "1", "-f", "pdf", "-t", "board", "-o",
                        str(tmp_path / "r.pdf")], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "Transcript" not in pdftotext((tmp_path / "r.pdf").read_bytes())


def test_format_placeholder_names_the_formats(tmp_path):
    cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")},
                            "export": {"folder_pattern": "{title} [{format}]"}})
    out = tmp_path / "o"
    out.mkdir()
    run_export(_library(tmp_path), SimpleSpec(str(out), (2,), ("txt", "pdf", "audio"), ExportOptions()), cfg)
    folders = [p.name for p in (out / "SilentSteno").iterdir() if p.is_dir()]
    assert folders and folders[0].endswith("[txt+pdf+audio]"), folders
    z = tmp_path / "a.zip"
    run_export(_library(tmp_path), SimpleSpec(str(z), (2,), ("md",), ExportOptions()), cfg)
    assert any(n.rstrip("/").split("/")[1].endswith("[md]") for n in zipfile.ZipFile(z).namelist()
               if n.count("/") >= 2)
