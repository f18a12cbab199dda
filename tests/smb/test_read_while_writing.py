"""A recording pushed to a real smbd is read back WHILE it is written (on the second connection, each range once
the server answered its WRITE), checked before the rename: no read-back of the whole file after it (issue 20: the
last file of every recorder was read back in series after all writes, the push's whole gap to smbclient).
Observed on the NAS's own disk with inotify: smbd's reads are IN_ACCESS, its writes IN_MODIFY."""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import pathlib
import struct
import threading
from typing import Callable

import pytest

from steno_exportd.engine.targets import TEMP_PREFIX
from tests.parts.smbd import PW
from tests.smb.recorder import Progress, assert_landed, make_recorder, push, recorder_config

IN_ACCESS, IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO = 0x1, 0x2, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_ISDIR = 0x100, 0x200, 0x40000000
MIB = 1024 * 1024


class Events:
    """inotify on a folder tree (folders made later are watched as they appear): (mask, folder, name) in the order
    the kernel reported them. ``on(mask, path, name)``: called in the watching thread as each comes."""

    def __init__(self, top: pathlib.Path, on: Callable[[int, pathlib.Path, str], None] = lambda *a: None) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.wds: dict[int, pathlib.Path] = {}
        self.seen: list[tuple[int, pathlib.Path, str]] = []
        self.on = on
        self.error: BaseException | None = None
        self._stop = False
        self._r, self._w = os.pipe()
        self._watch(top)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _watch(self, folder: pathlib.Path) -> None:
        mask = IN_ACCESS | IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        wd = self.libc.inotify_add_watch(self.fd, str(folder).encode(), mask)
        if wd < 0:
            return                          # gone meanwhile (a temp folder renamed)
        self.wds[wd] = folder
        for p in folder.iterdir():
            if p.is_dir() and not p.is_symlink():
                self._watch(p)

    def _run(self) -> None:
        import select
        try:
            while True:
                ready, _, _ = select.select([self.fd, self._r], [], [])
                if self.fd not in ready:
                    return
                buf = os.read(self.fd, 1 << 20)
                i = 0
                while i < len(buf):
                    wd, mask, _, n = struct.unpack_from("iIII", buf, i)
                    name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
                    i += 16 + n
                    folder = self.wds.get(wd)
                    if folder is None:
                        continue
                    if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                        self._watch(folder / name)
                    self.seen.append((mask, folder, name))
                    self.on(mask, folder, name)
        except BaseException as e:  # noqa: BLE001 - raised by close()
            self.error = e

    def close(self) -> list[tuple[int, pathlib.Path, str]]:
        """Stop watching: the events seen."""
        os.write(self._w, b"x")
        self._thread.join(10)
        for fd in (self.fd, self._r, self._w):
            os.close(fd)
        assert self.error is None, self.error
        return list(self.seen)


def _of(events, name: str, mask: int) -> list[int]:
    """Positions of the events of ``mask`` on the file ``name``."""
    return [i for i, (m, _, n) in enumerate(events) if n == name and m & mask and not m & IN_ISDIR]


@pytest.fixture
def big(office, smb_tmp):
    """The office NAS and a recorder with one 12 MiB recording, pushed at 8 MiB/s (1 MiB writes, 1.5 s)."""
    smbd, remote, root, _ = office
    db = make_recorder(smb_tmp / "big-rec", sizes=(12 * MIB,), seed=7)
    yield smbd, dataclasses.replace(remote, bandwidth_limit_kbps=8192), root, db
    db.close()


def flip_last_byte(path: pathlib.Path, least: int = 1) -> int | None:
    """Change the last byte of the file at ``path`` (the last byte of the write that just landed, and was answered)
    when it holds ``least`` bytes or more: its offset; None when it is shorter or gone."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDWR)
        try:
            at = os.fstat(fd).st_size - 1
            if at < max(least, 1) - 1:
                return None
            old = os.pread(fd, 1, at)
            os.pwrite(fd, bytes([old[0] ^ 0xFF]), at)
            return at
        finally:
            os.close(fd)
    return None


def test_a_recording_is_read_back_while_it_is_written_and_not_again_after_its_rename(big):
    smbd, remote, root, db = big
    nas = root / "nas" / "rec-rw"
    cfg = recorder_config(db.path, root / "state-rw", remote, "rec-rw")
    events = Events(root / "nas")
    try:
        res = push(cfg)
    finally:
        seen = events.close()
    assert all(r.ok and not r.skipped for r in res), res
    temps = {n for _, _, n in seen if n.startswith(TEMP_PREFIX) and n.endswith("audio.flac")}
    assert len(temps) == 1, temps                        # sent once
    temp = temps.pop()
    writes, reads = _of(seen, temp, IN_MODIFY), _of(seen, temp, IN_ACCESS)
    assert len(writes) >= 8, writes                      # many writes (the recording's 1 MiB steps)
    # read back while written: smbd read the temp file before the last write reached it
    assert reads and reads[0] < writes[-1], (reads[:3], writes[-3:])
    renamed = _of(seen, temp, IN_MOVED_FROM)
    assert len(renamed) == 1 and renamed[0] > reads[-1]  # checked whole, then renamed
    # and not read back again under its final name
    assert not _of(seen, "audio.flac", IN_ACCESS), [e for e in seen if e[2] == "audio.flac"]
    assert_landed(nas, db)


def test_a_byte_damaged_on_the_nas_while_written_is_caught_before_the_rename_and_sent_again(big, caplog):
    """The NAS changes a byte it has already taken (written and answered) while the push runs: the temp file is
    removed, never renamed, and the recording is sent again; what landed passes sha256sum -c."""
    smbd, remote, root, db = big
    nas = root / "nas" / "rec-dmg"
    cfg = recorder_config(db.path, root / "state-dmg", remote, "rec-dmg")
    damaged: list[tuple[str, int]] = []

    def damage(mask: int, folder: pathlib.Path, name: str) -> None:
        if damaged or not mask & IN_MODIFY or not (name.startswith(TEMP_PREFIX) and name.endswith("audio.flac")):
            return
        at = flip_last_byte(folder / name, 3 * MIB)
        if at is not None:
            damaged.append((name, at))

    events = Events(root / "nas", damage)
    progress = Progress()
    try:
        with caplog.at_level(logging.INFO, logger="steno_exportd"):
            res = push(cfg, progress=progress)
    finally:
        seen = events.close()
    assert damaged, "no write of the recording was seen"
    temp, _ = damaged[0]
    assert all(r.ok for r in res), res
    # the damaged temp file never got a final name: removed, not renamed (the second one, sent again under the
    # same temp name, is)
    removed, renamed = _of(seen, temp, IN_DELETE), _of(seen, temp, IN_MOVED_FROM)
    assert removed and (not renamed or removed[0] < renamed[0]), (removed, renamed)
    assert [r for r in caplog.records if "verify failed" in r.getMessage() and "audio.flac" in r.getMessage()]
    assert progress.fields["bytes_done"] >= 2 * 12 * MIB            # sent again whole
    assert_landed(nas, db)                                          # sha256sum -c of what landed passes


def test_a_transcript_over_1_mib_damaged_on_the_nas_while_written_is_sent_again(office, smb_tmp, caplog):
    """A rendered file (a transcript) over 1 MiB is read back while it is written; a byte the NAS changed after
    taking it failed that check at the commit, and the transcript was reported missing from the session ("read back
    ... while writing"), never sent again, where a smaller one (read back after its rename) and a recording are sent
    again once. Now it is sent again too: the session lands whole."""
    smbd, remote, root, _ = office
    db = make_recorder(smb_tmp / "tx-rec", sizes=(100_000,), seed=9)
    try:
        sid = db.conn.execute("SELECT id FROM sessions").fetchone()[0]
        db.conn.execute("BEGIN")
        for k in range(3, 30_000):
            db.entry(sid, k * 10.0, k * 10.0 + 9, f"line {k}: " + "the budget for the next quarter was agreed. " * 3)
        db.conn.execute("COMMIT")
        nas = root / "nas" / "rec-tx"
        cfg = recorder_config(db.path, root / "state-tx", dataclasses.replace(remote, bandwidth_limit_kbps=8192),
                              "rec-tx")
        damaged: list[str] = []

        def damage(mask: int, folder: pathlib.Path, name: str) -> None:
            if damaged or not mask & IN_MODIFY or not (name.startswith(TEMP_PREFIX) and name.endswith(".txt")):
                return
            if flip_last_byte(folder / name) is not None:
                damaged.append(name)

        events = Events(root / "nas", damage)
        try:
            with caplog.at_level(logging.INFO, logger="steno_exportd"):
                res = push(cfg, formats=("txt",))
        finally:
            seen = events.close()
        assert damaged, "no write of the transcript was seen"
        assert [r.ok for r in res] == [True], [r.error for r in res]
        assert [r for r in caplog.records if "verify failed" in r.getMessage() and ".txt" in r.getMessage()]
        removed, renamed = _of(seen, damaged[0], IN_DELETE), _of(seen, damaged[0], IN_MOVED_FROM)
        assert removed and (not renamed or removed[0] < renamed[0]), (removed, renamed)   # never renamed damaged
        assert_landed(nas, db, formats=("txt",))
        txt = list(nas.rglob("*.txt"))
        assert len(txt) == 1 and txt[0].stat().st_size > 1 << 20, txt
    finally:
        db.close()


def test_a_push_cancelled_mid_recording_leaves_no_read_back_thread_and_no_temp_file(big):
    smbd, remote, root, db = big
    nas = root / "nas" / "rec-cancel"
    cfg = recorder_config(db.path, root / "state-cancel", remote, "rec-cancel")
    progress = Progress(cancel_when=lambda f: f.get("bytes_done", 0) >= 5 * MIB)
    with contextlib.suppress(Exception):
        push(cfg, progress=progress)
    assert progress.cancelled
    assert not [th for th in threading.enumerate() if th.name == "steno-smb-back"]     # stopped, not left
    assert not list(nas.rglob(f"{TEMP_PREFIX}*")), sorted(nas.rglob("*"))
    assert not list(nas.rglob("audio.flac"))


def test_a_recording_hashed_ahead_is_read_back_once_while_written_not_again_after_its_rename(big, tmp_path):
    """The daemon's usual case: the background hasher remembered the recording's SHA-256 and CRC-32. The bytes sent
    are checked while written (the NAS returned what was sent) and against the remembered CRC-32 (what was sent is
    the recording as hashed): the engine reads nothing back after the rename."""
    import hashlib

    from isal.isal_zlib import crc32

    from steno_exportd.engine.export import SimpleSpec, run_export
    from steno_exportd.engine.hashcache import HashCache
    from steno_exportd.engine.options import ExportOptions
    from steno_exportd.engine.registry import local
    from steno_exportd.library import Library
    from steno_exportd.smb.push import SmbKind
    from tests.smb.recorder import FORMATS
    smbd, remote, root, db = big
    nas = root / "nas" / "rec-ahead"
    cfg = recorder_config(db.path, root / "state-ahead", remote, "rec-ahead")
    hashes = HashCache(tmp_path / "hashes.sqlite")
    lib = Library.from_config(cfg)
    try:
        ids = [s.id for s in lib.list_sessions(exportable_only=True)]
        for i in ids:
            audio = lib.get_session(i).audio
            data = audio.path.read_bytes()
            hashes.put(audio.path, crc32(data), hashlib.sha256(data).hexdigest(), audio.path.stat())
        targets = local()
        targets.register(SmbKind())
        events = Events(root / "nas")
        try:
            res = run_export(lib, SimpleSpec("smb:office", tuple(ids), FORMATS, ExportOptions(), target_name="smb:office"), cfg,
                             targets=targets, hashes=hashes)
        finally:
            seen = events.close()
    finally:
        lib.close()
        hashes.close()
    assert all(r.ok and not r.skipped for r in res), res
    temps = {n for _, _, n in seen if n.startswith(TEMP_PREFIX) and n.endswith("audio.flac")}
    assert len(temps) == 1, temps
    temp = temps.pop()
    reads, writes = _of(seen, temp, IN_ACCESS), _of(seen, temp, IN_MODIFY)
    assert reads and reads[0] < writes[-1], (reads[:3], writes[-3:])
    assert not _of(seen, "audio.flac", IN_ACCESS), [e for e in seen if e[2] == "audio.flac"]
    assert_landed(nas, db)


def test_reads_on_the_second_connection_beside_a_read_back_never_fail_for_want_of_credits(office):
    """The engine's read-backs (open_read(uncached=True): a small file in one round trip, a big one pipelined) share
    the second connection with the read-back beside a big file's writes (another thread): each waits for the
    connection's credits, none fails saying "requires N credits", and the big files are still checked while
    written (verified)."""
    import hashlib

    from isal.isal_zlib import crc32

    from steno_exportd.engine import writer
    from steno_exportd.smb.target import SmbTarget
    from tests.parts.smbdata import _pseudo
    smbd, remote, root, _ = office
    nas = root / "nas"
    there = {"big.bin": _pseudo(24 * MIB, 3), "small.txt": _pseudo(300_000, 4)}
    for name, data in there.items():
        (nas / name).write_bytes(data)
    want = {name: (len(data), f"{crc32(data):08x}") for name, data in there.items()}
    payload = _pseudo(48 * MIB, 5)
    payload_crc = crc32(payload)
    t = SmbTarget(remote)
    t.connect()
    errors: list[BaseException] = []
    verified: list[bool] = []
    writing = threading.Event()

    def write() -> None:
        try:
            for i in range(4):
                h = t.open_write(f"w{i}.bin")
                writing.set()
                for at in range(0, len(payload), MIB):
                    h.write(payload[at:at + MIB])
                writer.wrote_crc(h, payload_crc)        # as the engine's copy does: its CRC-32 of the bytes written
                h.sync()
                h.commit()
                verified.append(h.verified)
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)
        finally:
            writing.set()

    w = threading.Thread(target=write, name="test-writer")
    w.start()
    got: list[tuple[str, tuple[int, str]]] = []
    try:
        writing.wait(30)
        while w.is_alive():
            for name in ("small.txt", "big.bin", "small.txt"):
                try:
                    got.append((name, writer.read_back(t, name, check="crc32")))
                except Exception as e:  # noqa: BLE001 - asserted below
                    errors.append(e)
    finally:
        w.join(120)
        t.close()
    assert not errors, [str(e) for e in errors]
    assert got and all(g == want[name] for name, g in got), got
    assert verified == [True] * 4, verified
    for i in range(4):
        assert hashlib.sha256((nas / f"w{i}.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("cancel_at", [6 * MIB, 12 * MIB], ids=["mid-recording", "at-its-commit"])
def test_a_cancel_is_heeded_at_once_when_the_read_back_connection_stalls(big, cancel_at, monkeypatch):
    """The read-back's connection stalls (the NAS's answers on it stop coming: a relay holds them; the push's own
    connection flows) while a recording is written; then the job is cancelled, mid-recording or once all its bytes
    were sent (its commit waits for the read-back): the push ends within seconds, not after the connection's receive
    timeout (60 s here), leaves no read-back thread, and nothing lands under a final name."""
    import time

    from steno_exportd.smb.target import SmbTarget
    from tests import parts
    from tests.parts.delay import DelayRelay
    smbd, remote, root, db = big
    relay = DelayRelay(remote.port, 0)
    nas = root / "nas" / "rec-stall"
    cfg = recorder_config(db.path, root / "state-stall", dataclasses.replace(remote, port=relay.port, timeout=30),
                          "rec-stall")
    held: list[int] = []
    cancelled: list[float] = []
    readers: list[SmbTarget] = []
    made = SmbTarget._read_connection

    def read_connection(self: SmbTarget) -> SmbTarget:
        readers.append(made(self))
        return readers[-1]
    monkeypatch.setattr(SmbTarget, "_read_connection", read_connection)

    def when(f: dict) -> bool:
        done = f.get("bytes_done", 0)
        if not held and done >= 3 * MIB:
            held.append(next(iter(readers[-1]._cache.values())).transport._sock.getsockname()[1])
            relay.hold(held[-1])
        if held and done >= cancel_at and not cancelled:
            cancelled.append(time.monotonic())
        return bool(cancelled)

    progress = Progress(cancel_when=when)
    outcome: object = None
    try:
        try:
            outcome = push(cfg, progress=progress)
        except Exception as e:  # noqa: BLE001 - asserted below
            outcome = e
        ended = time.monotonic()
    finally:
        relay.close()
    assert held and cancelled, (held, progress.fields.get("bytes_done"))
    assert ended - cancelled[0] < 10, (ended - cancelled[0], outcome)
    assert isinstance(outcome, BaseException) or not [r for r in outcome if r.ok], outcome     # nothing sent whole
    parts.wait_for(lambda: not [th for th in threading.enumerate() if th.name == "steno-smb-back"], timeout=5,
                   what="the read-back thread's end")
    assert not list(nas.rglob(f"{TEMP_PREFIX}*")), sorted(nas.rglob("*"))
    assert not list(nas.rglob("audio.flac")), sorted(nas.rglob("*"))


def _hashed_ahead(cfg, tmp_path, *, crc: bool):
    """A hash cache remembering each recording's SHA-256 (and its CRC-32 when ``crc``), as the background hasher
    leaves it (an older cache: the SHA-256 alone)."""
    import hashlib

    from isal.isal_zlib import crc32

    from steno_exportd.engine.hashcache import HashCache
    from steno_exportd.library import Library
    hashes = HashCache(tmp_path / "hashes.sqlite")
    lib = Library.from_config(cfg)
    try:
        for s in lib.list_sessions(exportable_only=True):
            audio = lib.get_session(s.id).audio
            data = audio.path.read_bytes()
            if crc:
                hashes.put(audio.path, crc32(data), hashlib.sha256(data).hexdigest(), audio.path.stat())
            else:
                hashes.put_sha256(audio.path, hashlib.sha256(data).hexdigest(), audio.path.stat())
    finally:
        lib.close()
    return hashes


def _push_with(cfg, formats, *, hashes=None, progress=None, options=None) -> object:
    """One push to smb:office as push() does, with a hash cache: its results, or what it raised."""
    from steno_exportd.engine.export import SimpleSpec, run_export
    from steno_exportd.engine.options import ExportOptions
    from steno_exportd.engine.registry import local
    from steno_exportd.library import Library
    from steno_exportd.smb.push import SmbKind
    targets = local()
    targets.register(SmbKind())
    lib = Library.from_config(cfg)
    try:
        ids = tuple(s.id for s in lib.list_sessions(exportable_only=True))
        return run_export(lib, SimpleSpec("smb:office", ids, formats, options or ExportOptions(),
                                          target_name="smb:office"), cfg, progress, targets=targets, hashes=hashes)
    except Exception as e:  # noqa: BLE001 - the caller asserts it
        return e
    finally:
        lib.close()


@pytest.mark.parametrize("what", ["transcript", "recording-hashed-ahead"])
def test_a_cancel_is_heeded_at_once_when_the_engines_read_back_after_the_rename_stalls(big, what, monkeypatch,
                                                                                      tmp_path):
    """No read-back runs beside the writes: the engine reads a file back after its rename (a transcript of under
    1 MiB; a recording whose SHA-256 alone was remembered, read back whole after its rename), on the second
    connection, and the NAS's answers on that connection stop coming (a relay holds them; the push's own connection
    flows). The job is cancelled a second later: the push ends within seconds, not after the connection's receive
    timeout (60 s here), and no session is reported sent."""
    import time

    from steno_exportd.smb.target import SmbTarget
    from tests.parts.delay import DelayRelay
    smbd, remote, root, db = big
    relay = DelayRelay(remote.port, 0)
    cfg = recorder_config(db.path, root / "state-rbstall", dataclasses.replace(remote, port=relay.port, timeout=30),
                          "rec-rbstall")
    hashes = _hashed_ahead(cfg, tmp_path, crc=False) if what == "recording-hashed-ahead" else None
    progress = Progress()
    held: list[int] = []
    cancelled: list[float] = []
    opened = SmbTarget.open_read

    def cancel() -> None:
        cancelled.append(time.monotonic())
        progress.cancelled = True

    def open_read(self: SmbTarget, rel: str, *, uncached: bool = False):
        if uncached and not held:
            reader = self._read_connection()
            held.append(next(iter(reader._cache.values())).transport._sock.getsockname()[1])
            relay.hold(held[-1])
            timer = threading.Timer(1.0, cancel)
            timer.daemon = True
            timer.start()
        return opened(self, rel, uncached=uncached)
    monkeypatch.setattr(SmbTarget, "open_read", open_read)
    try:
        outcome = _push_with(cfg, ("audio",) if hashes else ("txt",), hashes=hashes, progress=progress)
        ended = time.monotonic()
    finally:
        relay.close()
        if hashes is not None:
            hashes.close()
    assert held and cancelled, (held, cancelled, outcome)
    assert ended - cancelled[0] < 10, (ended - cancelled[0], outcome)
    assert isinstance(outcome, BaseException) or not [r for r in outcome if r.ok], outcome


def test_a_cancel_between_a_read_backs_look_at_it_and_its_connection_ends_the_push_at_once(office, smb_tmp,
                                                                                            monkeypatch):
    """The race of a cancel with the engine's read-back after a rename: the read-back has looked at the cancel (not
    yet) and is about to take the second connection when the job is cancelled, and the cancel watcher drops the
    connection there was and ends before the read-back goes on. The read-back then makes a second connection anew,
    and the NAS's answers on it stop coming (a relay holds them). The push ends within seconds of the cancel, not
    after that connection's receive timeout (60 s here), and the session read back then is not reported sent."""
    import time

    from steno_exportd.smb.target import SmbTarget
    from tests import parts
    from tests.parts.delay import DelayRelay
    smbd, remote, root, _ = office
    db = make_recorder(smb_tmp / "race-rec", sizes=(100_000, 100_000), seed=13)
    relay = DelayRelay(remote.port, 0)
    cfg = recorder_config(db.path, root / "state-race", dataclasses.replace(remote, port=relay.port, timeout=30),
                          "rec-race")
    progress = Progress()
    cancelled: list[float] = []
    held: list[int] = []
    opened, connect = SmbTarget.open_read, SmbTarget.connect

    class CancelFirst:
        """The push's lock of its second connection: the racing read-back's take of it comes after the cancel and
        the watcher's end (every other take is the lock's own)."""

        def __init__(self, lock: threading.Lock) -> None:
            self.lock, self.racer = lock, threading.current_thread()

        def __enter__(self) -> bool:
            if threading.current_thread() is self.racer and not cancelled:
                cancelled.append(time.monotonic())
                progress.cancelled = True
                parts.wait_for(lambda: not [th for th in threading.enumerate() if th.name == "steno-smb-cancel"],
                               timeout=5, what="the cancel watcher's end")
            return self.lock.__enter__()

        def __exit__(self, *a: object) -> None:
            self.lock.__exit__(*a)

    def open_read(self: SmbTarget, rel: str, *, uncached: bool = False):
        if uncached and self._reader is not None and self.stoppable() and not isinstance(self._reader_lock,
                                                                                         CancelFirst):
            self._reader_lock = CancelFirst(self._reader_lock)     # (a second connection and its watcher there)
        return opened(self, rel, uncached=uncached)

    def connect_then_stall(self: SmbTarget) -> None:
        connect(self)
        if cancelled and not held:      # the connection made after the cancel: its answers held from now on
            held.append(next(iter(self._cache.values())).transport._sock.getsockname()[1])
            relay.hold(held[-1])
    monkeypatch.setattr(SmbTarget, "open_read", open_read)
    monkeypatch.setattr(SmbTarget, "connect", connect_then_stall)
    try:
        outcome = _push_with(cfg, ("txt",), progress=progress)
        ended = time.monotonic()
    finally:
        relay.close()
        db.close()
    assert cancelled, outcome
    assert ended - cancelled[0] < 10, (ended - cancelled[0], held, outcome)
    assert isinstance(outcome, BaseException) or len([r for r in outcome if r.ok]) < 2, outcome


def test_a_job_without_verify_reads_nothing_back_on_the_nas(big):
    """A job asking for no read-back (--no-verify, D-Bus/HTTP verify=false) while the configuration verifies: the
    NAS reads nothing of the recording back (no read beside its writes either), and the push lands."""
    from steno_exportd.engine.options import ExportOptions
    smbd, remote, root, db = big
    nas = root / "nas" / "rec-nov"
    cfg = recorder_config(db.path, root / "state-nov", remote, "rec-nov")
    assert cfg.export.verify
    events = Events(root / "nas")
    try:
        res = push(cfg, options=ExportOptions(verify=False))
    finally:
        seen = events.close()
    assert all(r.ok and not r.skipped for r in res), res
    temps = {n for _, _, n in seen if n.startswith(TEMP_PREFIX) and n.endswith("audio.flac")}
    assert len(temps) == 1, temps
    temp = temps.pop()
    assert _of(seen, temp, IN_MODIFY)
    assert not _of(seen, temp, IN_ACCESS), [e for e in seen if e[2] == temp and e[0] & IN_ACCESS][:3]
    assert not _of(seen, "audio.flac", IN_ACCESS)
    assert_landed(nas, db)


@pytest.mark.parametrize("ahead", [False, True], ids=["hashed-while-sent", "hashed-ahead"])
def test_a_recording_s_bytes_are_crc32_hashed_once_as_written_and_once_as_read_back(big, ahead, monkeypatch,
                                                                                    tmp_path):
    """CRC-32 work of a push of one 12 MiB recording, counted in bytes handed to crc32 by the engine's writer and the
    SMB target: the bytes written once (the engine's, beside their SHA-256; none when remembered with the
    recording) and the bytes the NAS returned once (the read-back beside the writes); not a second pass over the
    bytes written in the SMB writer. Still checked before the rename: nothing read back after it."""
    from steno_exportd.engine import writer
    from steno_exportd.smb import target as smbtarget
    smbd, remote, root, db = big
    nas = root / "nas" / "rec-crc"
    cfg = recorder_config(db.path, root / "state-crc", remote, "rec-crc")
    hashes = _hashed_ahead(cfg, tmp_path, crc=True) if ahead else None
    size = sum(p.stat().st_size for p in (db.root / "audio").iterdir())
    hashed = {"engine": 0, "smb": 0}
    lock = threading.Lock()

    def counting(where: str, crc32):
        def count(data, value=0):
            with lock:
                hashed[where] += len(data)
            return crc32(data, value)
        return count
    monkeypatch.setattr(writer, "crc32", counting("engine", writer.crc32))
    monkeypatch.setattr(smbtarget, "crc32", counting("smb", smbtarget.crc32))
    events = Events(root / "nas")
    try:
        res = _push_with(cfg, ("audio",), hashes=hashes)
    finally:
        seen = events.close()
        if hashes is not None:
            hashes.close()
    assert not isinstance(res, BaseException) and all(r.ok and not r.skipped for r in res), res
    assert size == 12 * MIB
    assert hashed == {"engine": 0 if ahead else size, "smb": size}, hashed
    assert not _of(seen, "audio.flac", IN_ACCESS)           # checked beside the writes, not read back again
    landed = list(nas.rglob("audio.flac"))
    assert [p.read_bytes() for p in landed] == [p.read_bytes() for p in (db.root / "audio").iterdir()], landed


@pytest.mark.parametrize("share", ["rwd", "rw"])
def test_a_person_holding_the_temp_file_open_at_the_rename_does_not_fail_the_push(big, share):
    """A person browsing the share opens the recording's temp file while it is written (another SMB client, its own
    connection) and still holds it open when the push renames it, closing it 3 s later. The temp file is opened
    sharing read (for the read-back beside the writes) and written with DELETE access: a person's open that does not
    share delete (``rw``) is refused by the NAS; one that does (``rwd``) is let in, and the file's rename works,
    but the NAS refuses the rename of the session's folder while a file in it is open ("access denied"): the session
    failed at once, "no write permission?", never retried. The push lands either way."""
    import smbclient

    smbd, remote, root, db = big
    nas = root / "nas" / "rec-held"
    cfg = recorder_config(db.path, root / "state-held", remote, "rec-held")
    cache: dict = {}
    held: list = []
    refused: list[str] = []

    def let_go() -> None:
        for f in held:
            with contextlib.suppress(Exception):
                f.close()

    def person(mask: int, folder: pathlib.Path, name: str) -> None:
        if not (name.startswith(TEMP_PREFIX) and name.endswith("audio.flac")):
            return
        if held and mask & IN_MOVED_FROM:
            closing = threading.Timer(3.0, let_go)
            closing.daemon = True
            closing.start()
        if held or refused or not mask & IN_MODIFY:
            return
        unc = f"\\\\127.0.0.1\\push\\{(folder / name).relative_to(root / 'nas')}".replace("/", "\\")
        try:
            f = smbclient.open_file(unc, mode="rb", buffering=0, share_access=share, port=remote.port,
                                    username=remote.username, password=PW, connection_cache=cache)
        except Exception as e:  # noqa: BLE001 - asserted below
            refused.append(str(e))
            return
        f.read(4096)
        held.append(f)

    events = Events(root / "nas", person)
    try:
        res = push(cfg)
    finally:
        events.close()
        let_go()
        smbclient.reset_connection_cache(fail_on_error=False, connection_cache=cache)
    assert held or refused
    if share == "rwd":
        assert held and not refused, refused
    else:
        assert refused and not held and ("sharing" in refused[0].lower() or "c0000043" in refused[0].lower()), refused
    assert [(r.ok, r.error) for r in res] == [(True, "")], res
    assert_landed(nas, db)


def test_a_push_cancelled_after_its_first_session_landed_keeps_it_with_a_manifest_over_small(office, smb_tmp,
                                                                                             monkeypatch):
    """A push of three sessions is cancelled once the first one's result says it landed (read back, renamed into
    place). Its folder waits for the run's last manifest save to be recorded as done, and that save runs after the
    cancel on purpose; the manifest is over SMALL here (as with ~1,000 sessions), so it is written with a read-back
    beside its writes on the second connection. The job's result lists the session that landed, the manifest on
    the NAS records it, and the next push sends none of those that landed again."""
    from steno_exportd.smb import target as smbtarget
    from tests.smb.recorder import stamps
    smbd, remote, root, _ = office
    monkeypatch.setattr(smbtarget, "SMALL", 256)        # manifest.json of one session is ~1 KiB
    db = make_recorder(smb_tmp / "cancel-end-rec", sizes=(400_000, 400_000, 400_000), seed=11)
    try:
        nas = root / "nas" / "rec-cancel-end"
        cfg = recorder_config(db.path, root / "state-cancel-end", remote, "rec-cancel-end")
        progress = Progress(cancel_when=lambda f: any(r.ok for r in f.get("results", ())))
        first = push(cfg, progress=progress)
        assert progress.cancelled
        landed = sorted(p.name for p in nas.iterdir() if p.is_dir() and "(" in p.name and
                        not p.name.endswith(".partial"))
        assert landed, sorted(nas.rglob("*"))
        ok = [r.uuid for r in first if r.ok and not r.skipped]
        assert len(ok) == len(landed), (first, landed)
        recorded = json.loads((nas / "manifest.json").read_text())["sessions"]
        assert set(ok) <= {u for u, e in recorded.items() if not e.get("finishing")}, recorded
        before = stamps(nas)
        second = push(cfg)
        assert [r.uuid for r in second if r.skipped] and set(ok) <= {r.uuid for r in second if r.skipped}, second
        after = stamps(nas)
        assert {k: v for k, v in after.items() if k.split("/")[0] in landed} == \
            {k: v for k, v in before.items() if k.split("/")[0] in landed}     # nothing that landed sent again
        assert all(r.ok for r in second), second
        assert_landed(nas, db)
    finally:
        db.close()


def test_a_folder_rename_the_nas_forbids_fails_at_once_as_no_write_permission(smb_tmp, smbd_factory, monkeypatch):
    """A share the user writes as itself (no forced root): the recorder's folder is made read-only for the user
    just before a session's folder is renamed into place in it (a permission: the NAS refuses the rename "access
    denied", as it does a folder with a file open in another program). No file of it is open anywhere: the session
    fails at once with the clear permanent error, "no write permission?", not after RENAME_WAIT saying a file is
    probably open in another program (and not tried again, 20 s per attempt)."""
    import shutil
    import time

    from steno_exportd.config import SmbRemote
    from steno_exportd.smb.target import RENAME_WAIT, SmbTarget
    own = smb_tmp / "own"
    own.mkdir()
    smbd = smbd_factory(shares=f"\n[own]\n   path = {own}\n   read only = no\n")
    smbd.start()
    user = smbd.add_user(PW)
    shutil.chown(own, user)
    pwfile = smb_tmp / "own-pw"
    pwfile.write_text(PW + "\n")
    os.chmod(pwfile, 0o600)
    remote = SmbRemote(name="office", server="127.0.0.1", port=smbd.port, share="own", path="", username=user,
                       password_file=str(pwfile), timeout=5)
    db = make_recorder(smb_tmp / "deny-rec", sizes=(200_000,), seed=12)
    denied: list[pathlib.Path] = []
    renamed = SmbTarget.rename

    def rename(self: SmbTarget, src: str, dst: str) -> None:
        if src.endswith(".partial") and not denied:
            denied.append((own / src).parent)
            os.chmod(denied[0], 0o555)
        return renamed(self, src, dst)
    monkeypatch.setattr(SmbTarget, "rename", rename)
    try:
        cfg = recorder_config(db.path, smb_tmp / "state-deny", remote, "rec-deny")
        t0 = time.monotonic()
        try:
            res: object = push(cfg, sleep=lambda s: None)
        except Exception as e:  # noqa: BLE001 - asserted below
            res = e
        took = time.monotonic() - t0
    finally:
        for d in denied:
            os.chmod(d, 0o755)
        db.close()
    assert denied, res
    assert not isinstance(res, BaseException), res
    assert [r.ok for r in res] == [False], res
    assert "no write permission" in res[0].error and "another program" not in res[0].error, res
    assert took < RENAME_WAIT / 2, (took, res)
