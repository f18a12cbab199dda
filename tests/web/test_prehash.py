"""Recordings hashed ahead of need (issue 21): the first ZIP finds every checksum; the hasher waits for jobs and
downloads; a ZIP of recordings never hashed still has the right checksums."""
from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import time
import zipfile

from steno_exportd import demo
from steno_exportd.engine.prehash import CHUNK
from steno_exportd.library import Library
from tests.parts import until
from tests.web.helpers import leave, open_download

DESCRIPTOR = 0x08           # ZIP flag bit 3: CRC and sizes follow the data (not known when the header went out)


def recordings(lib_dir) -> dict[int, os.PathLike]:
    lib = Library(lib_dir / demo.DB_NAME)
    try:
        out = {}
        for s in lib.list_sessions(exportable_only=True):
            audio = lib.recording(s.id)
            if audio is not None and audio.path is not None:
                out[s.id] = audio.path
        return out
    finally:
        lib.close()


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


async def audio_zip(client, ids) -> zipfile.ZipFile:
    r = await client.get("/zip", params=[("formats", "audio"), *(("id", str(i)) for i in ids)])
    assert r.status == 200, await r.text()
    z = zipfile.ZipFile(io.BytesIO(await r.read()))
    assert await asyncio.to_thread(z.testzip) is None           # every CRC right
    return z


def check_sums(z: zipfile.ZipFile, paths) -> list[zipfile.ZipInfo]:
    """The audio entries; SHA256SUMS names each with the SHA-256 of its bytes (and of the recording)."""
    sums_name = next(n for n in z.namelist() if n.endswith("/SHA256SUMS"))
    sums = dict(reversed(line.split("  ", 1)) for line in z.read(sums_name).decode().splitlines())
    root = sums_name.rsplit("/", 1)[0] + "/"
    audio = [i for i in z.infolist() if not i.filename.endswith(("SHA256SUMS", "manifest.json"))]
    assert len(audio) == len(paths)
    for info in audio:
        assert sums[info.filename[len(root):]] == hashlib.sha256(z.read(info)).hexdigest()
    assert sorted(sums[i.filename[len(root):]] for i in audio) == sorted(sha256(p) for p in paths)
    return audio


async def test_after_the_daemon_idles_the_first_zip_finds_every_checksum(web_client, demo_lib, tmp_path):
    recs = recordings(demo_lib)
    assert len(recs) >= 5
    # without the hasher, the first ZIP hashes its recordings on the way: CRCs come after the data
    client, core = await web_client()
    z = await audio_zip(client, recs)
    assert all(i.flag_bits & DESCRIPTOR for i in await asyncio.to_thread(check_sums, z, recs.values()))

    client, core = await web_client(**{"export.hash_ahead": True, "state.dir": str(tmp_path / "b" / "state"),
                                       "state.runtime_dir": str(tmp_path / "b" / "run")})    # a cache of its own
    await core.prehasher.settled(timeout=120)
    assert core.prehasher.hashed == len(recs)
    z = await audio_zip(client, recs)
    # every checksum known before the first byte: in the local headers (sent by sendfile, not read again)
    assert not any(i.flag_bits & DESCRIPTOR for i in await asyncio.to_thread(check_sums, z, recs.values()))
    assert core.prehasher.hashed == len(recs)          # nothing hashed twice

    # the worker runs at the lowest CPU and I/O priority (only it: the daemon's other threads keep theirs)
    tid = core.prehasher.worker_tid
    assert tid and tid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, tid) == 19
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == 0
    assert subprocess.run(["ionice", "-p", str(tid)], capture_output=True, text=True,
                          check=True).stdout.strip() == "idle"


async def test_the_hasher_waits_while_a_download_or_a_job_runs(web_client, own_lib, tmp_path):
    recs = recordings(own_lib)
    files = set(recs.values())                 # sessions may share a recording: it is hashed once
    assert len(files) >= 2
    for p in files:                            # large (sparse: SHA-256, not the disk, takes the time)
        with open(p, "r+b") as f:
            f.truncate(512 << 20)
    total = sum(os.path.getsize(p) for p in files)
    client, core = await web_client(own_lib, **{"export.hash_ahead": True})
    hasher = core.prehasher
    await until(lambda: hasher.bytes > 0, "the hasher to start", timeout=60, in_thread=False)

    async def still_while(held, what: str, seconds: float = 1.5) -> None:
        """hasher.bytes stays put while ``held()``, once the hasher has seen the pause (a job: at its next look,
        every 0.2 s); the chunk it was hashing then may still end (at nice 19 on a busy machine that takes a while)."""
        await asyncio.sleep(0.5)
        before = hasher.bytes
        assert before < total, f"the hasher finished before {what}: the race was not run"
        deadline = time.monotonic() + seconds
        while held() or time.monotonic() < deadline:
            if not held():
                break
            assert hasher.bytes - before <= CHUNK, f"hashed {hasher.bytes - before} bytes during {what}"
            await asyncio.sleep(0.02)

    # a download in progress (a slow client holding it open)
    small = min(recs, key=lambda i: i)
    _, writer, _ = await open_download(client, f"/sessions/{small}/audio?dl=1", 64 * 1024)
    held = [True]
    waiter = asyncio.create_task(still_while(lambda: held[0], "a download"))
    await asyncio.sleep(2.5)
    held[0] = False
    leave(writer)
    await waiter
    mark = hasher.bytes
    await until(lambda: hasher.bytes > mark, "the hasher to go on after the download", timeout=30, in_thread=False)

    # a job (PDF rendering: seconds of work) started while it hashes
    job = await core.export_sessions(list(recs), ["pdf", "docx", "txt"], str(tmp_path / "exports"))
    await still_while(lambda: not core.jobs.get(job.id).state.finished, "an export job", seconds=0)
    assert (await core.jobs.wait(job.id, 120)).state == "completed"

    # afterwards every recording is hashed, once
    await hasher.settled(timeout=180)
    assert hasher.hashed == len(files)
    assert hasher.bytes == total                       # each picked up where it paused, none read twice


async def test_a_stop_ends_the_first_look_at_a_big_library_at_once(tmp_path):
    """The first look at a library (each added session's recording looked up) stops with the hasher: it ran on
    in a thread after stop() (20 s for 10,000 sessions here), and asyncio's exit waits for such threads, so a
    SIGTERM soon after start took 20 s (systemd kills at 30) and the look used a cache already closed."""
    from steno_exportd.engine.prehash import Prehasher

    class Looked(Library):
        """The recorder's library, counting (and slowing a little) each recording looked up."""
        looked = 0

        def recording(self, session_id):
            Looked.looked += 1
            time.sleep(0.002)
            return super().recording(session_id)

    d = tmp_path / "lib"
    await asyncio.to_thread(demo.generate, d, sessions=600, seed=3, small=True)
    lib = Looked(d / demo.DB_NAME)
    hasher = Prehasher(tmp_path / "hashes.sqlite", 10_000, lambda: False, idle_seconds=3600)
    try:
        await hasher.start(lambda: lib)
        await until(lambda: Looked.looked >= 20, timeout=30)
        await hasher.stop()
        stopped_at = Looked.looked
        await asyncio.sleep(0.5)
        assert Looked.looked - stopped_at <= 1, "the look went on after stop()"
        assert Looked.looked < 300
    finally:
        await hasher.stop()
        lib.close()
