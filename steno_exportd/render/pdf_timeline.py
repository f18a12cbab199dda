"""The speaker timeline drawn in the PDF report: the figure of render/timeline.py as a reportlab Flowable."""
from __future__ import annotations

from typing import Any

from reportlab.lib import colors
from reportlab.platypus import Flowable

from steno_exportd.model import Session
from steno_exportd.render.common import one_line
from steno_exportd.render.timeline import speaker_timeline, span, tick_label, ticks

LANE = 13.0         # points per speaker lane
LABEL = 95.0        # points for the names
AXIS = 16.0         # points under the lanes for the time axis


class SpeakerTimeline(Flowable):
    """One lane per speaker across the meeting, each turn a bar in the speaker's colour, a time axis below."""

    def __init__(self, session: Session, width: float, builder: Any) -> None:
        super().__init__()
        self.width = width
        self.b = builder
        plot = max(1.0, width - LABEL - 4)
        # turns closer than half a point are one bar (a 2-hour meeting has ~2,000 segments)
        self.tl = speaker_timeline(session, merge_gap=span(session) / plot / 2)
        self.height = max(1, len(self.tl.lanes)) * LANE + AXIS
        self.names = [builder.para(one_line(lane.name)[:40], builder.s_meta) for lane in self.tl.lanes]

    def wrap(self, aw: float, ah: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        c, b = self.canv, self.b
        x0, x1 = LABEL, self.width - 4
        scale = (x1 - x0) / self.tl.duration
        for i, (lane, name) in enumerate(zip(self.tl.lanes, self.names)):
            top = self.height - i * LANE
            _, h = name.wrap(LABEL - 6, LANE)
            name.drawOn(c, 0, top - LANE + max(0.0, (LANE - h) / 2))
            c.setFillColor(colors.HexColor("#eef1f5"))
            c.rect(x0, top - LANE + 1, x1 - x0, LANE - 2, stroke=0, fill=1)
            c.setFillColor(colors.HexColor(lane.colour))
            for t in lane.turns:
                c.rect(x0 + t.start * scale, top - LANE + 2.5, max(0.6, (t.end - t.start) * scale), LANE - 5,
                       stroke=0, fill=1)
        axis = AXIS - 4
        c.setStrokeColor(b.grey)
        c.setFillColor(b.grey)
        c.setLineWidth(0.5)
        c.line(x0, axis, x1, axis)
        c.setFont(b.font, 7)
        for s in ticks(self.tl.duration):
            x = x0 + s * scale
            c.line(x, axis, x, axis - 2.5)
            label = tick_label(s)
            if s == 0:
                c.drawString(x, 1, label)
            elif x > x1 - 20:
                c.drawRightString(x, 1, label)
            else:
                c.drawCentredString(x, 1, label)
