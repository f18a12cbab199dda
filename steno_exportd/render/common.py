"""Pure helpers shared by the renderers: clean text, times, per-speaker figures, sections."""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import re
import zoneinfo

from steno_exportd.model import ActionItem, Participant, Segment, Session
from steno_exportd.render import scripts

# C0/C1 controls except tab and newline; they break XML, PDF and subtitle parsers.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")

TEXT_SECTIONS = ("header", "summary", "action_items", "topics", "participants", "transcript")


def clean(text: str | None) -> str:
    """Text without control characters (tab/newline kept)."""
    if not text:
        return ""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def one_line(text: str | None) -> str:
    """Clean text on a single line with single spaces."""
    return " ".join(clean(text).split())


def hms(seconds: float | None) -> str:
    """HH:MM:SS."""
    s = max(0, int(seconds or 0))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def duration_text(seconds: float | None) -> str:
    """'1 h 05 min', '12 min 30 s', 'unknown'."""
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


@functools.lru_cache(maxsize=16)
def _zone(name: str) -> dt.tzinfo | None:
    """The tzinfo of an IANA name; None for the system's zone (or an unknown name)."""
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return None


def local_time(t: dt.datetime, time_zone: str = "") -> dt.datetime:
    """t in the recorder's time zone (config render.time_zone; empty: the system's)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(_zone(time_zone))


def date_text(t: dt.datetime | None, time_zone: str = "") -> str:
    """'2026-03-02 10:30 CET' in the recorder's time zone; a numeric zone name becomes 'UTC+03'."""
    if not t:
        return "unknown date"
    lt = local_time(t, time_zone)
    name = lt.strftime("%Z")
    if not name or name[0] in "+-":
        off = lt.utcoffset() or dt.timedelta(0)
        mins = int(off.total_seconds()) // 60
        name = "UTC" if mins == 0 else f"UTC{'+' if mins > 0 else '-'}{abs(mins) // 60:02d}" + (
            f":{abs(mins) % 60:02d}" if mins % 60 else "")
    return lt.strftime("%Y-%m-%d %H:%M ") + name


# Dark enough for white backgrounds (contrast >= 4.5:1), far apart in hue; PDF, HTML and DOCX share them.
SPEAKER_COLOURS = ("#1f5fa8", "#b23a1e", "#2e7d32", "#7b3fa0", "#a35f00", "#00796b", "#ad1457", "#4e5d6c",
                   "#5d4037", "#3949ab", "#827717", "#c62828")


def speaker_colours(session: Session) -> dict[str, str]:
    """Display name -> colour, in order of first appearance (participants, then the transcript)."""
    out: dict[str, str] = {}
    names = [one_line(p.name) or p.speaker_id for p in session.participants]
    names += [one_line(g.speaker_name) or "Unknown speaker" for g in session.segments]
    for n in names:
        if n not in out:
            out[n] = SPEAKER_COLOURS[len(out) % len(SPEAKER_COLOURS)]
    return out


FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(cell: str) -> str:
    """A spreadsheet cell that cannot start a formula (OWASP CSV injection rule: prefix a quote)."""
    return "'" + cell if cell.startswith(FORMULA_LEAD) else cell


@dataclasses.dataclass(frozen=True)
class SpeakerRow:
    name: str
    role: str
    seconds: float
    share: float      # 0..100
    words: int


def speaker_rows(session: Session) -> list[SpeakerRow]:
    """Participants with speaking time, share and words (from segments when the DB lacks them)."""
    secs: dict[str, float] = {}
    words: dict[str, int] = {}
    names: dict[str, str] = {}
    for seg in session.segments:
        key = seg.speaker_id or seg.speaker_name
        names.setdefault(key, seg.speaker_name)
        secs[key] = secs.get(key, 0.0) + max(0.0, seg.end - seg.start)
        words[key] = words.get(key, 0) + len(seg.text.split())
    total = sum(secs.values()) or 0.0
    rows: list[SpeakerRow] = []
    seen: set[str] = set()
    for p in session.participants:
        seen.add(p.speaker_id)
        s = p.speaking_seconds or secs.get(p.speaker_id, 0.0)
        share = p.speaking_percentage or (100.0 * s / total if total else 0.0)
        rows.append(SpeakerRow(one_line(p.name) or p.speaker_id, one_line(", ".join(
            x for x in (p.role, p.organization) if x)), s, share, p.word_count or words.get(p.speaker_id, 0)))
    for key, s in secs.items():
        if key not in seen:
            rows.append(SpeakerRow(one_line(names[key]), "", s, 100.0 * s / total if total else 0.0, words[key]))
    rows.sort(key=lambda r: -r.seconds)
    return rows


def action_text(a: ActionItem) -> str:
    """'Text (owner: X, due 2026-01-02)'."""
    extra = [f"owner: {one_line(a.owner)}" if a.owner else "", f"due {a.due.isoformat()}" if a.due else "",
             "done" if a.done else ""]
    extra = [e for e in extra if e]
    return one_line(a.text) + (f" ({', '.join(extra)})" if extra else "")


def session_context(session: Session, sections: tuple[str, ...] = TEXT_SECTIONS, time_zone: str = "",
                    language: str = "en") -> dict:
    """Plain values the Jinja2 templates use (already cleaned; escaping is the template's job).

    Texts that may be in another script come with their language and direction ("lang", "dir").
    """
    colours = speaker_colours(session)
    slot = {name: i for i, name in enumerate(colours)}

    def marked(text: str) -> dict:
        return {"text": text, "lang": scripts.language(text, language), "dir": scripts.direction(text)}

    def who(name: str) -> dict:
        return {**marked(name), "colour": colours.get(name, SPEAKER_COLOURS[0]), "slot": slot.get(name, 0) % len(SPEAKER_COLOURS)}

    title = one_line(session.title) or "Untitled session"
    return {
        "id": session.id, "uuid": session.uuid, "short_id": session.summary.short_id,
        "title": title, "title_lang": scripts.language(title, language), "title_dir": scripts.direction(title),
        "date": date_text(session.start_time, time_zone),
        "start_iso": local_time(session.start_time, time_zone).isoformat() if session.start_time else "",
        "duration": duration_text(session.duration_seconds),
        "location": one_line(session.summary.location),
        "platform": one_line(session.meeting_platform),
        "description": clean(session.description).strip(),
        "tags": [one_line(t) for t in session.summary.tags],
        "speakers": speaker_rows(session),
        "speaker_colours": [{"name": n, "colour": c, "slot": slot[n]} for n, c in colours.items()],
        "summary": clean(session.summary_text).strip(),
        "summary_paragraphs": [marked(p.strip()) for p in clean(session.summary_text).split("\n\n") if p.strip()],
        "action_items": [{"text": one_line(a.text), "owner": one_line(a.owner), "done": a.done,
                          "due": a.due.isoformat() if a.due else "", "line": action_text(a),
                          "lang": scripts.language(one_line(a.text), language),
                          "dir": scripts.direction(one_line(a.text))}
                         for a in session.action_items],
        "topics": [one_line(t) for t in session.topics],
        "segments": [{"start": s.start, "end": s.end, "time": hms(s.start),
                      "speaker": one_line(s.speaker_name) or "Unknown speaker",
                      "who": who(one_line(s.speaker_name) or "Unknown speaker"),
                      "text": one_line(s.text), **{k: v for k, v in marked(one_line(s.text)).items() if k != "text"}}
                     for s in session.segments],
        "sections": sections,
        "anchor": f"s{session.id}",
    }


ZIP_TIME = (1980, 1, 1, 0, 0, 0)     # the earliest time a ZIP entry can hold


def stable_zip(data: bytes) -> bytes:
    """The same ZIP (order, names, compression) with every entry dated ZIP_TIME: python-docx and
    openpyxl date entries with the time of saving, so the same session rendered twice (an export, then
    the mail of it) gave different bytes and different checksums."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, ZIP_TIME)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            dst.writestr(fixed, src.read(info))
    return out.getvalue()
