"""Library benchmark: list 10,000 sessions and "changed since" after one change.

Anchors, measured in the same run on the same file: a bare sqlite3 SELECT of the same
columns (listing) and of the change-marker columns (changed since). Medians of several runs.
"""
from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from steno_exportd.demo import recorder as demo  # noqa: E402
from steno_exportd.library import SUMMARY_COLUMNS, Library  # noqa: E402

N = 10_000
RUNS = 7


def ms(f) -> float:
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1000


def median_ms(f, runs: int = RUNS) -> float:
    return statistics.median(ms(f) for _ in range(runs))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-library-") as tmp:
        t = time.perf_counter()
        demo.generate(tmp, sessions=N, seed=7, small=True)
        print(f"demo_small_{N}_generate_s: {time.perf_counter() - t:.2f}")
        db = Path(tmp) / demo.DB_NAME
        anchor = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        cols = ", ".join(SUMMARY_COLUMNS)

        # Listing: first call in a fresh Library (cold) and steady state (warm), vs a bare SELECT.
        cold = []
        for _ in range(3):
            lib = Library(db)
            lib.check()
            cold.append(ms(lambda: lib.list_sessions()))
            lib.close()
        lib = Library(db)
        assert len(lib.list_sessions()) == N
        warm = median_ms(lambda: lib.list_sessions())
        bare = median_ms(lambda: anchor.execute(f"SELECT {cols} FROM sessions").fetchall())
        cold_ms = statistics.median(cold)
        print(f"library_list_{N}_ms: {cold_ms:.1f}")
        print(f"library_list_{N}_warm_ms: {warm:.1f}")
        print(f"anchor_bare_select_{N}_ms: {bare:.1f}")
        print(f"library_list_vs_bare_select_ratio: {cold_ms / bare:.2f}")

        # Changed since: one session updated by another connection (the recorder), then ask.
        writer = sqlite3.connect(db)
        writer.execute("PRAGMA journal_mode=WAL")
        _, token = lib.changed_since(None)
        times = []
        for k in range(RUNS):
            writer.execute("UPDATE sessions SET title = ?, updated_at = ? WHERE id = ?",
                           (f"changed {k}", f"2030-01-01 00:00:{k:02d}.000000", 100 + k))
            writer.commit()
            t = time.perf_counter()
            delta, token = lib.changed_since(token)
            times.append((time.perf_counter() - t) * 1000)
            assert [s.id for s in delta.changed] == [100 + k], delta
        unchanged = median_ms(lambda: lib.changed_since(token))
        marks = median_ms(lambda: anchor.execute("SELECT id, updated_at, status FROM sessions").fetchall())
        cs = statistics.median(times)
        print(f"library_changed_since_ms: {cs:.1f}")
        print(f"library_changed_since_nothing_ms: {unchanged:.2f}")
        print(f"anchor_bare_select_marks_{N}_ms: {marks:.1f}")
        print(f"library_changed_since_vs_bare_select_ratio: {cs / marks:.2f}")
        writer.close()
        anchor.close()
        lib.close()
    return 0


if __name__ == "__main__":
    sys.exit(cleanup.run(main))
