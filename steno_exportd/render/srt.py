"""SubRip subtitles: `Speaker: text` in every cue, numbered, monotonic."""
from __future__ import annotations

import re

from steno_exportd.render.base import Renderer
from steno_exportd.render.cues import cues, speaker_prefix, ts


_TAG = re.compile(r"<(?=\s*/?\s*[A-Za-z])")


def plain(text: str) -> str:
    """Text players show as typed: SRT has no escaping, so tag starts and {\\ override codes are defused."""
    # '-->' would read as a timing line; '<b>', '<font ...>' and '{\\an8}' would be markup in most players
    return _TAG.sub("\u2039", text.replace("-->", "->")).replace("{\\", "{ \\")


class SrtRenderer(Renderer):
    name, extension, media_type, version = "srt", "srt", "application/x-subrip; charset=utf-8", 2
    basename = "subtitles"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        parts = []
        for i, c in enumerate(cues(sessions[0], prefix=True, shown=plain), 1):
            lines = list(c.lines)
            lines[0] = speaker_prefix(c.speaker) + lines[0]
            body = "\n".join(lines)
            parts.append(f"{i}\n{ts(c.start, ',')} --> {ts(c.end, ',')}\n{body}\n")
        return "\n".join(parts).encode("utf-8")


RENDERER = SrtRenderer()
