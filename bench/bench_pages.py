"""Web page benchmark: the first screen of a 2-hour meeting (target <= 300 ms on loopback).

The meeting page holds the first transcript lines and loads the rest on demand; the anchor, in the same
run on the same meeting, is the page with every line in it (``?all=1``, what the page was before). Also
the meetings list and one on-demand piece of 500 lines. Medians of 7 runs after one warm-up, by curl.
"""
from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from steno_exportd import config, demo  # noqa: E402
from steno_exportd.core import Core  # noqa: E402
from steno_exportd.library import Library  # noqa: E402

RUNS = 7
TARGET_MS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl(url: str) -> tuple[float, int]:
    """(seconds to the last byte, bytes) of one GET."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[2] == "200", out
    return float(out[0]), int(out[1])


async def timed(url: str) -> tuple[float, int]:
    await asyncio.to_thread(curl, url)                      # warm-up (session cache, templates)
    runs = [await asyncio.to_thread(curl, url) for _ in range(RUNS)]
    return statistics.median(t for t, _ in runs) * 1000, runs[0][1]


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        t = Path(tmp)
        lib = t / "library"
        demo.generate(lib, sessions=7, seed=5)
        with Library(lib / demo.DB_NAME) as library:
            longest = max((library.get_session(s.id) for s in library.list_sessions()),
                          key=lambda s: len(s.segments))
        (t / "exports").mkdir()
        cfg = config.from_dict({"recorder": {"db_path": str(lib / demo.DB_NAME)},
                                "state": {"dir": str(t / "state"), "runtime_dir": str(t / "run")},
                                "export": {"allowed_dirs": [str(t / "exports")]},
                                "usb": {"enabled": False}, "http": {"bind": ["127.0.0.1"], "port": free_port()}})
        core = Core(cfg)
        await core.start()
        from steno_exportd.web import serve
        try:
            async with serve(core) as url:
                page = f"{url}/sessions/{longest.id}"
                first, first_bytes = await timed(page)
                whole, whole_bytes = await timed(page + "?all=1")
                piece, _ = await timed(f"{page}/transcript?from=120&count=500")
                listing, _ = await timed(url + "/")
        finally:
            await core.stop()
    minutes = (longest.duration_seconds or 0) / 60
    print(f"meeting: {minutes:.0f} min, {len(longest.segments)} transcript lines")
    print(f"first_screen_ms: {first:.0f} (target <= {TARGET_MS}; {first_bytes} bytes)")
    print(f"anchor_all_lines_ms: {whole:.0f} ({whole_bytes} bytes)")
    print(f"ratio_first_to_all: {first / whole:.2f}")
    print(f"transcript_piece_500_ms: {piece:.0f}")
    print(f"meetings_list_ms: {listing:.0f}")


if __name__ == "__main__":
    sys.exit(cleanup.run(lambda: asyncio.run(main()), "bench_pages"))
