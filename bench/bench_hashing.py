"""Hashing benchmark: SHA-256's speed inside each of the daemon's hashing paths against SHA-256 in a fresh process.

SHA-256 is the export's CPU bottleneck on a Pi (bench export, BENCH_PROFILE=pi4). On x86 ISA-L's CRC-32 (AVX-512,
no VZEROUPPER) leaves a thread's upper vector state dirty, and OpenSSL's SHA-256 then runs at three quarters of its
speed in that thread and in the threads it starts, until something clears it (writer.vector_state_clean). Each path
below runs in a thread whose creator has run ISA-L's CRC-32, as the daemon's do; the CPU time of its SHA-256 updates
alone is counted (MB per CPU-second, best of RUNS). Anchor, in the same run on the same bytes: SHA-256 in a fresh
process (no CRC-32 before it). Each path is measured with the clean and, for comparison, without it
(vector_state_clean made a no-op). Target: every path >= 0.9x the anchor.

On a machine without AVX-512 (or on a Pi) both figures match the anchor.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isal.isal_zlib import crc32  # noqa: E402

from steno_exportd.engine import archive, prehash, writer  # noqa: E402
from steno_exportd.engine.targets import DirectoryTarget  # noqa: E402
from steno_exportd.recordings import SourceRef  # noqa: E402

SIZE = 96 << 20
RUNS = 3
_real_sha256 = hashlib.sha256
_real_clean = writer.vector_state_clean


class _Timed:
    """SHA-256 that counts the CPU time of its updates, in the thread that runs them."""
    spent = 0.0

    def __init__(self, data: bytes = b"") -> None:
        self._h = _real_sha256(data)

    def update(self, b) -> None:
        t = time.thread_time()
        self._h.update(b)
        _Timed.spent += time.thread_time() - t

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def digest(self) -> bytes:
        return self._h.digest()


_HASHLIB = types.SimpleNamespace(sha256=_Timed, sha512=hashlib.sha512)


def clean_rate(path: Path) -> float:
    """Bytes per CPU-second of SHA-256 over the file in a fresh process (best of RUNS)."""
    code = ("import hashlib, sys, time\n"
            "d = memoryview(open(sys.argv[1], 'rb').read()); best = 9e9\n"
            f"for _ in range({RUNS}):\n"
            " t = time.thread_time(); hashlib.sha256(d).digest(); best = min(best, time.thread_time() - t)\n"
            "print(len(d) / best)")
    return float(subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                check=True).stdout)


def in_dirty_thread(fn) -> None:
    """Run fn in a thread started by one that has just run ISA-L's CRC-32 (as the daemon's threads are)."""
    failed: list[BaseException] = []

    def guarded() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
            failed.append(e)

    def starter() -> None:
        crc32(os.urandom(1 << 16))
        t = threading.Thread(target=guarded)
        t.start()
        t.join()
    s = threading.Thread(target=starter)
    s.start()
    s.join()
    if failed:
        raise failed[0]


def copy_path(src: Path, work: Path) -> None:
    """The export's copy: writer.copy_into's hasher (SHA-256 and CRC-32 of each chunk)."""
    out = Path(tempfile.mkdtemp(dir=work))
    size, _sha, _crc, h = writer.copy_into(SourceRef(src, src.parent), DirectoryTarget(out).open_write("rec.wav"))
    h.abort()
    assert size == SIZE


def zip_path(src: Path, work: Path) -> None:
    """A ZIP's checksums of a recording not hashed before (archive._checksums)."""
    fd = os.open(src, os.O_RDONLY)
    try:
        f = types.SimpleNamespace(fd=fd, st=os.fstat(fd), ref=types.SimpleNamespace(path=src))
        assert archive._checksums(f, SIZE, threading.Event()) is not None
    finally:
        os.close(fd)


class _Cache:
    def get(self, *a) -> None:
        return None

    def put(self, *a, **k) -> None:
        pass


def ahead_path(src: Path, work: Path) -> None:
    """The background hasher (prehash: one recording into the hash cache)."""
    go = threading.Event()
    go.set()
    me = types.SimpleNamespace(_cache=_Cache(), _go=go, _stopping=threading.Event(), bytes=0, hashed=0)
    prehash.Prehasher._hash(me, SourceRef(src, src.parent))
    assert me.hashed == 1 and me.bytes == SIZE


def rate(fn, src: Path, work: Path, clean: bool) -> float:
    """Bytes per CPU-second of the path's SHA-256 updates (best of RUNS)."""
    writer.vector_state_clean = _real_clean if clean else (lambda: None)
    saved = {m: m.hashlib for m in (writer, archive, prehash)}
    for m in saved:
        m.hashlib = _HASHLIB
    try:
        best = 0.0
        for _ in range(RUNS):
            _Timed.spent = 0.0
            in_dirty_thread(lambda: fn(src, work))
            best = max(best, SIZE / _Timed.spent)
        return best
    finally:
        for m, h in saved.items():
            m.hashlib = h
        writer.vector_state_clean = _real_clean


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="steno-bench-hash-") as tmp:
        work = Path(tmp)
        src = work / "rec.wav"
        src.write_bytes(os.urandom(SIZE))
        anchor = clean_rate(src)
        print(f"hash_anchor_fresh_process_mb_per_cpu_s: {anchor / 1e6:.0f}")
        for name, fn in (("copy", copy_path), ("zip", zip_path), ("ahead", ahead_path)):
            dirty = rate(fn, src, work, clean=False)
            ours = rate(fn, src, work, clean=True)
            print(f"hash_{name}_mb_per_cpu_s: {ours / 1e6:.0f} (ratio {ours / anchor:.2f}; "
                  f"without the vector clean {dirty / 1e6:.0f}, ratio {dirty / anchor:.2f})")


if __name__ == "__main__":
    main()
