"""`steno-exportd demo-data`: a deterministic demo recorder library (database + real audio).

The database is created from exactly the upstream schema (data/silentsteno-schema.sql) and
filled like the recorder would. Besides ordinary meetings it always holds the awkward
cases: a 2-hour meeting, a 1-minute one, non-Latin text, a FAT32-hostile title, a session
still recording, a completed one whose audio is missing, and one with an empty transcript.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import importlib.resources
import json
import logging
import os
import random
import sqlite3
import sys
import time
import uuid as uuidlib
from pathlib import Path

from steno_exportd.demo import audio as demo_audio

log = logging.getLogger(__name__)

DB_NAME = "silent_steno.db"
DEMO_MARK = "steno_exportd_demo"   # in every demo session's session_metadata
RATE = 8000                       # low-rate mono keeps the demo small; still real, playable sound


def schema_sql() -> str:
    """The upstream recorder schema shipped with the package."""
    return importlib.resources.files("steno_exportd.data").joinpath("silentsteno-schema.sql").read_text("utf-8")


def create_database(path: str | os.PathLike) -> sqlite3.Connection:
    """A new recorder database at ``path`` from the upstream schema (WAL, like the recorder)."""
    conn = sqlite3.connect(path)
    conn.executescript(schema_sql())
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


# ---- people and words ---------------------------------------------------------------------

PEOPLE = [
    ("Alice Martin", "Product Manager", "Silent Steno"), ("Bob Okafor", "Engineering Lead", "Silent Steno"),
    ("Carla Jensen", "Designer", "Silent Steno"), ("David Kim", "Sales Director", "Northwind"),
    ("Emma Rossi", "QA Engineer", "Silent Steno"), ("Farid Haddad", "Operations", "Contoso"),
    ("Grace Liu", "Finance", "Silent Steno"), ("Hannah Becker", "Customer Success", "Fabrikam"),
    ("Ivan Petrov", "Firmware Engineer", "Silent Steno"), ("Julia Santos", "Legal Counsel", "Contoso"),
    ("Kenji Watanabe", "Hardware Engineer", "Silent Steno"), ("Laura Nowak", "Marketing", "Silent Steno"),
]
INTL_PEOPLE = [
    ("Анна Смирнова", "Руководитель проекта", "ООО «Север»"),
    ("Γιώργος Παπαδόπουλος", "Μηχανικός", "Ελληνική Τεχνική Α.Ε."),
    ("José Müller-Ñúñez", "Consultor", "Café Zürich S.à r.l."),
    ("Zoë Dvořák", "Traductrice", "Éditions Ångström"),
]
INTL_LINES = [
    ("Анна Смирнова", "Добрый день! Давайте начнём с обзора бюджета на следующий квартал."),
    ("Γιώργος Παπαδόπουλος", "Καλημέρα σε όλους. Η παράδοση του εξοπλισμού έχει καθυστερήσει μία εβδομάδα."),
    ("José Müller-Ñúñez", "Très bien — señor Ibáñez confirmó la reunión en Zürich, après le déjeuner."),
    ("Zoë Dvořák", "Příští týden pošlu překlad smlouvy; ça vous convient, Анна?"),
    ("Анна Смирнова", "Да, отлично. Γιώργο, можешь прислать график поставок до пятницы?"),
    ("Γιώργος Παπαδόπουλος", "Ναι, θα στείλω το χρονοδιάγραμμα μέχρι την Παρασκευή."),
    ("José Müller-Ñúñez", "来週までに見積もりを送ります。"),
    ("Zoë Dvořák", "Parfait. Naïve question: le coût inclut-il la TVA? Ça fait 1 250 € à peu près."),
]
TOPICS = [
    ("roadmap", ["release plan", "beta feedback", "feature freeze", "the Q3 milestones", "the backlog"]),
    ("budget", ["hardware budget", "travel costs", "the vendor quote", "licence fees", "the forecast"]),
    ("hiring", ["the job posting", "interview loop", "onboarding plan", "the offer letter", "team structure"]),
    ("customer", ["the Northwind pilot", "support tickets", "renewal terms", "the onboarding call", "NPS results"]),
    ("firmware", ["the audio driver", "battery life", "the USB export", "OTA updates", "the boot time"]),
    ("marketing", ["the launch video", "trade show booth", "press release", "the landing page", "webinar"]),
]
VERBS = ["review", "finalise", "update", "test", "ship", "draft", "clean up", "prioritise", "discuss",
         "double-check", "schedule", "simplify", "document", "measure", "revisit"]
TIMES = ["by Friday", "next week", "before the release", "this sprint", "tomorrow", "after the demo",
         "by end of month", "before the board meeting"]
OPENERS = ["I think", "Honestly,", "To be fair,", "From my side,", "Just to add,", "Okay, so", "Right.",
           "As far as I know,", "If I remember correctly,", "Quick note:"]
STATES = ["on track", "a bit behind", "blocked on legal", "almost done", "still open", "waiting for feedback",
          "ready for review", "over budget"]


def _sentence(rng: random.Random, topic: list[str]) -> str:
    noun, noun2 = rng.choice(topic), rng.choice(topic)
    form = rng.randrange(8)
    if form == 0:
        s = f"{rng.choice(OPENERS)} we should {rng.choice(VERBS)} {noun} {rng.choice(TIMES)}."
    elif form == 1:
        s = f"Can we {rng.choice(VERBS)} {noun} {rng.choice(TIMES)}?"
    elif form == 2:
        s = f"{noun.capitalize()} is {rng.choice(STATES)}, so let's {rng.choice(VERBS)} {noun2} first."
    elif form == 3:
        s = f"{rng.choice(OPENERS)} {noun} looks {rng.choice(STATES)} right now."
    elif form == 4:
        s = f"I'll {rng.choice(VERBS)} {noun} and send a summary {rng.choice(TIMES)}."
    elif form == 5:
        s = f"Agreed. The numbers for {noun} are better than last quarter."
    elif form == 6:
        s = f"What about {noun}? We said we would {rng.choice(VERBS)} it {rng.choice(TIMES)}."
    else:
        s = f"Good point, and {noun2} depends on that too."
    return s


def _utterance(rng: random.Random, topic: list[str], words: int) -> str:
    parts = []
    n = 0
    while n < words:
        s = _sentence(rng, topic)
        parts.append(s)
        n += len(s.split())
    return " ".join(parts)


# ---- session specs --------------------------------------------------------------------

@dataclasses.dataclass
class Spec:
    title: str
    duration: float                      # seconds
    speakers: list[tuple[str, str, str]]
    status: str = "completed"
    audio: str | None = "flac"           # flac | wav | None
    audio_bits: int = 16
    audio_missing: bool = False
    segments: int | None = None          # None: from duration
    empty_transcript: bool = False
    lines: list[tuple[str, str]] | None = None    # fixed (speaker name, text)
    topic: int = 0
    location: str | None = "Meeting room 2"
    platform: str | None = None
    tags: tuple[str, ...] = ()
    description: str | None = None


def _specs(rng: random.Random, n: int) -> list[Spec]:
    specs = [
        Spec("Quarterly roadmap review", 7200.0, rng.sample(PEOPLE, 6), audio="wav", audio_bits=8,
             segments=2000, topic=0, tags=("roadmap", "quarterly"), location="Board room",
             description="Full-afternoon review of the roadmap, budget and hiring."),
        Spec("Quick sync: badge printer", 60.0, rng.sample(PEOPLE, 2), segments=12, topic=5,
             tags=("sync",), location=None),
        Spec("Встреча с партнёрами — Αθήνα & Zürich (東京)", 420.0, INTL_PEOPLE, lines=INTL_LINES * 3,
             topic=1, tags=("international", "партнёры"), location="Zürich, Bahnhofstraße 1",
             platform="Jitsi", description="Встреча партнёров; συνάντηση; réunion."),
        Spec('Budget: Q3/Q4 \\ "final"? <draft> * | v2', 900.0, rng.sample(PEOPLE, 3), audio="wav",
             topic=1, tags=("budget",)),
        Spec("Weekly engineering stand-up (live)", 300.0, rng.sample(PEOPLE, 4), status="recording",
             topic=4, tags=("standup",)),
        Spec("Customer call: Northwind pilot", 1200.0, rng.sample(PEOPLE, 3), audio_missing=True,
             topic=3, tags=("customer",), platform="Teams", location=None),
        Spec("Room check (nobody spoke)", 180.0, rng.sample(PEOPLE, 2), empty_transcript=True, topic=2,
             tags=(), location="Meeting room 1"),
    ]
    titles = ["Design critique: export page", "Hiring sync", "Firmware bug triage", "Marketing launch plan",
              "1:1 Alice / Bob", "Vendor negotiation", "Sprint retrospective", "Support escalation review",
              "Budget check-in", "Architecture deep dive", "Onboarding plan", "Release go/no-go"]
    for i in range(max(0, n - len(specs))):
        topic = rng.randrange(len(TOPICS))
        title = titles[i % len(titles)] + (f" #{i // len(titles) + 1}" if i >= len(titles) else "")
        specs.append(Spec(title, float(rng.randrange(3, 14) * 60 + rng.randrange(60)),
                          rng.sample(PEOPLE, rng.randint(2, 6)),
                          status="archived" if i % 10 == 2 else "processing" if i % 17 == 4 else "completed",
                          audio=rng.choice(["flac", "wav"]), topic=topic,
                          tags=(TOPICS[topic][0],), location=rng.choice([None, "Meeting room 2", "Cafeteria"]),
                          platform=rng.choice([None, None, "Zoom", "Teams"])))
    return specs[:max(n, 7)] if n >= 7 else specs


def _ts(d: dt.datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S.%f")


def _uuid(rng: random.Random) -> str:
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


def _speaker_id(i: int) -> str:
    return f"SPEAKER_{i:02d}"


def _transcript(rng: random.Random, spec: Spec) -> list[tuple[int, float, float, str, float]]:
    """(speaker index, start, end, text, confidence) spread over the duration."""
    if spec.empty_transcript:
        return []
    topic = TOPICS[spec.topic][1]
    names = [p[0] for p in spec.speakers]
    if spec.lines:
        lines = [(names.index(name), text) for name, text in spec.lines]
    else:
        count = spec.segments or max(4, int(spec.duration / 9))
        words_total = spec.duration * 2.1            # ~125 words per minute of recording
        per = max(3, int(words_total / count))
        weights = [rng.uniform(0.5, 2.0) for _ in names]
        lines = []
        prev = -1
        for _ in range(count):
            who = rng.choices(range(len(names)), weights)[0]
            if who == prev and len(names) > 1:
                who = (who + 1) % len(names)
            prev = who
            lines.append((who, _utterance(rng, topic, max(2, int(rng.gauss(per, per / 3))))))
    slot = spec.duration / len(lines)
    out = []
    for i, (who, text) in enumerate(lines):
        start = round(i * slot + rng.uniform(0.05, 0.25) * slot, 2)
        end = round(min((i + 1) * slot - 0.05, start + max(0.6, slot * rng.uniform(0.7, 0.95))), 2)
        out.append((who, start, max(start, end), text, round(rng.uniform(0.72, 0.99), 3)))
    return out


def _analysis(rng: random.Random, spec: Spec, start: dt.datetime) -> tuple[str, list, list[str]]:
    names = [p[0] for p in spec.speakers]
    topic_name, nouns = TOPICS[spec.topic]
    topics = rng.sample(nouns, 3)
    if spec.lines:
        topics = ["бюджет / budget", "παράδοση εξοπλισμού", "traduction du contrat", "見積もり"]
    summary = (f"{names[0]} opened the meeting on {topic_name}. The group discussed "
               f"{topics[0]}, {topics[1]} and {topics[2]}. {names[-1]} raised concerns about timing; "
               f"it was agreed to {rng.choice(VERBS)} {topics[0]} {rng.choice(TIMES)} and to revisit "
               f"{topics[1]} at the next meeting.")
    if spec.lines:
        summary = ("Анна открыла встречу. Γιώργος ανέφερε καθυστέρηση μίας εβδομάδας. "
                   "José confirmó la reunión à Zürich; Zoë enverra la traduction. 来週までに見積もり。")
    items: list = []
    for k in range(rng.randint(2, 4)):
        due = (start + dt.timedelta(days=rng.randint(2, 21))).date().isoformat()
        items.append({"text": f"{rng.choice(VERBS).capitalize()} {rng.choice(nouns)}",
                      "owner": names[k % len(names)], "due": due})
    items.append(f"Share the notes of '{spec.title}' with the team")
    return summary, items, topics


def _write_session(conn: sqlite3.Connection, rng: random.Random, spec: Spec, start: dt.datetime,
                   out: Path, pal: list, stats: dict, small: bool, shared_audio: dict | None) -> None:
    uid = _uuid(rng)
    transcript = _transcript(rng, spec)
    end = start + dt.timedelta(seconds=spec.duration)
    recording = spec.status in ("recording", "paused")
    updated = end + dt.timedelta(minutes=rng.randint(2, 30)) if not recording else start + dt.timedelta(
        seconds=spec.duration)
    audio_rel = audio_size = None
    fmt = spec.audio
    checksum = None
    if fmt:
        audio_rel = f"audio/{start:%Y%m%d_%H%M%S}_{uid[:8]}.{fmt}"
        if spec.audio_missing:
            audio_size = int(spec.duration * RATE * 2)
        elif shared_audio is not None:
            audio_rel, audio_size, checksum = shared_audio[fmt]
        else:
            speech = [(s, e, who) for who, s, e, _t, _c in transcript]
            seq, last = demo_audio.sequence_for(spec.duration, RATE, speech)
            path = out / audio_rel
            writer = demo_audio.write_flac if fmt == "flac" else demo_audio.write_wav
            audio_size = writer(path, RATE, spec.audio_bits, pal, seq, last)
            checksum = _sha256(path)
            stats["audio_bytes"] += audio_size
    words = sum(len(t[3].split()) for t in transcript)
    meta = {"recorder_version": "1.4.2", "device": "silentsteno-pi", "words": words, DEMO_MARK: True}
    cur = conn.execute(
        "INSERT INTO sessions (uuid, title, description, status, start_time, end_time, duration_seconds,"
        " audio_file_path, audio_format, audio_size_bytes, audio_quality, sample_rate, participant_count,"
        " location, meeting_platform, transcription_completed, analysis_completed, processing_time_seconds,"
        " transcription_confidence, audio_level_avg, audio_level_max, tags, session_metadata, configuration,"
        " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (uid, spec.title, spec.description, spec.status, _ts(start), None if recording else _ts(end),
         None if recording else int(spec.duration), audio_rel, fmt, audio_size,
         "low" if spec.audio_bits == 8 else "medium", RATE if fmt else None, len(spec.speakers),
         spec.location, spec.platform, int(not recording and spec.status != "processing"),
         int(spec.status in ("completed", "archived")), None if recording else rng.randint(20, 400),
         round(rng.uniform(0.8, 0.95), 3), round(rng.uniform(-30, -20), 1), round(rng.uniform(-6, -1), 1),
         json.dumps(list(spec.tags), ensure_ascii=False), json.dumps(meta), json.dumps({"model": "whisper-base"}),
         _ts(start), _ts(updated)))
    sid = cur.lastrowid
    created = _ts(updated)
    conn.executemany(
        "INSERT INTO transcript_entries (session_id, text, speaker_id, speaker_name, start_time_seconds,"
        " end_time_seconds, duration_seconds, confidence, confidence_level, audio_level, word_count,"
        " speaking_rate, language, processing_model, entry_metadata, created_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(sid, text, _speaker_id(who), spec.speakers[who][0], s, e, round(e - s, 2), c,
          "very_high" if c > 0.95 else "high" if c > 0.85 else "medium", -22.0, len(text.split()),
          round(len(text.split()) / max(e - s, 0.1) * 60, 1), "ru" if spec.lines else "en",
          "whisper-base", None, created)
         for who, s, e, text, c in transcript])
    stats["segments"] += len(transcript)
    stats["words"] += words
    spoken: dict[int, float] = {}
    for who, s, e, _t, _c in transcript:
        spoken[who] = spoken.get(who, 0.0) + (e - s)
    total = sum(spoken.values()) or 1.0
    conn.executemany(
        "INSERT INTO participants (session_id, speaker_id, name, role, organization,"
        " total_speaking_time_seconds, speaking_percentage, interruption_count, questions_asked,"
        " speaking_rate_wpm, engagement_score, contribution_score, entry_metadata, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(sid, _speaker_id(i), name, role, org, round(spoken.get(i, 0.0), 1),
          round(100.0 * spoken.get(i, 0.0) / total, 1), rng.randint(0, 5), rng.randint(0, 8),
          round(rng.uniform(120, 180), 1), round(rng.random(), 2), round(rng.random(), 2), None, created, created)
         for i, (name, role, org) in enumerate(spec.speakers)])
    if spec.status in ("completed", "archived"):
        summary, items, topics = _analysis(rng, spec, start)
        if spec.empty_transcript:
            summary, items, topics = "No speech was detected in this recording.", [], []
        rows = [("summary", "Meeting summary", summary, None, None, None),
                ("action_items", "Action items", f"{len(items)} action items", None,
                 json.dumps(items, ensure_ascii=False), None),
                ("topics", "Key topics", ", ".join(topics), None, None, json.dumps(topics, ensure_ascii=False))]
        conn.executemany(
            "INSERT INTO analysis_results (session_id, analysis_type, title, content, structured_data,"
            " action_items, key_topics, confidence_score, processing_time_seconds, model_used, model_version,"
            " prompt_template, entry_metadata, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(sid, t, title, content, sd, ai, kt, 0.85, 3.2, "gemma-2b", "1.0", t, None, created)
             for t, title, content, sd, ai, kt in rows])
    if fmt and audio_size is not None and not spec.audio_missing:
        conn.execute(
            "INSERT INTO file_info (session_id, filename, file_path, file_type, file_format, size_bytes, checksum,"
            " mime_type, storage_location, is_compressed, compression_ratio, is_encrypted, access_level,"
            " entry_metadata, created_at, accessed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (sid, Path(audio_rel).name, audio_rel, "audio", fmt, audio_size, checksum,
             "audio/flac" if fmt == "flac" else "audio/wav", "local", int(fmt == "flac"), 1.0, 0, "private",
             None, created, None))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def is_demo_database(path: Path) -> bool:
    """True when ``path`` was written by demo-data (so replacing it loses nothing real)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT count(*), sum(session_metadata LIKE ?) FROM sessions",
                               (f'%"{DEMO_MARK}": true%',)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return row[0] == (row[1] or 0)


def generate(out: str | os.PathLike, sessions: int = 12, seed: int = 1, small: bool = False) -> dict:
    """Write ``out``/silent_steno.db and ``out``/audio/; returns counts (sessions, words, audio_bytes...).

    Refuses (FileExistsError) to replace a database that demo-data did not write.
    """
    out = Path(out)
    if (out / DB_NAME).exists() and not is_demo_database(out / DB_NAME):
        raise FileExistsError(f"{out / DB_NAME} exists and is not a demo library; not replacing it")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stats = {"sessions": 0, "segments": 0, "words": 0, "audio_bytes": 0}
    pal = demo_audio.palette(RATE, 6, seed)
    tmp = out / (DB_NAME + ".tmp")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    conn = create_database(tmp)
    conn.execute("PRAGMA synchronous=OFF")
    shared = None
    if small:
        shared = {}
        for fmt in ("flac", "wav"):
            rel = f"audio/shared_demo.{fmt}"
            seq, last = demo_audio.sequence_for(5.0, RATE, [(0.5, 4.5, 0)])
            writer = demo_audio.write_flac if fmt == "flac" else demo_audio.write_wav
            size = writer(out / rel, RATE, 16, pal, seq, last)
            shared[fmt] = (rel, size, _sha256(out / rel))
            stats["audio_bytes"] += size
    specs = _specs(rng, sessions)
    if small:
        specs = [s for s in specs if s.duration < 7200] or specs
        specs = [s if s.lines else dataclasses.replace(s, segments=6, duration=min(s.duration, 60.0))
                 for s in specs]
        base_title = [s.title for s in specs]
        while len(specs) < sessions:
            i = len(specs)
            specs.append(Spec(f"{base_title[i % len(base_title)]} ({i})", 600.0,
                              [PEOPLE[i % 12], PEOPLE[(i + 5) % 12]], audio="flac" if i % 2 else "wav",
                              segments=4, topic=i % len(TOPICS), status="completed" if i % 9 else "archived"))
    when = dt.datetime(2026, 9, 1, 9, 0, tzinfo=None)
    with conn:
        for i, spec in enumerate(specs):
            start = when + dt.timedelta(hours=rng.randint(0, 8), minutes=rng.choice([0, 15, 30, 45]))
            if spec.status == "recording":
                start = dt.datetime(2026, 11, 20, 10, 0) if not small else start
            _write_session(conn, rng, spec, start, out, pal, stats, small, shared)
            stats["sessions"] += 1
            when += dt.timedelta(days=1) if not small else dt.timedelta(hours=3)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    final = out / DB_NAME
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(final) + suffix).unlink(missing_ok=True)
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    os.replace(tmp, final)
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of demo-data."""
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for silent_steno.db and audio/")
    parser.add_argument("--sessions", type=int, default=12, metavar="N", help="number of sessions (default 12, min 7)")
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (same seed, same library)")
    parser.add_argument("--small", action="store_true",
                        help="cheap mode for scale tests: short transcripts, two shared audio files")


def main(args: argparse.Namespace) -> int:
    if args.sessions < 1:
        print("demo-data: --sessions must be at least 1", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        stats = generate(args.out, args.sessions, args.seed, args.small)
    except FileExistsError as e:
        print(f"demo-data: {e}", file=sys.stderr)
        return 1
    print(f"demo-data: {stats['sessions']} sessions, {stats['segments']} transcript entries, "
          f"{stats['words']} words, {stats['audio_bytes'] / 1e6:.1f} MB audio in "
          f"{Path(args.out) / DB_NAME} ({time.monotonic() - t0:.1f} s)")
    return 0
