"""WebVTT subtitles: `<v Speaker>` voice spans, escaped text, monotonic times."""
from __future__ import annotations

from steno_exportd.render.base import Renderer
from steno_exportd.render.common import one_line
from steno_exportd.render.cues import cues, ts


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class VttRenderer(Renderer):
    name, extension, media_type, version = "vtt", "vtt", "text/vtt; charset=utf-8", 2
    basename = "subtitles"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        s = sessions[0]
        title = one_line(s.title).replace("-->", "->")
        parts = [f"WEBVTT - {title}\n" if title else "WEBVTT\n"]
        for i, c in enumerate(cues(s), 1):
            voice = _esc(c.speaker)
            body = "\n".join(_esc(x) for x in c.lines)
            parts.append(f"{i}\n{ts(c.start, '.')} --> {ts(c.end, '.')}\n<v {voice}>{body}</v>\n")
        return "\n".join(parts).encode("utf-8")


RENDERER = VttRenderer()
