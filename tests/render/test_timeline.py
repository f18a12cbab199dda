"""The speaker timeline: one lane per speaker, each turn a link to its time, readable colours, valid SVG."""
from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET

import pytest

from steno_exportd.model import Segment
from steno_exportd.render import common
from steno_exportd.render.timeline import speaker_timeline, timeline_svg
from tests.render.sessions import empty_session, hostile_session, long_session, multilingual_session

SVG = "{http://www.w3.org/2000/svg}"


def luminance(colour: str) -> float:
    def channel(c: int) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def with_segments(session, segs):
    return dataclasses.replace(session, segments=tuple(
        Segment(index=i, start=s, end=e, speaker_id=sid, speaker_name=name, text="words")
        for i, (s, e, sid, name) in enumerate(segs)), participants=())


def turns(svg: str) -> list[tuple[str, str, float, float]]:
    """(lane speaker, href, x, width) of every turn link in the SVG."""
    root = ET.fromstring(svg)
    out = []
    for lane in root.iter(f"{SVG}g"):
        if lane.get("class") != "lane":
            continue
        for a in lane.iter(f"{SVG}a"):
            rect = a.find(f"{SVG}rect")
            out.append((lane.get("data-speaker"), a.get("href"), float(rect.get("x")), float(rect.get("width"))))
    return out


def test_one_lane_per_speaker_in_order_of_first_speech_each_turn_a_link_to_its_time():
    s = with_segments(long_session(4), [(2.0, 5.0, "b", "Bea"), (6.5, 9.0, "a", "Al"), (12.0, 15.0, "b", "Bea"),
                                        (123.9, 130.0, "c", "Cy"), (200.0, 260.0, "a", "Al")])
    tl = speaker_timeline(s)
    assert [lane.name for lane in tl.lanes] == ["Bea", "Al", "Cy"]
    assert [lane.seconds for lane in tl.lanes] == pytest.approx([6.0, 62.5, 6.1])
    assert [(t.start, t.end) for t in tl.lanes[0].turns] == [(2.0, 5.0), (12.0, 15.0)]
    svg = timeline_svg(s)
    got = turns(svg)
    assert [(spk, href) for spk, href, _, _ in got] == [("Bea", "#t=2"), ("Bea", "#t=12"), ("Al", "#t=6"),
                                                        ("Al", "#t=200"), ("Cy", "#t=123")]
    # positions follow time: a turn starting later is drawn further right, and a longer one wider
    x = {href: (x, w) for _, href, x, w in got}
    assert x["#t=2"][0] < x["#t=6"][0] < x["#t=12"][0] < x["#t=123"][0] < x["#t=200"][0]
    assert x["#t=200"][1] > 5 * x["#t=2"][1]
    assert timeline_svg(s, href=lambda t: f"/s/1?t={t:.1f}").count('href="/s/1?t=123.9"') == 1


def test_accessible_title_and_description_and_links_kept_out_of_the_tab_order():
    s = multilingual_session()
    svg = timeline_svg(s, id_prefix="fig")
    root = ET.fromstring(svg)
    assert root.get("aria-labelledby") == "fig-title" and root.get("aria-describedby") == "fig-desc"
    title = root.find(f"{SVG}title")
    desc = root.find(f"{SVG}desc")
    assert title.get("id") == "fig-title" and s.title in title.text
    for lane in speaker_timeline(s).lanes:
        assert lane.name in desc.text
    assert re.search(r"\d+ speakers? over ", desc.text)
    links = list(root.iter(f"{SVG}a"))
    assert links and all(a.get("tabindex") == "-1" for a in links)
    assert all(a.find(f"{SVG}title") is not None for a in links)       # a tooltip: who, from when to when
    assert "<script" not in svg and "javascript:" not in svg


def test_colours_are_the_documents_colours_one_per_speaker():
    s = with_segments(long_session(4), [(i * 10.0, i * 10.0 + 5, f"s{i}", f"Speaker {i}") for i in range(13)])
    s = dataclasses.replace(s, participants=long_session(4).participants[:1])   # a participant who never spoke
    tl = speaker_timeline(s)
    colours = common.speaker_colours(s)                  # the palette PDF, HTML and DOCX use
    assert [lane.colour for lane in tl.lanes] == [colours[lane.name] for lane in tl.lanes]
    assert len({lane.colour for lane in tl.lanes[:11]}) == 11                # distinct until the palette repeats
    for c in common.SPEAKER_COLOURS:
        assert contrast(c, "#ffffff") >= 3.0, c                              # WCAG 1.4.11 on a light page
    svg = timeline_svg(s)
    for lane in tl.lanes:
        assert f'fill="{lane.colour}"' in svg
    assert 'fill="currentColor"' in svg                                      # text follows the page's colour


def test_a_two_hour_meeting_stays_small_and_every_segment_is_inside_a_turn():
    s = long_session(2000)
    svg = timeline_svg(s, width=800)
    got = turns(svg)
    assert len(got) <= 2000 and len(svg) < 400_000
    tl = speaker_timeline(s, merge_gap=0.0)
    x0, x1 = 150.0, 788.0
    scale = (x1 - x0) / tl.duration
    drawn = {}
    for spk, href, x, w in got:
        drawn.setdefault(spk, []).append((x, x + w))
    for seg in s.segments:
        x = x0 + seg.start * scale
        assert any(a - 0.06 <= x <= b + 0.06 for a, b in drawn[seg.speaker_name]), seg


def test_hostile_names_are_escaped_and_an_empty_meeting_says_so():
    s = hostile_session()
    svg = timeline_svg(s)
    ET.fromstring(svg)                                                       # well-formed XML
    assert "<script>" not in svg
    empty = timeline_svg(empty_session())
    root = ET.fromstring(empty)
    assert "No speech" in empty and root.find(f"{SVG}desc").text == "No speech was transcribed in this recording."
    assert root.find(f"{SVG}title").text == "Who spoke when: Untitled session"
    assert not list(root.iter(f"{SVG}a"))


def test_the_pdf_report_draws_the_timeline_in_the_speakers_colours(tmp_path):
    """The summary report of a long meeting shows "Who spoke when" with a bar in every speaker's colour
    (rasterised by poppler, as a reader sees it); a meeting without speech has no such figure."""
    import subprocess

    from steno_exportd import render
    from steno_exportd.render.base import RenderOptions
    from tests.parts import require_tool
    require_tool("pdftoppm", "pdftotext")
    s = long_session()
    pdf = tmp_path / "r.pdf"
    pdf.write_bytes(render._work("pdf", s, RenderOptions(template="summary")).data)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "Who spoke when" in text
    subprocess.run(["pdftoppm", "-r", "100", str(pdf), str(tmp_path / "p")], check=True)     # PPM pages
    pixels = set().union(*(ppm_colours(p.read_bytes()) for p in tmp_path.glob("p-*.ppm")))
    lanes = speaker_timeline(s).lanes
    assert len(lanes) >= 2
    missing = [lane.name for lane in lanes
               if tuple(int(lane.colour[i:i + 2], 16) for i in (1, 3, 5)) not in pixels]
    assert not missing, missing
    empty = tmp_path / "e.pdf"
    empty.write_bytes(render._work("pdf", empty_session(), RenderOptions(template="summary")).data)
    text = subprocess.run(["pdftotext", str(empty), "-"], capture_output=True, text=True, check=True).stdout
    assert "Who spoke when" not in text


def ppm_colours(ppm: bytes) -> set[tuple[int, int, int]]:
    """The distinct colours of a binary PPM (P6) image."""
    parts = ppm.split(maxsplit=4)
    assert parts[0] == b"P6" and parts[3] == b"255", parts[:4]
    data = parts[4]
    return {tuple(data[i:i + 3]) for i in range(0, len(data) - 2, 3)}
