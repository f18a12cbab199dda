"""Times and sizes as people read them: sizes in the page's words, times as <time> elements whose text a
script turns into the browser's locale (the server's text stays when scripts are off)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from markupsafe import Markup, escape

UNITS = ("kB", "MB", "GB", "TB")


def size(n: Any) -> str:
    """Bytes as "512 bytes", "1.4 MB", "23 GB" (decimal units, as phones and file managers show them)."""
    if n is None:
        return "—"
    n = int(n)
    if n < 1000:
        return f"{n} byte" + ("" if n == 1 else "s")
    value = float(n)
    for unit in UNITS:
        value /= 1000
        if value < 999.5 or unit == UNITS[-1]:
            return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def moment(t: Any) -> dt.datetime | None:
    """A datetime (aware or naive local) or seconds since the epoch, as an aware datetime; None for none."""
    if t is None or t == "" or t == 0:
        return None
    if isinstance(t, dt.datetime):
        return t if t.tzinfo else t.astimezone()
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).astimezone()


def when(t: Any, style: str = "datetime", none: str = "—") -> Markup:
    """A <time> element: the server's local time as readable text, ISO 8601 for the browser's own rendering.

    style "datetime" (date and time) or "date"; static/app.js rewrites the text in the browser's locale."""
    if isinstance(t, dt.date) and not isinstance(t, dt.datetime):     # a calendar day: no time zone to move it
        return Markup('<time datetime="{}" data-style="day">{}</time>').format(
            t.isoformat(), t.strftime("%d %b %Y").lstrip("0"))
    m = moment(t)
    if m is None:
        return Markup(escape(none))
    text = m.strftime("%d %b %Y" if style == "date" else "%d %b %Y, %H:%M").lstrip("0")
    return Markup('<time datetime="{}" data-style="{}">{}</time>').format(
        m.isoformat(timespec="seconds"), style, text)


def fmt_time(seconds: float) -> str:
    """Seconds into a meeting as HH:MM:SS."""
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_when(t: Any) -> str:
    """A start time as plain text in the server's time zone (where a <time> element cannot go)."""
    return t.astimezone().strftime("%Y-%m-%d %H:%M") if t else "—"


def fmt_duration(sec: Any) -> str:
    """A length in hours and minutes."""
    if not sec:
        return "—"
    return f"{sec // 3600} h {sec % 3600 // 60:02d} min" if sec >= 3600 else f"{max(1, round(sec / 60))} min"
