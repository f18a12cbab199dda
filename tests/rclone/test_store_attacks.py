"""The rclone push against a careless admin (one folder name or one store configured twice), a person or a
broken sync client editing the store, and a slow link: what a user must see. Each test was written as a repro
of a defect an attack found, and failed before its fix."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Iterator

import pytest

from steno_exportd import config
from steno_exportd.engine import writer
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.identity import CLAIM_NAME
from steno_exportd.engine.index import INDEX_DIR
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.registry import local
from steno_exportd.errors import CancelledJob, TargetError
from steno_exportd.library import Library
from steno_exportd.rclone.kind import RcloneKind
from steno_exportd.rclone.process import RcloneError
from steno_exportd.rclone.target import RcloneTarget, _RcloneWrite
from tests.parts.rclone import serving
from tests.parts.smbdata import _pseudo
from tests.rclone.test_push import _connected, cfg_for
from tests.smb.recorder import FORMATS, assert_landed, assert_stopped_by_folder_in_the_way, make_recorder


def push_to(cfg: config.Config, target: str = "rclone:cloud", *, kind: RcloneKind | None = None, progress=None
            ) -> list:
    targets = local()
    targets.register(kind or RcloneKind(sleep=lambda s: None))
    lib = Library.from_config(cfg)
    try:
        ids = tuple(s.id for s in lib.list_sessions(exportable_only=True))
        return run_export(lib, SimpleSpec(target, ids, FORMATS, ExportOptions(), target_name=target), cfg,
                          progress, targets=targets)
    finally:
        lib.close()


def snapshot(base: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def copied_recorders(srv, rclone_tmp: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Two recorders of one machine id (an SD card copied: cfg_for gives both one, each its own state folder) pushing
    to rclone:cloud (``srv``'s office folder), with no board serial (on a Pi both would hash its one serial: here a
    board id per state folder); (db_a, db_b, cfg_a, cfg_b)."""
    from steno_exportd.engine import identity
    monkeypatch.setattr(identity, "BOARD_SERIAL", str(rclone_tmp / "no-serial-number"))
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    remote = [{"name": "cloud", "remote": f"{srv.remote}:office"}]
    db_a = make_recorder(rclone_tmp / "rec-a", sizes=(200_000, 200_500))
    db_b = make_recorder(rclone_tmp / "rec-b", sizes=(100_000, 100_500), seed=7)
    return db_a, db_b, cfg_for(rclone_tmp / "a", db_a, conf, remote), cfg_for(rclone_tmp / "b", db_b, conf, remote)


def test_two_recorders_first_push_at_the_same_moment_one_gets_the_folder(rclone_server, rclone_tmp, monkeypatch):
    """Two recorders given one folder name (an admin copied one config to both: smb.recorder_folder, which names
    the folder on rclone remotes too) make their first push at the same moment (one schedule): both find the
    folder unclaimed. As on SMB (tests/smb/test_push.py, same name), exactly one gets the folder; the other fails
    before writing a file, whatever the order of their looks."""
    srv = rclone_server
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    remote = [{"name": "cloud", "remote": f"{srv.remote}:office"}]
    db_a = make_recorder(rclone_tmp / "rec-a", sizes=(200_000, 200_500))
    db_b = make_recorder(rclone_tmp / "rec-b", sizes=(100_000, 100_500), seed=7)
    cfg_a = cfg_for(rclone_tmp / "a", db_a, conf, remote, folder="steno")
    cfg_b = cfg_for(rclone_tmp / "b", db_b, conf, remote, folder="steno")
    a_done, b_looked = threading.Event(), threading.Event()
    real, real_move = RcloneTarget.lstat, RcloneTarget.move

    def hold(unclaimed: bool = True) -> None:
        if threading.current_thread().name == "b" and not b_looked.is_set():
            b_looked.set()                                  # B has seen the folder unclaimed...
            assert unclaimed and a_done.wait(60)            # ...and is held there while A pushes

    def lstat(self, rel):
        out = real(self, rel)
        if rel.endswith(CLAIM_NAME):
            hold(out is None)
        return out

    def move(self, src, dst, **kw):
        if dst.endswith(CLAIM_NAME):
            hold()      # (on WebDAV B looks for no claim before its move: its folder was not there when it began)
        return real_move(self, src, dst, **kw)
    monkeypatch.setattr(RcloneTarget, "lstat", lstat)
    monkeypatch.setattr(RcloneTarget, "move", move)
    results: dict = {}

    def run(name, rid, cfg):
        try:
            if name == "a":
                assert b_looked.wait(60)
            results[name] = push_to(cfg, kind=RcloneKind(recorder_id=rid, sleep=lambda s: None))
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            results[name] = e
        finally:
            if name == "a":
                a_done.set()
    threads = [threading.Thread(target=run, args=("b", "b2" * 16, cfg_b), name="b"),
               threading.Thread(target=run, args=("a", "a1" * 16, cfg_a), name="a")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    folder = srv.served / "office" / "steno"
    assert isinstance(results["a"], list) and all(r.ok for r in results["a"]), results["a"]
    assert isinstance(results["b"], RcloneError), results["b"]
    assert "belongs to another recorder" in str(results["b"]) and "id a1a1a1a1" in str(results["b"])
    assert json.loads((folder / CLAIM_NAME).read_text())["recorder_id"] == "a1" * 16
    assert_landed(folder, db_a)                             # A's files, none of B's
    db_a.close()
    db_b.close()


def test_a_recorder_whose_system_was_copied_from_another_machine_id_and_all_does_not_push_into_its_folder(
        rclone_server, rclone_tmp, monkeypatch):
    """As on SMB (tests/smb/test_push.py, the same name): a recorder whose SD card was copied from another's has its
    machine id, so its recorder id, folder and claim on the store, and pushed into the other's folder as its own
    (its meetings mixed in, each push rewriting the other's manifest.json, SHA256SUMS and office index). The claim
    names the board too now: the copy stops before writing a file, saying why; the first pushes on."""
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    db_a, db_b, cfg_a, cfg_b = copied_recorders(srv, rclone_tmp, monkeypatch)
    assert all(r.ok for r in push_to(cfg_a))
    folder = srv.served / "office" / recorder_folder(cfg_a)
    assert recorder_folder(cfg_b) == folder.name
    before = snapshot(srv.served / "office")
    with pytest.raises(RcloneError) as ei:
        push_to(cfg_b)
    said = str(ei.value)
    assert f"folder {folder.name} on rclone:cloud belongs to another recorder with this recorder's machine id " \
           f"({socket.gethostname()}, board " in said and "systemd-machine-id-setup" in said, said
    assert ei.value.permanent
    assert snapshot(srv.served / "office") == before        # nothing written, overwritten or added (its index neither)
    assert_landed(folder, db_a)
    assert [r.skipped for r in push_to(cfg_a)] == [True, True]
    db_a.close()
    db_b.close()


def test_a_claim_written_before_boards_is_given_ours_so_a_copy_made_since_is_refused(rclone_server, rclone_tmp,
                                                                                      monkeypatch):
    """As on SMB (tests/smb/test_push.py, the same name): a claim an earlier version wrote names no board and was
    accepted from any board for ever; the first push of this version gives it its board, a copy after it is refused."""
    from steno_exportd.engine import identity
    from steno_exportd.engine.identity import recorder_folder, this_recorder
    srv = rclone_server
    db_a, db_b, cfg_a, cfg_b = copied_recorders(srv, rclone_tmp, monkeypatch)
    folder = srv.served / "office" / recorder_folder(cfg_a)
    folder.mkdir(parents=True)
    rid = this_recorder(cfg_a)
    (folder / CLAIM_NAME).write_text(json.dumps({"recorder_id": rid, "host": "steno", "claimed": 1.0}))
    assert all(r.ok for r in push_to(cfg_a))
    claimed = json.loads((folder / CLAIM_NAME).read_text())
    assert claimed["recorder_id"] == rid and claimed["board"] == identity.board_id(cfg_a.state.dir)
    before = snapshot(srv.served / "office")
    with pytest.raises(RcloneError) as ei:
        push_to(cfg_b)
    assert "belongs to another recorder with this recorder's machine id" in str(ei.value), str(ei.value)
    assert snapshot(srv.served / "office") == before
    assert_landed(folder, db_a)
    db_a.close()
    db_b.close()


def test_a_folder_claimed_by_another_recorder_after_a_push_read_it_ahead_is_left_to_it(rclone_server, rclone_tmp,
                                                                                        monkeypatch):
    """A push that finds its folder on the store reads the folder's manifest, its listing and the office index ahead
    (at its start), then reads the folder's claim. Here the folder holds another recorder's files but no claim (a
    person removed it) when the push reads ahead, and that recorder (given the same folder name: a config copied to
    both) claims it in between and rewrites its manifest and office index: what the push read ahead is stale. The
    push still stops at the claim, before writing a file, and the other recorder's claim, manifest, office index
    and meetings stay as that recorder wrote them."""
    from steno_exportd.engine.manifest import MANIFEST
    from steno_exportd.rclone import kind as rclone_kind
    srv = rclone_server
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    remote = [{"name": "cloud", "remote": f"{srv.remote}:office"}]
    db_a = make_recorder(rclone_tmp / "rec-a", sizes=(200_000,))
    db_b = make_recorder(rclone_tmp / "rec-b", sizes=(100_000, 100_500), seed=7)
    cfg_a = cfg_for(rclone_tmp / "a", db_a, conf, remote, folder="steno")
    cfg_b = cfg_for(rclone_tmp / "b", db_b, conf, remote, folder="steno")
    assert all(r.ok for r in push_to(cfg_b, kind=RcloneKind(recorder_id="b2" * 16, sleep=lambda s: None)))
    office = srv.served / "office"
    later = rclone_tmp / "later"
    later.mkdir()
    # what the other recorder writes in between: its claim, its manifest and office index as a later push of it
    # writes them (another meeting listed)
    (later / CLAIM_NAME).write_bytes((office / "steno" / CLAIM_NAME).read_bytes())
    index = json.loads((office / INDEX_DIR / "steno.json").read_text())
    index["meetings"].append(dict(index["meetings"][0], uuid="b2" * 16, title="their later meeting"))
    (later / "index.json").write_text(json.dumps(index))
    (later / MANIFEST).write_bytes((office / "steno" / MANIFEST).read_bytes() + b"\n")

    def store(src: pathlib.Path | None, rel: str, command: str = "copyto") -> None:
        """Through the store, as another client (not behind rclone serve's back)."""
        subprocess.run(["rclone", "--config", str(conf), command, *([str(src)] if src else []),
                        f"{srv.remote}:office/{rel}"], check=True, capture_output=True, timeout=60)
    store(None, f"steno/{CLAIM_NAME}", "deletefile")
    real = rclone_kind.claim
    read_ahead: list = []

    def claimed_in_between(t, folder, rid, *board):
        with t._names:
            read_ahead.extend(sorted(t._ahead))
            begun = [fut for fut, _ in t._ahead.values()]
        concurrent.futures.wait(begun, 30)          # read (they are what was there before)
        store(later / CLAIM_NAME, f"steno/{CLAIM_NAME}")
        store(later / MANIFEST, f"steno/{MANIFEST}")
        store(later / "index.json", f"{INDEX_DIR}/steno.json")
        return real(t, folder, rid, *board)
    monkeypatch.setattr(rclone_kind, "claim", claimed_in_between)
    theirs = None
    with pytest.raises(RcloneError, match=r"belongs to another recorder \(.*, id b2b2b2b2\)"):
        try:
            push_to(cfg_a, kind=RcloneKind(recorder_id="a1" * 16, sleep=lambda s: None))
        finally:
            theirs = snapshot(office)
    assert ("read", f"{INDEX_DIR}/steno.json") in read_ahead and ("read", f"steno/{MANIFEST}") in read_ahead, \
        read_ahead
    assert theirs[f"steno/{CLAIM_NAME}"] == (later / CLAIM_NAME).read_bytes()
    assert theirs[f"steno/{MANIFEST}"] == (later / MANIFEST).read_bytes()
    assert theirs[f"{INDEX_DIR}/steno.json"] == (later / "index.json").read_bytes()
    assert_landed(office / "steno", db_b)                   # their meetings, none of ours
    assert not [n for n in theirs if ".steno-tmp" in n or ".partial" in n], sorted(theirs)
    db_a.close()
    db_b.close()


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_rendered_file_slower_to_upload_than_the_idle_timeout_still_lands(rclone_server, rclone_tmp, monkeypatch):
    """A WebDAV store cannot take a stream of unknown size: rclone spools a streamed file (a transcript, a PDF, the
    manifest) and uploads it only once the stream has ended, while the push waits for its answer with no byte
    moving on its connection. Bytes are moving to the store all that time (the admin's bandwidth limit, a slow
    uplink), so this is no stall: the file must land, as a recording many times its size does (rclone copies
    those from their path, its progress watched). Scaled down: rclone rcd's idle timeout (at least 60 s, 4x the
    remote's timeout) set to 3 s, and a transcript that takes several seconds at 128 KiB/s."""
    from steno_exportd.rclone.process import Rcd
    from tests.recorder_db import RecorderDB
    from tests.parts.smbdata import _pseudo
    init = Rcd.__init__

    def scaled(self, cfg, remote):
        init(self, cfg, remote)
        self.timeout = 3.0
    monkeypatch.setattr(Rcd, "__init__", scaled)
    srv = rclone_server
    db = RecorderDB(rclone_tmp / "rec")
    sid = db.session(title="A long meeting", audio_format="flac", audio_size_bytes=512 << 10,
                     start_time="2026-11-10 09:00:00.000000",
                     audio_file_path=db.audio("long.flac", _pseudo(512 << 10, 3)))
    for k in range(6000):
        db.entry(sid, k * 2.0, k * 2.0 + 1.5, f"Line {k}: " + "and so the committee agreed to look at it again " * 2)
    cfg = cfg_for(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"),
                  [{"name": "cloud", "remote": f"{srv.remote}:office", "bandwidth_limit_kbps": 128}])
    targets = local()
    targets.register(RcloneKind(sleep=lambda s: None))
    lib = Library.from_config(cfg)
    try:
        res = run_export(lib, SimpleSpec("rclone:cloud", (sid,), ("txt", "audio"), ExportOptions(),
                                         target_name="rclone:cloud"), cfg, targets=targets)
    finally:
        lib.close()
    assert [r.ok for r in res] == [True], [r.error for r in res]
    folder = next(p for p in (srv.served / "office").iterdir() if p.is_dir() and p.name != "_index")
    txt = next(folder.rglob("transcript.txt"))
    assert txt.stat().st_size > 600_000
    db.close()


SLOW = 1024            # KiB/s (rclone's bandwidth limit): one 4 MiB chunk of a stream takes 4 s to go
IDLE = 2.0             # rclone rcd's idle timeout, scaled down (4x the remote's timeout: 120 s by default, >= 60 s)
BIG = 24 << 20         # a rendered file sent in 4 MiB chunks (write_bytes), past what rclone's read-ahead and the
                       # sockets take in at once (~16 MiB): its last chunks go at the link's pace


def _send_slowly(srv, tmp: pathlib.Path, data: bytes, *, on_write=lambda n: None, cancelled=lambda: False) -> None:
    """Send ``data`` as the export sends a rendered file (writer.write_bytes) to x/report.pdf, at SLOW KiB/s with
    an idle timeout of IDLE s; on_write(n) before the n-th chunk's write (from 1)."""
    t = _connected(srv, tmp, idle=IDLE, cancelled=cancelled, bandwidth_limit_kbps=SLOW)
    real, calls = _RcloneWrite.write, []

    def write(self, chunk):
        calls.append(len(chunk))
        on_write(len(calls))
        return real(self, chunk)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_RcloneWrite, "write", write)
            writer.write_bytes(data, t, "x/report.pdf")
    finally:
        t.close()


@pytest.mark.parametrize("rclone_server", ["sftp"], indirect=True)
def test_a_streamed_file_whose_chunks_take_longer_to_send_than_the_idle_timeout_still_lands(rclone_server,
                                                                                            rclone_tmp):
    """A store that takes a stream as it comes (SFTP: rclone writes to it what it reads) takes each chunk of a
    streamed file (a rendered file, sent in 4 MiB chunks) at the uplink's pace, or the admin's bandwidth limit: below
    ~34 KiB/s one chunk takes longer than rclone rcd's idle timeout (120 s by default), bytes moving all the while.
    Failed: the send of one chunk was bounded as a whole by the connection's timeout, so each attempt ended "cut
    (timed out)" and the file never landed. Scaled down: see SLOW, IDLE, BIG."""
    data = _pseudo(BIG, 5)
    _send_slowly(rclone_server, rclone_tmp, data)
    assert (rclone_server.served / "office" / "x" / "report.pdf").read_bytes() == data


@pytest.mark.parametrize("rclone_server", ["sftp"], indirect=True)
def test_a_streamed_file_whose_store_stops_taking_bytes_mid_send_is_a_clear_stall_soon(rclone_server, rclone_tmp):
    """The same slow send, the store frozen (its server stopped) once its chunks go at the link's pace: rclone stops
    reading, no byte moves, and the send ends soon after the idle timeout with an error that says so."""
    srv, frozen = rclone_server, []

    def freeze(n: int) -> None:
        if n == 5:
            os.kill(srv.proc.pid, signal.SIGSTOP)
            frozen.append(time.monotonic())
    try:
        with pytest.raises(RcloneError) as e:
            _send_slowly(srv, rclone_tmp, _pseudo(BIG, 5), on_write=freeze)
        took = time.monotonic() - frozen[0]
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    assert str(e.value) == f"rclone:cloud: the upload of x/report.pdf stalled (no byte moved for {IDLE:.0f}s)"
    assert took < 15, f"the send ended {took:.1f}s after the store froze"


@pytest.mark.parametrize("rclone_server", ["sftp"], indirect=True)
def test_a_cancel_while_a_chunk_of_a_streamed_file_goes_slowly_stops_it_at_once(rclone_server, rclone_tmp):
    """A cancel that comes while one chunk of a streamed file goes at the link's pace stops the send at once (failed:
    the chunk's send ran to its end, or to the idle timeout and failed as "cut"), and the file does not land."""
    asked: list[float] = []

    def cancel_at(n: int) -> None:
        if n == 5:
            asked.append(time.monotonic())
    with pytest.raises(CancelledJob):
        _send_slowly(rclone_server, rclone_tmp, _pseudo(BIG, 5), on_write=cancel_at, cancelled=lambda: bool(asked))
    took = time.monotonic() - asked[0]
    assert took < 1, f"the send ended {took:.1f}s after the cancel"
    assert not (rclone_server.served / "office" / "x" / "report.pdf").exists()


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_deeply_nested_manifest_on_the_store_is_rebuilt(rclone_server, rclone_tmp):
    """Someone (a person, a broken sync client, a hostile store) leaves 200 KB of '[' as the recorder folder's
    manifest.json. Like any other unusable manifest.json it is rebuilt (from SHA256SUMS) and the push lands.
    Today json.loads raises RecursionError ("maximum recursion depth exceeded while decoding a JSON array"), which
    manifest.load() does not catch: the job fails with that text, and so does every push after it."""
    from tests.rclone.test_push import make_cfg, push
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    assert all(r.ok for r in push(cfg))
    folder = srv.served / "office" / recorder_folder(cfg)
    (folder / "manifest.json").write_bytes(b"[" * 200_000)
    res = push(cfg, sleep=lambda s: None)
    assert [r.ok for r in res] == [True, True], [r.error for r in res]
    assert_landed(folder, db)
    db.close()


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_two_remotes_spelling_one_folder_two_ways_push_one_at_a_time(rclone_server, rclone_tmp, monkeypatch):
    """An admin configures one store twice, "office" and "office/" (one remote for formats on new sessions, one
    nightly with audio). Both name the same folder, so their pushes take turns, as two pushes to one remote do:
    the second waits ("waiting for another push") while the first is under way, and then both land. Before, the
    lock was keyed by the spelling: both pushed into the folder at once, each one's clean-up free to remove the
    other's unfinished .partial folders."""
    srv = rclone_server
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
    cfg = cfg_for(rclone_tmp / "r", db, conf, [{"name": "cloud", "remote": f"{srv.remote}:office"},
                                               {"name": "nightly", "remote": f"{srv.remote}:office/"}])
    held, go = threading.Event(), threading.Event()
    real = RcloneTarget.open_write

    def open_write(self, rel, **kw):
        if threading.current_thread().name == "first" and not held.is_set():
            held.set()                                      # the first push is under way, held at its first file
            assert go.wait(60)
        return real(self, rel, **kw)
    monkeypatch.setattr(RcloneTarget, "open_write", open_write)
    kind = RcloneKind(recorder_id="c3" * 16, sleep=lambda s: None)     # one kind: the daemon registers one

    class Progress:
        cancelled = False
        waiting = threading.Event()

        def update(self, force=False, **fields):
            if "waiting for another push" in str(fields.get("current_file", "")):
                self.waiting.set()
    results: dict = {}

    def run(name, target, progress=None):
        try:
            results[name] = push_to(cfg, target, kind=kind, progress=progress)
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            results[name] = e
    first = threading.Thread(target=run, args=("first", "rclone:cloud"), name="first")
    first.start()
    try:
        assert held.wait(60)
        second_progress = Progress()
        second = threading.Thread(target=run, args=("second", "rclone:nightly", second_progress), name="second")
        second.start()
        waited = second_progress.waiting.wait(10)
    finally:
        go.set()
        first.join(120)
    second.join(120)
    assert waited, "the second push did not wait for the first"
    for name in ("first", "second"):
        assert isinstance(results[name], list) and all(r.ok for r in results[name]), results[name]
    folder = next(p for p in (srv.served / "office").iterdir() if p.is_dir() and p.name != "_index")
    assert_landed(folder, db)
    db.close()


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_push_lands_when_its_sockets_are_numbered_above_1024(rclone_server, rclone_tmp):
    """As on SMB (tests/smb/test_push.py, same name): the wait for a streamed file's answer used select(), which
    refuses a socket numbered past 1024; seen in bench rclone, whose relay and parallel requests hold that many."""
    from tests.parts.fds import above_1024
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
    cfg = cfg_for(rclone_tmp / "r", db, srv.client_config(rclone_tmp / "rclone.conf"),
                  [{"name": "cloud", "remote": f"{srv.remote}:office"}], folder="fd")
    with above_1024():
        res = push_to(cfg)
    assert [r.ok for r in res] == [True, True], [r.error for r in res]
    assert_landed(srv.served / "office" / "fd", db)
    db.close()


@pytest.mark.parametrize("one, other", [("nas:office", "nas:office/"), ("nas:office", "nas:/office"),
                                        ("nas:office", "nas:./office/."), ("nas:", "nas:/"),
                                        (":webdav,url=http://h:8080/dav:x", ":webdav,url=http://h:8080/dav:/x/")])
def test_spellings_of_one_folder_share_one_lock(one, other):
    """The spellings of one folder that a store takes as the same one push one at a time (see the test above)."""
    from steno_exportd.rclone.kind import _folder_of
    assert _folder_of(one) == _folder_of(other)
    assert _folder_of("nas:office") != _folder_of("nas:office2") != _folder_of("nas2:office")


FORGED = "Failed: \x1b[2K\x1b[1Ajob 7 completed: every session verified on the store\x07"


@contextlib.contextmanager
def hostile_store(status: int, words: str) -> Iterator[pathlib.Path]:
    """A WebDAV store (an office server, or whatever answers at its address) that answers every request with
    ``status`` and ``words`` as its body; yields a dir holding "rclone.conf" with the remote "nas" reaching it."""
    import http.server
    import subprocess

    from tests import parts
    parts.require_tool("rclone")

    class Hostile(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = words.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = do_PUT = do_PROPFIND = do_MKCOL = do_DELETE = do_MOVE = do_HEAD = _answer

        def log_message(self, *a) -> None:
            pass
    with serving(Hostile) as port, tempfile.TemporaryDirectory(prefix="steno-hostile-") as d:
        conf = pathlib.Path(d) / "rclone.conf"
        obscured = subprocess.run(["rclone", "obscure", "pw"], check=True, capture_output=True, text=True).stdout
        conf.write_text(f"[nas]\ntype = webdav\nurl = http://127.0.0.1:{port}/\n"
                        f"vendor = other\nuser = u\npass = {obscured.strip()}\n")
        os.chmod(conf, 0o600)
        yield conf


@pytest.mark.parametrize("status", [403, 507, 500])
def test_a_stores_own_words_reach_the_error_and_the_log_as_one_printable_line(rclone_tmp, caplog, status):
    """THREATS: the NAS may fail and lie, never make a push look verified. A store (an office WebDAV server, or
    whatever answers at its address) answers every request with an error whose text carries terminal escapes, a
    bell (rclone passes a WebDAV error's body on as its message). The push's error, shown on the
    touchscreen, the page, D-Bus and steno-exportctl, and the log lines hold that text only as printable
    characters: no escape can clear the admin's terminal line, no line of the store's can pass for one of ours."""
    with hostile_store(status, FORGED) as conf:
        db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
        cfg = cfg_for(rclone_tmp, db, conf, [{"name": "cloud", "remote": "nas:office"}])
        with caplog.at_level("DEBUG", logger="steno_exportd"):
            try:
                errors = [r.error for r in push_to(cfg) if not r.ok]
            except TargetError as e:            # (RcloneError, TargetFullError)
                errors = [str(e)]
    assert errors and all("job 7 completed" in e for e in errors), errors     # the store's words are kept...
    shown = [e for e in errors if not e.isprintable()]
    logged = [r.getMessage() for r in caplog.records
              if r.name.startswith("steno_exportd") and not r.getMessage().isprintable()]
    assert (shown, logged) == ([], []), "control characters of the store's reached the error or the log"


def read_back_error(rclone_tmp: pathlib.Path, words: str) -> str:
    """The error of a read-back that a store answering every request with HTTP 500 and ``words`` refuses."""
    from steno_exportd.rclone.process import Rcd
    with hostile_store(500, words) as conf:
        db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
        cfg = cfg_for(rclone_tmp, db, conf, [{"name": "cloud", "remote": "nas:office"}])
        remote = cfg.rclone.remotes[0]
        t = RcloneTarget(Rcd(cfg, remote), remote.remote, name="rclone:cloud")
        t.rcd.start()
        try:
            with pytest.raises(RcloneError) as e:
                t.open_read("x/transcript.txt", uncached=True)      # (the engine's read-back: writer.read_back)
        finally:
            t.close()
        db.close()
    return str(e.value)


def test_a_stores_words_in_a_failed_read_back_reach_its_error_printable(rclone_tmp):
    """The read-back of a file (the engine's verify) that the store refuses: rclone rcd answers with a JSON error
    holding the store's words, where JSON escapes C0 controls but not C1 ones (U+009B is a terminal's CSI, like
    ESC [), and its own line breaks and tabs. The error, which the job's results and the log show, was all of that
    raw; now one printable line, the store's words kept."""
    said = read_back_error(rclone_tmp, "Gone \u009b2J\u009b1Ajob 7 completed: every session verified\x07")
    assert said.startswith("rclone:cloud: cannot read x/transcript.txt back: HTTP 500"), said
    assert said.isprintable(), f"control characters of the store's reached the read-back's error: {said!r}"
    assert "job 7 completed" in said and "\\x9b2J" in said, said


def test_a_failed_read_back_says_the_stores_error_not_a_cut_json_document(rclone_tmp):
    """rclone rcd answers a refused read-back with a JSON document ({"error": ..., "input": ..., "path": ...,
    "status": ...}). Its first 200 bytes were the message: half a JSON document, tabs and line breaks escaped, the
    store's words cut short. Now the message is the store's error text itself, whole when short, bounded when long."""
    prefix = "rclone:cloud: cannot read x/transcript.txt back: HTTP 500 "
    short = read_back_error(rclone_tmp / "short", "Service Unavailable: the office NAS is being updated until 18:00, "
                                                  "please try again later (ticket 4711)")
    assert short.startswith(prefix), short
    assert '"error"' not in short and "{" not in short and "\\n" not in short, short
    assert "office NAS is being updated until 18:00, please try again later (ticket 4711)" in short, short
    long = read_back_error(rclone_tmp / "long", "Gone: " + " ".join(f"word{i}" for i in range(2000)))
    assert long.startswith(prefix) and "Gone: word0 word1 word2" in long, long
    assert '"error"' not in long and "{" not in long, long
    assert len(long) <= len(prefix) + 300 and long.isprintable(), (len(long), long)


@pytest.mark.parametrize("rclone_server", ["sftp"], indirect=True)
def test_a_hash_the_store_reports_reaches_the_log_printable(rclone_server, rclone_tmp, caplog):
    """The hash a store reports for a file it took is its own words: a broken or hostile SFTP server answers rclone's
    md5sum with anything (rclone keeps its first word). Here the real rclone serve sftp, made to answer with
    terminal escapes (an OSC that retitles the admin's terminal, a bell, a screen clear: the remote's md5sum_command
    made "echo <them>", which rclone serve runs). The push still lands verified (the read-back finds the bytes
    right), and its log line about the mismatch holds the store's "hash" only as printable characters."""
    srv = rclone_server
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    with open(conf, "a") as f:
        f.write("md5sum_command = echo \x1b]0;owned\x07\x1b[2J\x1b[31mEVIL\n")
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    cfg = cfg_for(rclone_tmp, db, conf, [{"name": "cloud", "remote": f"{srv.remote}:office"}])
    with caplog.at_level("INFO", logger="steno_exportd"):
        res = push_to(cfg)
    assert [r.ok for r in res] == [True], [r.error for r in res]
    mismatch = [r.getMessage() for r in caplog.records
                if r.name == "steno_exportd.rclone.target" and " on the store: md5 " in r.getMessage()]
    assert mismatch, "the store's hash was never compared"
    assert all("evil" in m for m in mismatch), mismatch       # (rclone lower-cases a hash)
    raw = [m for m in mismatch if not m.isprintable()]
    assert not raw, f"the store's hash reached the log raw: {raw[0]!r}"
    db.close()


@pytest.mark.parametrize("name", ["manifest.json", "SHA256SUMS"])
def test_a_folder_where_the_push_keeps_its_manifest_stops_it_before_it_sends_anything(rclone_server, rclone_tmp,
                                                                                     name):
    """Someone (a person, a sync client) makes a folder named manifest.json or SHA256SUMS in the recorder's folder
    on the store and keeps a file of theirs in it. The push uploaded every new session, then its manifest save
    failed on that folder ("is a directory not a file"), three attempts in a row, at every push, the sessions sent
    each time and removed by the next. Now it stops before sending anything, saying which folder is in the way;
    the folder stays as it is. Moved away, the next push lands every session once."""
    from tests.rclone.test_push import _plant, make_cfg, push
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    assert all(r.ok for r in push(cfg))
    folder = srv.served / "office" / recorder_folder(cfg)
    # through the store (rclone serve caches its listings: a change on its disk would not be seen)
    subprocess.run(["rclone", "--config", cfg.rclone.config_file, "deletefile",
                    f"{srv.remote}:office/{folder.name}/{name}"], check=True, capture_output=True, timeout=60)
    _plant(srv, cfg, rclone_tmp, f"office/{folder.name}/{name}/theirs.txt")
    assert_stopped_by_folder_in_the_way(folder, name, db, lambda: push(cfg, sleep=lambda s: None))
    subprocess.run(["rclone", "--config", cfg.rclone.config_file, "purge",
                    f"{srv.remote}:office/{folder.name}/{name}"], check=True, capture_output=True, timeout=60)
    res = push(cfg)
    assert [r.ok for r in res] == [True] * 3, [r.error for r in res]
    assert_landed(folder, db)
    db.close()


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_cancel_stops_the_rebuild_of_an_unusable_manifest(rclone_server, rclone_tmp):
    """The recorder's manifest.json on the store is unusable (a broken sync client), so the push rebuilds it by
    reading back every file SHA256SUMS names, and the store's SHA256SUMS names a file of 200 GB (someone's, or a
    store that lies about it). The user cancels: the push ended only once all of it had been read (an hour on a
    LAN), holding the remote's lock, so no other push to it could start. Now it ends at the cancel."""
    from tests.rclone.test_push import make_cfg, push
    from steno_exportd.engine.identity import recorder_folder
    from tests.smb.recorder import Progress
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    assert all(r.ok for r in push(cfg))
    folder = srv.served / "office" / recorder_folder(cfg)
    session = next(p for p in folder.iterdir() if p.is_dir())
    srv.stop()                      # (changed on its disk while it is down: rclone serve caches its listings)
    with open(session / "huge.bin", "wb") as f:
        f.truncate(200 << 30)       # sparse: no disk space taken
    with open(folder / "SHA256SUMS", "a") as f:
        f.write(f"{'0' * 64}  {session.name}/huge.bin\n")
    (folder / "manifest.json").write_text("{broken")
    srv.start()
    p = Progress()
    done = threading.Event()
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(push(cfg, p, sleep=lambda s: None))
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome.append(e)
        finally:
            done.set()
    pusher = threading.Thread(target=run)
    pusher.start()
    try:
        assert not done.wait(3), f"the push ended before the cancel: {outcome}"
        p.cancelled = True
        assert done.wait(30), "the push went on reading the store's file after the cancel"
    finally:
        srv.stop()                  # (ends a read that a cancel did not)
        pusher.join(60)
    assert not isinstance(outcome[0], BaseException), outcome
    assert not [r for r in outcome[0] if r.ok and not r.skipped], outcome
    db.close()


@pytest.mark.parametrize("title", ["manifest.json", "SHA256SUMS"])
def test_a_meeting_titled_like_the_exports_own_files_gets_a_folder_of_its_own(rclone_server, rclone_tmp, title):
    """An admin names session folders by title alone (folder_pattern "{title}") and a meeting is titled
    "manifest.json" (or "SHA256SUMS"). Its folder took that name in the recorder's folder, where the push's own file
    goes: on WebDAV the session failed ("a folder named 'manifest.json' appeared on the target meanwhile"), built in
    place (SFTP) the manifest could not be saved over it. Its folder gets another name; the push lands."""
    from tests.rclone.test_push import make_cfg, push
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    db.session(title=title, audio_format="flac", audio_size_bytes=50_000,
               audio_file_path=db.audio("named.flac", _pseudo(50_000, 9)))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    by_title = ExportOptions(pattern="{title}")
    res = push(cfg, sleep=lambda s: None, options=by_title)
    assert [r.ok for r in res] == [True, True], [r.error for r in res]
    folder = srv.served / "office" / recorder_folder(cfg)
    assert_landed(folder, db)
    assert (folder / "manifest.json").is_file() and (folder / "SHA256SUMS").is_file()
    assert all(r.skipped for r in push(cfg, options=by_title))
    db.close()


def _many_files(folder: pathlib.Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"photo-{i:05d}.jpg").write_bytes(b"")


def test_a_folder_of_more_entries_than_a_recorder_writes_in_its_folder_is_left_alone_and_the_push_lands(
        rclone_server, rclone_tmp, monkeypatch, caplog):
    """Someone leaves a '<name>.partial' folder of many files in the recorder's folder (a sync client's dump). rclone
    answers a listing whole, in one JSON answer, and the push read every entry of it (up to 64 MiB of them, half a
    million, parsed at once: hundreds of MB on a recorder); on SMB and sticks a listing stops past MAX_ENTRIES. Now
    the rclone push reads a listing only up to MAX_ENTRIES entries (made small here): the folder is left alone with
    one line saying why, as on SMB, and the sessions land."""
    from tests.rclone.test_push import make_cfg, push
    from steno_exportd.engine import targets
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    monkeypatch.setattr(targets, "MAX_ENTRIES", 40)
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    rec = recorder_folder(cfg)
    folder = srv.served / "office" / rec
    _many_files(folder / "Big.partial", 41)
    with caplog.at_level("INFO", logger="steno_exportd"):
        res = push(cfg, sleep=lambda s: None)
    assert [(r.ok, r.error) for r in res] == [(True, "")] * 2, res
    said = [m for m in (r.getMessage() for r in caplog.records) if "Big.partial" in m and "left alone" in m]
    assert said == [f"rclone:cloud: {rec}/Big.partial left alone: {rec}/Big.partial holds more than 40 entries: not a "
                    f"folder this recorder writes"], said
    assert len(list((folder / "Big.partial").iterdir())) == 41
    shutil.rmtree(folder / "Big.partial")
    assert_landed(folder, db)
    db.close()


def test_a_recorder_folder_of_more_entries_than_a_recorder_writes_stops_the_push_with_a_clear_error(
        rclone_server, rclone_tmp, monkeypatch):
    """The recorder's folder itself holds more entries than a recorder writes (someone's files copied into it, or
    the remote pointed at a folder of everything): its listing was read whole, however long. Now it stops past
    MAX_ENTRIES (made small here), the push fails at once with that said, and nothing there is touched."""
    from tests.rclone.test_push import make_cfg, push
    from steno_exportd.engine import targets
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    monkeypatch.setattr(targets, "MAX_ENTRIES", 40)
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    rec = recorder_folder(cfg)
    folder = srv.served / "office" / rec
    _many_files(folder, 45)
    before = snapshot(folder)
    waits: list[float] = []
    with pytest.raises(TargetError) as e:
        push(cfg, sleep=waits.append)
    assert str(e.value) == f"{rec} holds more than 40 entries: not a folder this recorder writes", str(e.value)
    assert waits == []
    assert {k: v for k, v in snapshot(folder).items() if k != CLAIM_NAME} == before
    db.close()


def test_a_remote_folder_shared_with_many_files_of_other_people_still_takes_the_push(rclone_server, rclone_tmp,
                                                                                      monkeypatch):
    """The remote names a folder that also holds many files of other people (a shared "Scans" folder). The push
    listed only its folders at the start; listing its files too (to make the recorder's folder without a look-up)
    counted them against MAX_ENTRIES (made small here), and every push failed: "office holds more than 40 entries".
    Now such a folder is listed for its folders alone, as before: the push lands, the files are left as they were."""
    from tests.rclone.test_push import make_cfg, push
    from steno_exportd.engine import targets
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    monkeypatch.setattr(targets, "MAX_ENTRIES", 40)
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    _many_files(srv.served / "office", 45)
    before = snapshot(srv.served / "office")
    res = push(cfg, sleep=lambda s: None)
    assert [(r.ok, r.error) for r in res] == [(True, "")] * 2, res
    assert_landed(srv.served / "office" / recorder_folder(cfg), db)
    after = snapshot(srv.served / "office")
    assert {k: v for k, v in after.items() if k in before} == before
    db.close()


@pytest.mark.parametrize("host", ["desk/42", "desk\udcff42"])        # (a name of bytes not UTF-8: surrogate escapes)
@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_host_name_no_file_name_can_hold_makes_no_stray_folder_on_the_store(rclone_server, rclone_tmp, monkeypatch,
                                                                             host):
    """The push's temp names on the store hold the host name, which the kernel takes of any bytes (sethostname(2)).
    A host named "desk/42" had its claim uploaded as ".steno-tmp-desk/42-...", in a folder ".steno-tmp-desk" left
    on the store, and the push failed ("rclone:cloud: object not found"); one of bytes not UTF-8 failed with
    UnicodeEncodeError (the recorder's folder name, the manifest's "host"). Now the host's part of a temp name is a
    safe name and its name is text: the push lands, and nothing but its files is left on the store."""
    from tests.rclone.test_push import make_cfg, push
    from steno_exportd.engine.identity import recorder_folder
    srv = rclone_server
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    res = push(cfg, sleep=lambda s: None)
    assert [(r.ok, r.error) for r in res] == [(True, "")] * 2, res
    folder = srv.served / "office" / recorder_folder(cfg)
    assert_landed(folder, db)
    stray = [p.relative_to(srv.served).as_posix() for p in srv.served.rglob("*") if p.name.startswith(".steno-tmp")]
    assert stray == [], stray
    assert sorted(p.name for p in (srv.served / "office").iterdir()) == sorted([folder.name, INDEX_DIR])
    db.close()


def _on_store(conf: pathlib.Path, *command: str) -> None:
    """An rclone command on the store (a person's change made through it: the server's own cache of its folders
    knows it, where a change on its disk is not seen for minutes)."""
    subprocess.run(["rclone", "--config", str(conf), *command], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def faulty_webdav(tmp: pathlib.Path, fail) -> Iterator[tuple]:
    """A WebDAV store served by rclone and a FaultyWebdav in front of it that fails what ``fail`` says, with the
    client config reaching it through that relay: (store, relay, config file); both stopped after."""
    from tests.parts import require_tool
    from tests.parts.rclone import FaultyWebdav, RcloneServer
    require_tool("rclone")
    (tmp / "served").mkdir()
    srv = RcloneServer("webdav", tmp / "served", tmp)
    srv.start()
    try:
        relay = FaultyWebdav(srv.port, fail)
        try:
            yield srv, relay, relay.client_config(srv, tmp / "rclone.conf")
        finally:
            relay.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("failure", [503, "cut"])
def test_a_store_failing_once_as_the_push_reads_its_manifest_is_tried_again_not_rebuilt(rclone_tmp, failure):
    """THREATS: the NAS may fail. A WebDAV store answers the push's read of manifest.json once with 503 (a server
    in maintenance for a moment, a proxy's hiccup). That was taken for an unusable manifest: the push rebuilt it,
    reading every recording on the store back, sent every session again, and saved the rebuilt manifest, in which
    a meeting no longer on the recorder (deleted there after its push) is no meeting of the recorder's any more,
    so it dropped out of the office index. Now that attempt fails on the store's error and the next finds every
    session there: nothing sent, the manifest and the office index as they were. (``failure`` "cut": the store's
    answer to the read is cut halfway, a drop: rclone's answer ends short of the length it said, which was read as
    the whole file, a manifest that is not JSON, rebuilt all the same.)"""
    from steno_exportd.engine.identity import recorder_folder
    from steno_exportd.engine.index import INDEX_DIR
    from tests.parts.rclone import CUT
    from tests.recorder_db import delete_session
    from tests.rclone.test_push import make_cfg, push
    armed: list[int] = []

    def fail(method: str, path: str) -> int | None:
        reads = ("GET",) if failure == "cut" else ("PROPFIND", "GET")       # (a cut: of the file's bytes)
        return armed.pop() if armed and path.endswith("/manifest.json") and method in reads else None
    with faulty_webdav(rclone_tmp, fail) as (srv, relay, conf):
        db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500, 101_000))
        cfg = make_cfg(rclone_tmp, db, conf, f"{srv.remote}:office")
        assert [r.ok and not r.skipped for r in push(cfg)] == [True] * 3
        folder = srv.served / "office" / recorder_folder(cfg)
        index = srv.served / "office" / INDEX_DIR / f"{folder.name}.json"
        recorded = sorted(json.loads((folder / "manifest.json").read_text())["sessions"])
        listed = sorted(m["title"] for m in json.loads(index.read_text())["meetings"])
        gone = json.loads((folder / "manifest.json").read_text())["sessions"][recorded[-1]]["title"]
        delete_session(db.path, recorded[-1])               # the recorder deleted it after its push
        armed.append(CUT if failure == "cut" else failure)
        res = push(cfg, sleep=lambda s: None)
        assert relay.failed, "the store never failed"
        assert [r.skipped for r in res] == [True, True], [(r.skipped, r.error) for r in res]   # nothing sent again
        assert sorted(json.loads((folder / "manifest.json").read_text())["sessions"]) == recorded
        assert sorted(m["title"] for m in json.loads(index.read_text())["meetings"]) == listed and gone in listed
        db.close()


def test_a_store_failing_once_as_a_lost_manifest_is_rebuilt_from_its_sums_sends_no_session_twice(rclone_tmp):
    """THREATS: the NAS may fail. manifest.json is gone from the recorder's folder on the store (a person deleted
    it, a sync client lost it): the push rebuilds it from SHA256SUMS. The store answers that read once with 503. It
    was taken for no SHA256SUMS at all: the manifest was rebuilt empty and every session sent again beside its own
    folder, as '<folder> (2)'. Now that attempt fails on the store's error (as for manifest.json) and the next
    rebuilds it: every session in its own folder, no copy."""
    from steno_exportd.engine.identity import recorder_folder
    from tests.rclone.test_push import make_cfg, push
    armed: list[int] = []

    def fail(method: str, path: str) -> int | None:
        return armed.pop() if armed and path.endswith("/SHA256SUMS") and method == "GET" else None
    with faulty_webdav(rclone_tmp, fail) as (srv, relay, conf):
        db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500, 101_000))
        cfg = make_cfg(rclone_tmp, db, conf, f"{srv.remote}:office")
        assert [r.ok and not r.skipped for r in push(cfg)] == [True] * 3
        folder = srv.served / "office" / recorder_folder(cfg)
        before = sorted(p.name for p in folder.iterdir())
        _on_store(conf, "deletefile", f"{srv.remote}:office/{folder.name}/manifest.json")  # (past the server's cache)
        armed.append(503)
        res = push(cfg, sleep=lambda s: None)
        assert relay.failed, "the store never failed"
        assert [(r.ok, r.error) for r in res] == [(True, "")] * 3, res
        assert sorted(p.name for p in folder.iterdir()) == before       # no '<folder> (2)'
        assert_landed(folder, db)
        db.close()


def test_a_session_folder_moved_into_place_whose_answer_is_lost_is_the_pushs_own_not_sent_again(rclone_tmp):
    """THREATS: the NAS may fail. A WebDAV push moves each session's <folder>.partial into place once the manifest
    that records it is saved. The store does the move, and the connection drops before its answer arrives. The push
    took the folder it then found in place for someone else's ("appeared on the target meanwhile"), reported the
    session failed and took it out of the manifest, and the next push sent it again beside it, as '<folder> (2)'.
    Now a folder found there after a failed move, its .partial gone and holding the files the push put in it, is the
    move done: the session is pushed, and the next push sends nothing."""
    from steno_exportd.engine.identity import recorder_folder
    from tests.parts.rclone import LOST
    from tests.rclone.test_push import make_cfg, push
    armed = [LOST]

    def fail(method: str, path: str) -> int | None:
        return armed.pop() if armed and method == "MOVE" and path.rstrip("/").endswith(".partial") else None
    with faulty_webdav(rclone_tmp, fail) as (srv, relay, conf):
        db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500, 101_000))
        cfg = make_cfg(rclone_tmp, db, conf, f"{srv.remote}:office")
        res = push(cfg, sleep=lambda s: None)
        assert relay.failed, "no folder move lost its answer"
        assert [(r.ok, r.error) for r in res] == [(True, "")] * 3, res
        folder = srv.served / "office" / recorder_folder(cfg)
        sessions = sorted(p.name for p in folder.iterdir() if p.is_dir())
        assert len(sessions) == 3 and not [n for n in sessions if n.endswith((".partial", " (2)"))], sessions
        res = push(cfg)
        assert [r.skipped for r in res] == [True] * 3, [(r.skipped, r.error) for r in res]
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sessions
        assert_landed(folder, db)
        db.close()


def test_a_claim_the_store_fails_to_read_is_said_unreadable_not_a_read_back(rclone_tmp):
    """The store fails the push's read of the recorder's claim file (503, each try). The push said it could not
    "read ... back", the words of a check of a file it had just written: the claim is not one. Now it says which
    file it could not read, and the store's answer."""
    from steno_exportd.engine.identity import recorder_folder
    from tests.rclone.test_push import make_cfg, push
    armed: list[bool] = []

    def fail(method: str, path: str) -> int | None:
        return 503 if armed and path.endswith(f"/{CLAIM_NAME}") and method == "GET" else None
    with faulty_webdav(rclone_tmp, fail) as (srv, relay, conf):
        db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
        cfg = make_cfg(rclone_tmp, db, conf, f"{srv.remote}:office")
        assert [r.ok for r in push(cfg)] == [True]
        armed.append(True)
        waits: list[float] = []
        with pytest.raises(RcloneError) as e:
            push(cfg, sleep=waits.append)
        said = str(e.value)
        assert relay.failed, "the store never failed"
        assert said.startswith(f"rclone:cloud: cannot read {recorder_folder(cfg)}/{CLAIM_NAME}: "), said
        assert "back" not in said, said
        assert len(waits) == 2, waits                   # the store's fault: tried again
        db.close()


def test_a_claim_planted_on_the_store_with_a_hostile_host_name_is_said_in_one_short_printable_line(rclone_server,
                                                                                                   rclone_tmp):
    """As on SMB (tests/smb/test_push.py, the same name): a claim file someone put in the recorder's folder, naming
    another recorder and a host of 60 KB with escapes and line breaks, refused the folder with that text whole in
    the job's error. Now it is said printable and short."""
    srv = rclone_server
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    cfg = cfg_for(rclone_tmp / "r", db, conf, [{"name": "cloud", "remote": f"{srv.remote}:office"}], folder="ch")
    folder = srv.served / "office" / "ch"
    folder.mkdir(parents=True)
    host = "\x1b]0;owned\x07\x1b[2J" + "NAS\nrclone[1]: fake journal line\n" + "y" * 60_000
    (folder / CLAIM_NAME).write_text(json.dumps({"recorder_id": "f\x1b" * 16, "host": host}))
    with pytest.raises(RcloneError) as ei:
        push_to(cfg)
    said = str(ei.value)
    assert "folder ch on rclone:cloud belongs to another recorder (" in said, said[:300]
    assert len(said) < 400 and said.isprintable(), (len(said), said[:300])
    assert ei.value.permanent
    assert sorted(p.name for p in folder.iterdir()) == [CLAIM_NAME]             # nothing written
    db.close()


def test_a_folder_named_like_the_claim_file_stops_the_push_at_once_saying_what_to_remove(rclone_server, rclone_tmp):
    """Someone's folder named .steno-push-owner.json in the recorder's folder on the store, where the push keeps its
    claim: the claim can never be written there, whatever the tries. Now the push fails at once (not tried again as
    a store's hiccup), naming that folder and saying to move it away; it is left as it is, nothing is sent. Moved
    away, the next push claims the folder and lands."""
    from steno_exportd.engine.identity import recorder_folder
    from tests.rclone.test_push import make_cfg, push
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    cfg = make_cfg(rclone_tmp, db, srv.client_config(rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
    rec = recorder_folder(cfg)
    folder = srv.served / "office" / rec
    (folder / CLAIM_NAME).mkdir(parents=True)
    (folder / CLAIM_NAME / "theirs.txt").write_text("a person's own file\n")
    waits: list[float] = []
    with pytest.raises(TargetError) as e:
        push(cfg, sleep=waits.append)
    assert str(e.value) == (f"folder {rec} on rclone:cloud: a folder named {CLAIM_NAME!r} is in the "
                            f"way of this recorder's claim file (not ours, left alone): move it away"), str(e.value)
    assert isinstance(e.value, RcloneError) and e.value.permanent and waits == [], waits
    assert snapshot(folder) == {f"{CLAIM_NAME}/theirs.txt": b"a person's own file\n"}
    _on_store(pathlib.Path(cfg.rclone.config_file), "purge", f"{srv.remote}:office/{rec}/{CLAIM_NAME}")
    assert [r.ok for r in push(cfg)] == [True]
    assert json.loads((folder / CLAIM_NAME).read_text())["recorder_id"]
    assert_landed(folder, db)
    db.close()


def test_a_temp_file_removed_from_the_store_before_its_move_is_sent_again_not_a_store_refusing_writes(rclone_tmp,
                                                                                                     caplog):
    """THREATS: the NAS may fail, a person or a program may change it. A push's temp file (the manifest save's)
    is removed on a WebDAV store (a person, a clean-up script, a sync client) between its upload and its move into
    place: the store answers the MOVE as it answers a write it refuses for good (403 or 404: rclone serve --read-only
    answers uploads 404), and the push failed for good, saying "the store refuses to save files there", not tried
    again. Now it is a transient fault that says the file disappeared: the push's next attempt sends it again, and
    the push lands. The removal is made through the store itself (rclone serve webdav), as the MOVE reaches it."""
    import base64
    import http.client
    import urllib.parse
    from steno_exportd.engine.targets import TEMP_PREFIX
    from tests.parts import require_tool
    from tests.parts.rclone import RcloneServer
    require_tool("rclone")
    (rclone_tmp / "served").mkdir()
    srv = RcloneServer("webdav", rclone_tmp / "served", rclone_tmp)
    srv.start()
    armed: list[str] = []
    removed: list[str] = []

    def remove_before_the_move(method: str, path: str) -> int | None:
        if method == "MOVE" and armed and path.startswith(armed[0]) and \
                path.rpartition("/")[2].startswith(TEMP_PREFIX):
            armed.clear()
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            try:
                login = base64.b64encode(f"{srv.user}:{srv.password}".encode()).decode()
                conn.request("DELETE", urllib.parse.quote(path), headers={"Authorization": f"Basic {login}"})
                assert conn.getresponse().status in (200, 204)
            finally:
                conn.close()
            removed.append(path)
        return None                         # the MOVE goes on to the store, whose answer is its own
    _a_late_session_lands_after_its_removal(rclone_tmp, caplog, srv, remove_before_the_move, armed, removed,
                                            "no temp file")


def _a_late_session_lands_after_its_removal(rclone_tmp, caplog, srv, hook, armed: list, removed: list,
                                            what: str) -> pathlib.Path:
    """Two sessions pushed through a FaultyWebdav relay running ``hook``; a third added and ``armed`` (the recorder's
    folder: the hook removes its temp file or folder from the store as its MOVE comes); that push lands all three,
    its first attempt having said the thing "disappeared from the store" (not "refuses"). The recorder's folder on
    the store; the relay and ``srv`` are stopped."""
    from steno_exportd.engine.identity import recorder_folder
    from tests.parts.rclone import FaultyWebdav
    from tests.rclone.test_push import make_cfg, push
    relay = FaultyWebdav(srv.port, hook)
    try:
        db = make_recorder(rclone_tmp / "rec", sizes=(100_000, 100_500))
        cfg = make_cfg(rclone_tmp, db, relay.client_config(srv, rclone_tmp / "rclone.conf"), f"{srv.remote}:office")
        assert [r.ok and not r.skipped for r in push(cfg)] == [True] * 2
        folder = srv.served / "office" / recorder_folder(cfg)
        audio = rclone_tmp / "rec" / "audio" / "late.flac"
        audio.write_bytes(os.urandom(100_000))
        db.session(title="Late", audio_format="flac", audio_size_bytes=100_000, audio_file_path=f"audio/{audio.name}")
        armed.append(f"/office/{folder.name}/")
        caplog.set_level("WARNING")
        res = push(cfg, sleep=lambda s: None)
        assert removed, f"{what} was moved"
        assert [r.ok for r in res] == [True] * 3, [r.error for r in res]
        said = [r.getMessage() for r in caplog.records if "attempt 1/" in r.getMessage()]
        assert len(said) == 1 and "disappeared from the store" in said[0] and "refuses" not in said[0], said
        assert_landed(folder, db)
        db.close()
        return folder
    finally:
        relay.close()
        srv.stop()


def test_a_partial_folder_removed_from_the_store_before_its_move_is_sent_again_not_a_store_refusing_writes(
        rclone_tmp, caplog):
    """THREATS: a person or a program may change the NAS. On WebDAV a session is built as '<folder>.partial' and
    moved into place whole. That folder is removed from the store (a person tidying up what reads as unfinished, a
    clean-up script) between its upload and its move: the store answers the MOVE 404, as it answers a write it
    refuses for good, and the push failed for good saying "the store refuses to save files there" (the look-up
    that tells a removed temp file from a refusal was made for a file's move only). Now it is a transient fault
    saying the folder disappeared: the next attempt sends the session again, and the push lands. The removal is
    made through the store (rclone purge on the rclone serve webdav), as the MOVE reaches it."""
    from steno_exportd.engine.targets import PARTIAL_SUFFIX
    from tests.parts import require_tool
    from tests.parts.rclone import RcloneServer
    require_tool("rclone")
    (rclone_tmp / "served").mkdir()
    srv = RcloneServer("webdav", rclone_tmp / "served", rclone_tmp)
    srv.start()
    direct = srv.client_config(rclone_tmp / "direct.conf")     # (the store itself, not through the relay)
    armed: list[str] = []
    removed: list[str] = []

    def remove_before_the_move(method: str, path: str) -> int | None:
        folder = path.rstrip("/")
        if method == "MOVE" and armed and folder.startswith(armed[0]) and folder.endswith(PARTIAL_SUFFIX):
            armed.clear()
            _on_store(direct, "purge", f"{srv.remote}:{folder.lstrip('/')}")
            removed.append(folder)
        return None                         # the MOVE goes on to the store, whose answer is its own
    folder = _a_late_session_lands_after_its_removal(rclone_tmp, caplog, srv, remove_before_the_move, armed, removed,
                                                     "no .partial folder")
    assert not [p.name for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]


class Squatter:
    """A local user's listener on a loopback port (any user may bind one): it keeps what each connection sends and
    answers as rclone rcd would, rc/noop with {} (so a daemon that took it for its rclone goes on) and anything
    else with a refusal (the push then stops at once)."""

    def __init__(self, port: int) -> None:
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._serve, daemon=True, name="squatter")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                    data += conn.recv(65536) if b"Content-Length" in data else b""
                self.received.append(data)
                body = b"{}" if data.startswith(b"POST /rc/noop ") else b'{"error": "permission denied"}'
                status = b"200 OK" if body == b"{}" else b"500 Internal Server Error"
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (status, len(body), body))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)        # (wakes its accept(): a close alone does not)
        self.sock.close()
        self.thread.join(10)


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_local_user_who_takes_rclones_port_first_is_sent_nothing(rclone_server, rclone_tmp, monkeypatch):
    """Any local user (the touchscreen's, the recorder's) against rclone rcd's port: the daemon picked it (bound a
    socket to port 0, closed it) and handed it to rclone on its command line, so for the moment between, the port
    was free, and whoever bound it then (here: the window forced, the squatter binds it as rclone is started) was
    taken for rclone: sent the push's requests with their login, the remote's fs (a connection string's password
    in it) and the meetings' files, while the real rclone exited ("address already in use"). Now rclone binds a
    port of its own choosing and says which: there is no moment when the port is free, nothing reaches anyone
    else, and the push lands."""
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    cfg = cfg_for(rclone_tmp / "r", db, srv.client_config(rclone_tmp / "rclone.conf"),
                  [{"name": "cloud", "remote": f"{srv.remote}:office"}], folder="sq")
    squatters: list[Squatter] = []
    real_popen = subprocess.Popen

    def popen(argv, *a, **kw):
        if "rcd" in argv:
            port = int(argv[argv.index("--rc-addr") + 1].rpartition(":")[2])
            if port:                            # a port named in advance: the local user binds it first
                squatters.append(Squatter(port))
        return real_popen(argv, *a, **kw)
    monkeypatch.setattr(subprocess, "Popen", popen)
    try:
        try:
            res = push_to(cfg)
        except TargetError as e:
            res = [e]
        sent = [d for s in squatters for d in s.received]
        assert sent == [], f"a local user's listener was sent {len(sent)} requests: {sent[:2]}"
    finally:
        for s in squatters:
            s.close()
    assert [getattr(r, "ok", False) for r in res] == [True], res
    assert_landed(srv.served / "office" / "sq", db)
    db.close()


def push_in_environment(srv, tmp: pathlib.Path, monkeypatch, env: dict[str, str], folder: str) -> tuple:
    """A recorder of one recording pushed to office/<folder> on ``srv`` with ``env`` in the daemon's environment
    (set after the test's own rclone commands): the push lands whole; -> (its config, the recorder)."""
    db = make_recorder(tmp / "rec", sizes=(100_000,))
    cfg = cfg_for(tmp / "r", db, srv.client_config(tmp / "rclone.conf"),
                  [{"name": "cloud", "remote": f"{srv.remote}:office"}], folder=folder)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        res = push_to(cfg)
    except TargetError as e:
        res = [e]
    assert [getattr(r, "ok", False) for r in res] == [True], res
    assert_landed(srv.served / "office" / folder, db)
    return cfg, db


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
@pytest.mark.parametrize("var", ["RCLONE_SYSLOG", "RCLONE_USE_JSON_LOG"])
def test_rclones_log_moved_by_the_daemons_environment_still_lets_the_push_land(rclone_server, rclone_tmp,
                                                                               monkeypatch, var):
    """The push learns rclone rcd's port from its NOTICE line on stderr; the environment variables that quiet that
    log were dropped from rclone's environment, but not those that move it or change its shape: an admin's
    RCLONE_SYSLOG=true (rclone's log to syslog, nothing on stderr; without a syslog, rclone exits at once) in the
    daemon's environment made every push fail before it reached the store ("rclone did not start"). Now they are
    dropped too (RCLONE_USE_JSON_LOG: its errors as JSON objects, not the lines the push reads): the push lands."""
    _, db = push_in_environment(rclone_server, rclone_tmp, monkeypatch, {var: "true"}, "lg")
    db.close()


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_rclone_under_systemd_says_its_errors_without_syslog_priorities(rclone_server, rclone_tmp, monkeypatch):
    """Under systemd the daemon's environment holds INVOCATION_ID and JOURNAL_STREAM, and rclone children took them
    for their own service's: rclone v1.60 then logs for the journal, each line '<3>ERROR : ...' ('<5>NOTICE: ...')
    and no date, and the push reads rclone's stderr for the error a person sees when rclone ends (killed: the
    kernel's OOM killer on a recorder short of memory): "rclone:cloud: <3>ERROR : rc: ...". Now those variables are
    not passed on to rclone (nor RCLONE_LOG_SYSTEMD), and a priority is taken off a line anyway (shown here on a
    real rclone rcd's stderr given those variables itself)."""
    from steno_exportd.rclone.process import Rcd, explain
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    cfg = cfg_for(rclone_tmp / "r", db, srv.client_config(rclone_tmp / "rclone.conf"),
                  [{"name": "cloud", "remote": f"{srv.remote}:office"}])
    db.close()
    monkeypatch.setenv("INVOCATION_ID", "9f2c4e1d8b7a4c3e9d1f0a2b3c4d5e6f")   # (the daemon's, as systemd sets them)
    monkeypatch.setenv("JOURNAL_STREAM", "8:123456")

    def said_when_killed(rcd: Rcd) -> str:
        rcd.start()
        try:
            with pytest.raises(RcloneError):
                rcd.call("operations/list", {"fs": f"{srv.remote}:office", "remote": "not-there"})
            os.killpg(rcd.proc.pid, signal.SIGKILL)
            rcd.proc.wait()
            time.sleep(0.2)                             # (its last words read)
            return str(explain(rcd.proc.returncode, rcd.stderr(), rcd.where))
        finally:
            rcd.close()
    said = said_when_killed(Rcd(cfg, cfg.rclone.remotes[0]))
    assert said.startswith("rclone:cloud: ERROR : rc: \"operations/list\": error:"), said
    assert not re.search(r"<\d>", said), said
    monkeypatch.setattr("steno_exportd.rclone.process._QUIETING", ())         # (rclone given them: its lines)
    said = said_when_killed(Rcd(cfg, cfg.rclone.remotes[0]))
    assert said.startswith("rclone:cloud: ERROR : rc: \"operations/list\": error:"), said


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_temp_file_of_a_recorder_whose_name_extends_ours_is_not_taken_for_ours(rclone_server, rclone_tmp,
                                                                                 monkeypatch):
    """A push removes the temp files its own host's pushes left in its folder after a drop, and leaves another
    host's alone (not ours to remove: that recorder may be sending it right now). Ours were told by their name's
    start, '.steno-tmp-<host>-': recorder pi-1 took pi-1-2's '.steno-tmp-pi-1-2-4011-abc123-1.part' for its own
    (one folder both were given, an admin's copied config) and removed it under the other's upload. Now only a
    name of our own temp names' shape is ours: theirs stays, our stale one is removed."""
    srv = rclone_server
    monkeypatch.setattr(socket, "gethostname", lambda: "pi-1")
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    cfg = cfg_for(rclone_tmp / "r", db, conf, [{"name": "cloud", "remote": f"{srv.remote}:office"}], folder="of")
    assert [r.ok for r in push_to(cfg)] == [True]
    theirs, ours = ".steno-tmp-pi-1-2-4011-abc123-1.part", ".steno-tmp-pi-1-4011-abc123-1.part"
    for name in (theirs, ours):
        (rclone_tmp / name).write_bytes(b"half a recording")
        _on_store(conf, "copyto", str(rclone_tmp / name), f"{srv.remote}:office/of/{name}")   # (past its cache)
    assert [r.skipped for r in push_to(cfg)] == [True]
    left = sorted(p.name for p in (srv.served / "office" / "of").iterdir() if p.name.startswith(".steno-tmp-"))
    assert left == [theirs], left
    (srv.served / "office" / "of" / theirs).unlink()
    assert_landed(srv.served / "office" / "of", db)
    db.close()



# what an admin's shell or unit file may hold for an rclone of their own (its web GUI on port 5572, a dry run tried
# once): rclone reads each of its flags from the environment
ADMINS_RCLONE = {
    "rc login": {"RCLONE_RC_USER": "admin", "RCLONE_RC_PASS": "gui-secret", "RCLONE_RC_ADDR": "127.0.0.1:5572"},
    "rc htpasswd": {"RCLONE_RC_HTPASSWD": "/etc/rclone/htpasswd"},
    "rc baseurl": {"RCLONE_RC_BASEURL": "/rclone"},
    "rc tls": {"RCLONE_RC_CERT": "/etc/rclone/gui.pem", "RCLONE_RC_KEY": "/etc/rclone/gui.key"},
    "dry run": {"RCLONE_DRY_RUN": "true"},
    "max transfer": {"RCLONE_MAX_TRANSFER": "10K"},
}


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
@pytest.mark.parametrize("env", sorted(ADMINS_RCLONE))
def test_rclone_settings_in_the_daemons_environment_do_not_reach_the_pushs_rclone(rclone_server, rclone_tmp,
                                                                                   monkeypatch, env):
    """rclone takes a setting for each of its flags from the environment (RCLONE_<FLAG>), and the push's rclone rcd
    got the daemon's whole environment: an admin's RCLONE_RC_BASEURL, RCLONE_RC_HTPASSWD or RCLONE_RC_CERT (set for
    rclone's web GUI) made every push fail before it reached the store ("rclone did not start: ..."; with the
    htpasswd, a line of rclone's panic), RCLONE_DRY_RUN=true made rclone skip every write ("... disappeared from
    the store before it was moved"), RCLONE_MAX_TRANSFER cut the push. Now rclone's own settings are not passed on
    (the push's command line sets those it needs): the push lands, and the next sends nothing. (RCLONE_RC_USER,
    _PASS and _ADDR are a guard: the push's own login and address were given over them already.)"""
    cfg, db = push_in_environment(rclone_server, rclone_tmp, monkeypatch, ADMINS_RCLONE[env], "env")
    assert [r.skipped for r in push_to(cfg)] == [True]
    db.close()


@pytest.mark.parametrize("rclone_server", ["webdav"], indirect=True)
def test_a_remotes_setting_the_admin_gives_in_the_environment_still_reaches_rclone(rclone_server, rclone_tmp,
                                                                                   monkeypatch):
    """What rclone's own settings in the environment are dropped for must not drop the admin's rclone config: a
    remote's setting given as RCLONE_CONFIG_<REMOTE>_<KEY> (rclone's documented way; here the remote's password,
    kept out of the file) still reaches rclone, and the push lands."""
    srv = rclone_server
    db = make_recorder(rclone_tmp / "rec", sizes=(100_000,))
    conf = srv.client_config(rclone_tmp / "rclone.conf", password="not-the-password")
    cfg = cfg_for(rclone_tmp / "r", db, conf, [{"name": "cloud", "remote": f"{srv.remote}:office"}], folder="cf")
    obscured = subprocess.run(["rclone", "obscure", srv.password], check=True, capture_output=True,
                              text=True).stdout.strip()
    monkeypatch.setenv(f"RCLONE_CONFIG_{srv.remote.upper()}_PASS", obscured)   # (rclone v1.60 keeps the "-")
    assert [r.ok for r in push_to(cfg)] == [True]
    assert_landed(srv.served / "office" / "cf", db)
    db.close()


def test_two_copies_giving_a_claim_written_before_boards_their_board_at_once_do_not_both_keep_the_folder(
        rclone_server, rclone_tmp, monkeypatch):
    """Two copies of one system (one machine id, two boards) find the claim an earlier version wrote (no board) at
    the same moment. Each wrote its board into it and read it back: with B's read of the board-less claim before A's
    push, A's write and read-back, then B's write and read-back, both read their own board and both kept the folder,
    pushing into it at once (each over the other's manifest). Now exactly one keeps it; the other stops before
    writing a meeting, saying the folder is another recorder's with this machine id."""
    from steno_exportd.engine.identity import recorder_folder, this_recorder
    from steno_exportd.rclone import kind as rclone_kind
    srv = rclone_server
    db_a, db_b, cfg_a, cfg_b = copied_recorders(srv, rclone_tmp, monkeypatch)
    folder = srv.served / "office" / recorder_folder(cfg_a)
    folder.mkdir(parents=True)
    rid = this_recorder(cfg_a)
    (folder / CLAIM_NAME).write_text(json.dumps({"recorder_id": rid, "host": "steno", "claimed": 1.0}))
    b_read, a_claimed = threading.Event(), threading.Event()
    real_claim, real_read = rclone_kind.claim, rclone_kind._read_claim

    def claim(t, *a, **kw):
        try:
            return real_claim(t, *a, **kw)
        finally:
            if threading.current_thread().name == "a":
                a_claimed.set()

    def read_claim(t, *a, **kw):
        raw = real_read(t, *a, **kw)
        if threading.current_thread().name == "b" and not b_read.is_set():
            b_read.set()                    # B has read the board-less claim: A claims the folder whole meanwhile
            assert a_claimed.wait(120)
        return raw
    monkeypatch.setattr(rclone_kind, "claim", claim)
    monkeypatch.setattr(rclone_kind, "_read_claim", read_claim)
    results: dict = {}

    def run(name, cfg):
        try:
            if name == "a":
                assert b_read.wait(120)
            results[name] = push_to(cfg)
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            results[name] = e
        finally:
            a_claimed.set() if name == "a" else b_read.set()
    threads = [threading.Thread(target=run, args=(n, c), name=n) for n, c in (("b", cfg_b), ("a", cfg_a))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(240)
    kept = [n for n, r in results.items() if isinstance(r, list) and all(x.ok for x in r)]
    refused = [n for n, r in results.items() if isinstance(r, RcloneError)
               and "belongs to another recorder with this recorder's machine id" in str(r)]
    assert len(kept) == 1 and len(refused) == 1, results
    claimed = json.loads((folder / CLAIM_NAME).read_text())
    from steno_exportd.engine import identity
    winner = {"a": cfg_a, "b": cfg_b}[kept[0]]
    assert claimed["board"] == identity.board_id(winner.state.dir), claimed
    assert_landed(folder, {"a": db_a, "b": db_b}[kept[0]])   # the winner's meetings alone
    db_a.close()
    db_b.close()


@pytest.mark.parametrize("moved_back", [True, False], ids=["store-error", "power-cut"])
def test_a_board_given_half_way_leaves_the_folder_its_owners(rclone_server, rclone_tmp, monkeypatch, moved_back):
    """As on SMB (tests/smb/test_push.py, the same name): the claim moved aside to be given A's board, the new
    claim's create failing (and the move back, after a power cut), another recorder given the same folder name
    took the folder and pushed over A's manifest. Now it is refused, nothing written; A's next push completes."""
    from steno_exportd.engine import identity
    from steno_exportd.engine.identity import this_recorder
    from steno_exportd.rclone import kind as rclone_kind
    monkeypatch.setattr(identity, "BOARD_SERIAL", str(rclone_tmp / "no-serial-number"))
    srv = rclone_server
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    remote = [{"name": "cloud", "remote": f"{srv.remote}:office"}]
    db_a = make_recorder(rclone_tmp / "rec-a", sizes=(200_000, 200_500))
    db_b = make_recorder(rclone_tmp / "rec-b", sizes=(100_000, 100_500), seed=7)
    cfg_a = cfg_for(rclone_tmp / "a", db_a, conf, remote, folder="steno")
    cfg_b = cfg_for(rclone_tmp / "b", db_b, conf, remote, folder="steno")
    folder = srv.served / "office" / "steno"
    folder.mkdir(parents=True)
    rid = this_recorder(cfg_a)
    (folder / CLAIM_NAME).write_text(json.dumps({"recorder_id": rid, "host": "steno", "claimed": 1.0}))
    failing = {"on": True}
    real_create, real_rename = rclone_kind._create_claim, RcloneTarget.rename

    def create_claim(t, folder, rel, body):
        if failing["on"]:
            return RcloneError("connection reset by peer (the recorder lost power)", True)
        return real_create(t, folder, rel, body)

    def rename(self, src, dst):
        if failing["on"] and not moved_back and "-before-boards-" in src:
            raise RcloneError("connection reset by peer (the recorder lost power)", True)
        return real_rename(self, src, dst)
    monkeypatch.setattr(rclone_kind, "_create_claim", create_claim)
    monkeypatch.setattr(RcloneTarget, "rename", rename)
    with pytest.raises(RcloneError):
        push_to(cfg_a)
    failing["on"] = False
    assert (folder / CLAIM_NAME).exists() == moved_back
    before = snapshot(srv.served / "office")
    with pytest.raises(RcloneError) as ei:
        push_to(cfg_b, kind=RcloneKind(recorder_id="b2" * 16, sleep=lambda s: None))
    assert "belongs to another recorder" in str(ei.value) and f"id {rid[:8]}" in str(ei.value), str(ei.value)
    assert snapshot(srv.served / "office") == before         # nothing of B's written, nothing of A's replaced
    assert all(r.ok for r in push_to(cfg_a))
    claimed = json.loads((folder / CLAIM_NAME).read_text())
    assert claimed["recorder_id"] == rid and claimed["board"] == identity.board_id(cfg_a.state.dir), claimed
    assert_landed(folder, db_a)
    db_a.close()
    db_b.close()


@pytest.mark.parametrize("answer", ["503-for-a-moment", "403-for-good"])
def test_a_claim_not_moved_aside_for_a_drop_is_given_its_board_on_the_next_try(rclone_server, rclone_tmp,
                                                                              monkeypatch, caplog, answer):
    """As on SMB (tests/smb/test_push.py, the same name): the move aside failing for the store for a moment (503)
    left the board-less claim, and the push went on saying it had given it its board; now it is tried again, and
    given. 403-for-good: the store will never move it (written under another account of it): tried again on every
    push, it would never land again; it lands without a retry, the claim as it was, and one warning says why."""
    from steno_exportd.engine import identity
    from steno_exportd.engine.identity import this_recorder
    monkeypatch.setattr(identity, "BOARD_SERIAL", str(rclone_tmp / "no-serial-number"))
    srv = rclone_server
    conf = srv.client_config(rclone_tmp / "rclone.conf")
    db = make_recorder(rclone_tmp / "rec-a", sizes=(200_000,))
    cfg = cfg_for(rclone_tmp / "a", db, conf, [{"name": "cloud", "remote": f"{srv.remote}:office"}], folder="steno")
    folder = srv.served / "office" / "steno"
    folder.mkdir(parents=True)
    rid = this_recorder(cfg)
    old = json.dumps({"recorder_id": rid, "host": "steno", "claimed": 1.0})
    (folder / CLAIM_NAME).write_text(old)
    for_good = answer == "403-for-good"
    refused, real_rename = [], RcloneTarget.rename

    def rename(self, src, dst):
        if "-before-boards-" in dst and (for_good or not refused):
            refused.append(dst)
            raise RcloneError("HTTP 403 Forbidden", True) if for_good else RcloneError("HTTP 503 Service Unavailable")
        return real_rename(self, src, dst)
    monkeypatch.setattr(RcloneTarget, "rename", rename)
    sleeps: list = []
    with caplog.at_level(logging.WARNING, logger="steno_exportd"):
        assert all(r.ok for r in push_to(cfg, kind=RcloneKind(sleep=sleeps.append)))
    assert len(refused) == 1
    warned = [r for r in caplog.records if "cannot be given this recorder's board" in r.getMessage()]
    if for_good:
        assert sleeps == [] and len(warned) == 1
        assert (folder / CLAIM_NAME).read_text() == old
    else:
        assert len(sleeps) == 1 and warned == []
        claimed = json.loads((folder / CLAIM_NAME).read_text())
        assert claimed["recorder_id"] == rid and claimed["board"] == identity.board_id(cfg.state.dir), claimed
    assert_landed(folder, db)
    db.close()
