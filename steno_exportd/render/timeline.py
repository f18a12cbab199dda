"""The speaker timeline: one lane per speaker across the meeting, as data and as SVG (no script needed).

``speaker_timeline`` is the figure as data (the PDF draws it from that); ``timeline_svg`` draws it
for a page: each speaking turn is a link to its time (``#t=SECONDS``), colours from
``common.speaker_colours`` so a speaker has the same colour in every document.
"""
from __future__ import annotations

import dataclasses
import html
from typing import Callable

from steno_exportd.model import Session
from steno_exportd.render.common import duration_text, hms, one_line, speaker_colours

TICK_STEPS = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
MAX_TICKS = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Turn:
    """A stretch of speech: segments of one speaker closer than the merge gap, as one."""

    start: float
    end: float


@dataclasses.dataclass(frozen=True, slots=True)
class Lane:
    name: str                     # display name: the key of common.speaker_colours
    colour: str                   # #rrggbb from common.speaker_colours
    seconds: float                # speaking time
    turns: tuple[Turn, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Timeline:
    duration: float               # seconds the figure spans
    lanes: tuple[Lane, ...]       # in order of first speech

    @property
    def spoken(self) -> float:
        return sum(lane.seconds for lane in self.lanes)


def speaker_timeline(session: Session, merge_gap: float = 0.0) -> Timeline:
    """One lane per speaker (by display name) in order of first speech; turns closer than ``merge_gap`` s merged."""
    colours = speaker_colours(session)
    turns: dict[str, list[list[float]]] = {}
    secs: dict[str, float] = {}
    for seg in sorted(session.segments, key=lambda s: (s.start, s.end)):
        name = one_line(seg.speaker_name) or "Unknown speaker"      # as speaker_colours names them
        secs[name] = secs.get(name, 0.0) + max(0.0, seg.end - seg.start)
        lane = turns.setdefault(name, [])
        if lane and seg.start - lane[-1][1] <= merge_gap:
            lane[-1][1] = max(lane[-1][1], seg.end)
        else:
            lane.append([seg.start, max(seg.start, seg.end)])
    lanes = tuple(Lane(name, colours[name], secs[name], tuple(Turn(a, b) for a, b in turns[name]))
                  for name in turns)
    return Timeline(span(session), lanes)


def span(session: Session) -> float:
    """Seconds the figure spans: the recording's duration, or the last speech if that is later."""
    end = max([float(session.duration_seconds or 0)] + [seg.end for seg in session.segments])
    return end if end > 0 else 1.0


def ticks(duration: float) -> range:
    """The axis' ticks (seconds): at most MAX_TICKS steps of one of TICK_STEPS, or of a multiple of the longest
    for a longer figure (a recorder's bogus duration of decades must not draw one tick per six hours)."""
    step = next((s for s in TICK_STEPS if duration / s <= MAX_TICKS), None)
    end = int(duration + 1e-6)
    if step is None:
        longest = TICK_STEPS[-1]
        step = -(-end // (longest * MAX_TICKS)) * longest
    return range(0, end + 1, step)


def tick_label(s: int) -> str:
    if s == 0:
        return "0"
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    if sec:
        return f"{h * 60 + m} min {sec} s" if h or m else f"{sec} s"
    if h:
        return f"{h} h" + (f" {m:02d}" if m else "")
    return f"{m} min"


def _fit(name: str, chars: int) -> str:
    return name if len(name) <= chars else name[:max(1, chars - 1)].rstrip() + "…"


def timeline_svg(session: Session, *, width: int = 800, lane_height: int = 24, label_width: int = 150,
                 font_size: int = 13, href: Callable[[float], str] = lambda s: f"#t={int(s)}",
                 id_prefix: str | None = None) -> str:
    """The speaker timeline of ``session`` as an inline SVG element (scales to its container's width).

    Accessible: a title and a description (who spoke how long) name the figure; the turn links
    are for pointer users (keyboard and screen-reader users have the same links in the transcript),
    so they are hidden from assistive technology and left out of the tab order.
    """
    x0, x1 = float(label_width), float(width - 12)
    # turns closer than one drawn pixel are one turn (a 2-hour meeting has ~2,000 segments)
    tl = speaker_timeline(session, merge_gap=span(session) / (x1 - x0))
    scale = (x1 - x0) / tl.duration
    pid = id_prefix or f"timeline-{session.id}"
    esc = lambda s: html.escape(s, quote=True)  # noqa: E731
    title = f"Who spoke when: {one_line(session.title) or 'Untitled session'}"
    total = tl.spoken or 1.0
    if tl.lanes:
        people = "; ".join(f"{lane.name} {duration_text(lane.seconds)} ({100 * lane.seconds / total:.0f}%)"
                           for lane in sorted(tl.lanes, key=lambda lane: -lane.seconds))
        desc = (f"{len(tl.lanes)} speaker{'s' if len(tl.lanes) != 1 else ''} over "
                f"{duration_text(tl.duration)}. Speaking time: {people}.")
    else:
        length = f" {duration_text(session.duration_seconds)}" if session.duration_seconds else ""
        desc = f"No speech was transcribed in this{length} recording."
    top = 4
    rows = max(1, len(tl.lanes))
    axis_y = top + rows * lane_height + 2
    height = axis_y + font_size + 10
    chars = max(4, int((label_width - 12) / (font_size * 0.58)))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="speaker-timeline" viewBox="0 0 {width} {height}" '
           f'width="100%" role="group" aria-labelledby="{pid}-title" aria-describedby="{pid}-desc" '
           f'font-family="sans-serif" font-size="{font_size}">',
           f'<title id="{pid}-title">{esc(title)}</title>', f'<desc id="{pid}-desc">{esc(desc)}</desc>']
    for i, lane in enumerate(tl.lanes):
        y = top + i * lane_height
        mid = y + lane_height / 2
        out.append(f'<g class="lane" data-speaker="{esc(lane.name)}">')
        out.append(f'<rect x="{x0:.1f}" y="{y + 1}" width="{x1 - x0:.1f}" height="{lane_height - 2}" '
                   f'fill="currentColor" fill-opacity="0.06"/>')
        out.append(f'<text x="4" y="{mid:.1f}" dominant-baseline="middle" fill="currentColor">'
                   f'{esc(_fit(lane.name, chars))}</text>')
        out.append('<g aria-hidden="true">')
        for t in lane.turns:
            x = x0 + t.start * scale
            w = max(1.0, (t.end - t.start) * scale)
            out.append(f'<a href="{esc(href(t.start))}" tabindex="-1"><title>{esc(lane.name)}, '
                       f'{hms(t.start)}–{hms(t.end)}</title><rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" '
                       f'height="{lane_height - 8}" rx="2" fill="{lane.colour}"/></a>')
        out.append("</g></g>")
    if not tl.lanes:
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{top + lane_height / 2:.1f}" text-anchor="middle" '
                   f'dominant-baseline="middle" fill="currentColor">No speech</text>')
    out.append(f'<g class="axis" fill="currentColor" stroke="currentColor" stroke-opacity="0.4">'
               f'<line x1="{x0:.1f}" y1="{axis_y}" x2="{x1:.1f}" y2="{axis_y}"/>')
    for s in ticks(tl.duration):
        x = x0 + s * scale
        anchor = "start" if s == 0 else "end" if x > x1 - 30 else "middle"
        out.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}"/>'
                   f'<text x="{x:.1f}" y="{axis_y + 6 + font_size}" text-anchor="{anchor}" stroke="none">'
                   f'{tick_label(s)}</text>')
    out.append("</g></svg>")
    return "".join(out)
