"""iCalendar: action items as VTODO entries (DUE where the item has a due date)."""
from __future__ import annotations

import datetime as dt

from steno_exportd.render.base import Renderer
from steno_exportd.render.common import one_line


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _fold(line: str) -> str:
    """RFC 5545 folding at 75 octets without splitting a UTF-8 sequence."""
    out, cur, size = [], "", 0
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > 75:
            out.append(cur)
            cur, size = " ", 1
        cur += ch
        size += n
    out.append(cur)
    return "\r\n".join(out)


def _stamp(t: dt.datetime | None) -> str:
    t = (t or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)
    return t.strftime("%Y%m%dT%H%M%SZ")


class IcsRenderer(Renderer):
    name, extension, media_type, version = "ics", "ics", "text/calendar; charset=utf-8", 1
    basename = "action-items"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        s = sessions[0]
        stamp = _stamp(s.updated_at or s.start_time)
        title = one_line(s.title) or "Untitled session"
        lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Silent Steno//steno-exportd//EN",
                 "CALSCALE:GREGORIAN", f"X-WR-CALNAME:{_esc('Action items: ' + title)}"]
        for i, a in enumerate(s.action_items):
            desc = f"From meeting \"{title}\" ({s.start_time.date().isoformat() if s.start_time else 'undated'})"
            lines += ["BEGIN:VTODO", f"UID:{s.uuid}-{i}@steno-exportd", f"DTSTAMP:{stamp}",
                      f"SUMMARY:{_esc(one_line(a.text) or '(empty)')}", f"DESCRIPTION:{_esc(desc)}"]
            if a.due:
                lines.append(f"DUE;VALUE=DATE:{a.due.strftime('%Y%m%d')}")
            if a.owner:
                lines.append(f"X-STENO-OWNER:{_esc(one_line(a.owner))}")
                lines.append(f"CONTACT:{_esc(one_line(a.owner))}")
            lines += ["STATUS:COMPLETED" if a.done else "STATUS:NEEDS-ACTION", "END:VTODO"]
        lines.append("END:VCALENDAR")
        return ("\r\n".join(_fold(x) for x in lines) + "\r\n").encode("utf-8")


RENDERER = IcsRenderer()
