"""The HTML page in real headless Chromium: clicking a transcript line seeks the audio beside it."""
from __future__ import annotations

from steno_exportd import render
from tests.parts import wait_for
from tests.render import sessions as S


def test_clicking_a_transcript_line_seeks_the_audio(tmp_path, chromium_page):
    page = chromium_page
    wav = S.write_wav(tmp_path / "audio.wav", seconds=130, rate=4000)
    session = S.with_audio(S.multilingual_session(), wav)
    opts = render.RenderOptions(audio_filename="audio.wav")
    (tmp_path / "transcript.html").write_bytes(render.get("html").render(session, opts))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((tmp_path / "transcript.html").as_uri())
    page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=30000)
    assert page.evaluate("document.getElementById('player').duration") > 129
    lines = page.locator(".seg[data-start]")
    assert lines.count() == len(session.segments)
    lines.nth(2).click()
    wait_for(lambda: abs(page.evaluate("document.getElementById('player').currentTime") - 40.0) < 0.5,
             timeout=15, what="currentTime to reach 40 s after clicking the third line")
    lines.nth(5).click()
    wait_for(lambda: abs(page.evaluate("document.getElementById('player').currentTime") - 100.0) < 0.5,
             timeout=15, what="currentTime to reach 100 s")
    assert page.locator(".seg.active").count() <= 1
    assert S.CYRILLIC in page.inner_text("body") and S.GREEK in page.inner_text("body")
    assert not errors


def test_page_without_audio_has_no_player_and_works_offline(tmp_path, chromium_page):
    page = chromium_page
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    (tmp_path / "t.html").write_bytes(render.get("html").render(S.hostile_session()))
    page.goto((tmp_path / "t.html").as_uri())
    assert page.locator("audio").count() == 0
    assert "<script>alert(1)</script>" in page.inner_text("body")
    assert page.evaluate("typeof alert") == "function"
    assert all(u.startswith("file://") for u in requests), requests
