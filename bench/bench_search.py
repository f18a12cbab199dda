"""Search benchmark: 1,000 one-hour sessions (~400 transcript lines each) in a recorder database.

Measures the index build from scratch, the incremental update after one new session (target
<= 1 s), queries (target <= 50 ms) and the index size on disk. Anchors, in the same run on the
same data: a bare FTS5 table filled straight from the recorder's rows (no library, no folding:
the floor of a build) and the query a plain SQL search would run without an index (a LIKE scan
of every transcript line).
"""
from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from steno_exportd import search  # noqa: E402
from steno_exportd.demo.recorder import DB_NAME, create_database  # noqa: E402
from steno_exportd.library import Library  # noqa: E402
from steno_exportd.search import SearchIndex  # noqa: E402

SESSIONS = 1000
LINES = 400              # one line per 9 s of an hour
WORDS_PER_LINE = 19      # ~125 words per minute
RUNS = 7
COMMON = ("the and to of a I we that is it you for on this be so with have are just about can "
          "will what not do but if our at next").split()
NAMES = ["Alice Martin", "Bob Okafor", "Carla Jensen", "David Kim", "Emma Rossi", "Farid Haddad",
         "Анна Смирнова", "Γιώργος Παπαδόπουλος", "José Müller-Ñúñez", "Kenji Watanabe"]


def vocabulary(rng: random.Random, n: int = 8000) -> list[str]:
    """Pseudo-words with Zipf-like frequencies after the common words (like speech)."""
    syl = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ber", "dan", "el", "for", "gra", "in", "jor", "kel",
           "mar", "nor", "pre", "qua", "ros", "sten", "tur", "ul", "ver", "wil", "xan", "yor", "zel", "ch"]
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(syl) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def fill(db: Path, sessions: int, seed: int = 11) -> None:
    """A recorder database of ``sessions`` one-hour meetings, filled straight through the schema."""
    rng = random.Random(seed)
    vocab = COMMON + vocabulary(rng)
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    conn = create_database(db)
    conn.execute("PRAGMA synchronous=OFF")
    start = dt.datetime(2025, 1, 6, 9, 0)
    with conn:
        for i in range(sessions):
            add_session(conn, rng, vocab, weights, i, start + dt.timedelta(days=i))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def add_session(conn: sqlite3.Connection, rng: random.Random, vocab: list[str], weights: list[float], i: int,
                start: dt.datetime, extra_word: str = "") -> int:
    ts = lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")  # noqa: E731
    end = start + dt.timedelta(hours=1)
    people = rng.sample(NAMES, 4)
    cur = conn.execute(
        "INSERT INTO sessions (uuid, title, status, start_time, end_time, duration_seconds, location, tags,"
        " participant_count, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (f"{i:08x}-0000-4000-8000-{i:012x}", f"Meeting {i}: {' '.join(rng.choices(vocab[30:], k=3))}",
         "completed", ts(start), ts(end), 3600, rng.choice(["Zürich", "Board room", "Cafeteria"]),
         json.dumps([rng.choice(["budget", "roadmap", "hiring"])]), 4, ts(start), ts(end)))
    sid = cur.lastrowid
    words = rng.choices(vocab, weights, k=LINES * WORDS_PER_LINE)
    rows = []
    for k in range(LINES):
        text = " ".join(words[k * WORDS_PER_LINE:(k + 1) * WORDS_PER_LINE]).capitalize() + "."
        if extra_word and k == LINES // 2:
            text += f" {extra_word}"
        rows.append((sid, text, f"S{k % 4}", people[k % 4], k * 9.0, k * 9.0 + 8.0, 8.0, ts(end)))
    conn.executemany("INSERT INTO transcript_entries (session_id, text, speaker_id, speaker_name,"
                     " start_time_seconds, end_time_seconds, duration_seconds, created_at) VALUES (?,?,?,?,?,?,?,?)",
                     rows)
    conn.executemany("INSERT INTO participants (session_id, speaker_id, name, created_at, updated_at)"
                     " VALUES (?,?,?,?,?)", [(sid, f"S{k}", people[k], ts(end), ts(end)) for k in range(4)])
    summary = " ".join(rng.choices(vocab, weights, k=120)).capitalize() + "."
    items = [" ".join(rng.choices(vocab[30:], k=5)) for _ in range(3)]
    conn.execute("INSERT INTO analysis_results (session_id, analysis_type, title, content, created_at)"
                 " VALUES (?,?,?,?,?)", (sid, "summary", "Summary", summary, ts(end)))
    conn.execute("INSERT INTO analysis_results (session_id, analysis_type, title, content, action_items, created_at)"
                 " VALUES (?,?,?,?,?,?)", (sid, "action_items", "Action items", "3", json.dumps(items), ts(end)))
    return sid


def ms(f) -> float:
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1000


def median_ms(f, runs: int = RUNS) -> float:
    return statistics.median(ms(f) for _ in range(runs))


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        tmp = Path(tmp)
        db = tmp / DB_NAME
        t = time.perf_counter()
        fill(db, SESSIONS)
        print(f"recorder_{SESSIONS}_one_hour_sessions_generate_s: {time.perf_counter() - t:.1f}")
        print(f"recorder_db_mb: {db.stat().st_size / 1e6:.1f}")
        lib = Library(db)
        ix = SearchIndex(tmp / "state" / search.FILE_NAME)
        ix.open()

        t = time.perf_counter()
        report = ix.update(lib)
        build = time.perf_counter() - t
        assert report.added == SESSIONS and report.complete, report
        print(f"search_build_{SESSIONS}_sessions_s: {build:.1f}")
        print(f"search_build_rows: {report.rows}")
        print(f"search_build_rows_per_s: {report.rows / build:.0f}")
        print(f"search_build_in_background_s_estimate: {build / search.BACKGROUND_DUTY:.1f}  "
              f"(the daemon indexes at {search.BACKGROUND_DUTY:.0%} of one core)")

        # Anchor: the same transcript rows straight into a bare FTS5 table (no library, no folding).
        bare = sqlite3.connect(tmp / "bare.db", isolation_level=None)
        bare.execute("PRAGMA journal_mode=WAL")
        bare.execute("PRAGMA synchronous=NORMAL")
        bare.execute("CREATE VIRTUAL TABLE fts USING fts5(body, tokenize='unicode61 remove_diacritics 2')")
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        t = time.perf_counter()
        bare.execute("BEGIN")
        bare.executemany("INSERT INTO fts (body) VALUES (?)", src.execute("SELECT text FROM transcript_entries"))
        bare.execute("COMMIT")
        anchor_build = time.perf_counter() - t
        print(f"anchor_bare_fts5_build_s: {anchor_build:.1f}")
        print(f"search_build_vs_bare_fts5_ratio: {build / anchor_build:.2f}")

        # Incremental: one new one-hour session, as the recorder would add it.
        writer = sqlite3.connect(db, isolation_level=None)
        writer.execute("PRAGMA journal_mode=WAL")
        rng = random.Random(5)
        vocab = COMMON + vocabulary(random.Random(11))
        weights = [1.0 / (r + 1) for r in range(len(vocab))]
        times = []
        for k in range(RUNS):
            writer.execute("BEGIN")
            add_session(writer, rng, vocab, weights, SESSIONS + k, dt.datetime(2027, 1, 1) + dt.timedelta(days=k),
                        extra_word=f"zebrafish{k}")
            writer.execute("COMMIT")
            t = time.perf_counter()
            r = ix.update(lib)
            times.append(time.perf_counter() - t)
            assert (r.added, r.changed, r.removed, r.rebuilt) == (1, 0, 0, False), r
        print(f"search_update_one_new_session_s: {statistics.median(times):.3f}  (target <= 1)")
        get_one = median_ms(lambda: lib.get_session(SESSIONS + 1)) / 1000
        print(f"anchor_library_get_session_s: {get_one:.3f}")
        print(f"search_update_vs_get_session_ratio: {statistics.median(times) / get_one:.2f}")
        print(f"search_update_nothing_changed_ms: {median_ms(lambda: ix.update(lib)):.2f}")

        # Queries: a rare word (one session), a mid-frequency word, a common word, an accent-folded place.
        rare = "zebrafish3"
        assert ix.search(rare).total == 1
        mid = vocab[30 + 200]
        common = vocab[30]
        for name, q in (("rare_word", rare), ("mid_word", mid), ("common_word", common), ("stop_word", "the"),
                        ("two_words", f"{mid} {common}"), ("folded_place", "zurich"),
                        ("phrase", f'"{vocab[0]} {vocab[30]}"'), ("prefix", f"{mid[:4]}*")):
            r = ix.search(q)
            print(f"search_query_{name}_ms: {median_ms(lambda: ix.search(q)):.1f}  ({r.total} sessions"
                  f"{', broad: newest first' if r.broad else ''})")
        like = median_ms(lambda: src.execute("SELECT session_id, start_time_seconds FROM transcript_entries "
                                             "WHERE text LIKE ?", (f"%{rare}%",)).fetchall(), 3)
        print(f"anchor_like_scan_rare_word_ms: {like:.1f}")
        print(f"search_query_rare_word_vs_like_scan_ratio: {median_ms(lambda: ix.search(rare)) / like:.3f}")
        print("search_query_target_ms: 50")

        ix.close()
        bare.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with sqlite3.connect(ix.path) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"search_index_mb: {size(ix.path) / 1e6:.1f}")
        print(f"anchor_bare_fts5_mb: {size(tmp / 'bare.db') / 1e6:.1f}")
        print(f"search_index_vs_recorder_db_ratio: {size(ix.path) / db.stat().st_size:.2f}")
        lib.close()
        writer.close()
        src.close()
        bare.close()
    return 0


if __name__ == "__main__":
    sys.exit(cleanup.run(main))
