"""The core's session listing (one cache, kept current by refresh_library) and its request checks."""
from __future__ import annotations

import pytest

from steno_exportd import config
from steno_exportd.core import Core
from steno_exportd.errors import InvalidArgument, NotAllowedError, NotFoundError, SessionReplaced
from steno_exportd.library import Library
from tests.recorder_db import RecorderDB


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A real recorder DB with two sessions, a core on it, and a count of full listings and session loads."""
    rec = RecorderDB(tmp_path / "rec")
    rec.session()
    rec.session()
    out = tmp_path / "out"
    out.mkdir()
    cfg = config.from_dict({"recorder": {"db_path": str(rec.path)}, "state": {"dir": str(tmp_path / "state")},
                            "export": {"allowed_dirs": [str(out)]}})
    reads: list[str] = []
    list_sessions, get_session = Library.list_sessions, Library.get_session
    monkeypatch.setattr(Library, "list_sessions",
                        lambda self, exportable_only=False: reads.append("list") or list_sessions(self, exportable_only))
    monkeypatch.setattr(Library, "get_session",
                        lambda self, key, *a: reads.append("get") or get_session(self, key, *a))
    yield Core(cfg), rec, reads, out
    rec.close()


async def test_one_listing_read_once_and_kept_current_by_refresh(env):
    core, rec, reads, _ = env
    first = await core.listing()
    assert await core.listing() is first and reads == ["list"], "an unchanged database is not read again"
    assert [s.id for s in first.sessions] == [2, 1]
    assert core.status_text() == "idle; 2 sessions; 0 sticks"
    await core.refresh_library()                    # the first look: every session counts as added
    new = rec.session(title="Board meeting")
    reads.clear()
    change = await core.refresh_library()
    assert change.added == (new,) and reads == ["list"]
    listing = await core.listing()
    assert listing.by_id[new].title == "Board meeting" and reads == ["list"], "refresh_library refreshed it"
    assert core.status_text() == "idle; 3 sessions; 0 sticks" and reads == ["list"], "the status line reads no DB"
    rec.session()                                    # a change refresh_library has not seen yet
    assert len(await core.listing()) == 4


async def test_session_by_key_loads_one_session(env):
    core, rec, reads, _ = env
    uuid = (await core.listing()).by_id[1].uuid
    reads.clear()
    assert (await core.session(uuid.upper())).id == 1
    assert (await core.session(uuid[:8])).id == 1
    assert reads == ["get", "get"]
    with pytest.raises(NotFoundError):
        await core.session(uuid[:6])
    with pytest.raises(InvalidArgument, match="too long"):
        await core.session("1" * 100_000)
    assert reads == ["get", "get"]


async def test_a_session_named_by_uuid_is_read_bound_to_it(tmp_path, monkeypatch):
    """session() looks a key up on the listing and then reads the session: the recorder's database restored in
    between (another recorder's backup, its session 1 another meeting) is SessionReplaced, never that other meeting
    under the uuid asked for; ``uuid=`` holds a key to one meeting, as recording() does."""
    import os
    import shutil

    a, b = RecorderDB(tmp_path / "a", wal=False), RecorderDB(tmp_path / "b", wal=False)
    a.session(title="All-hands")
    b.session(title="Board meeting", uuid="bbbbbbbb-1111-4222-8333-000000000001")
    a.close(), b.close()
    cfg = config.from_dict({"recorder": {"db_path": str(a.path)}, "state": {"dir": str(tmp_path / "state")}})
    core = Core(cfg)
    uuid = (await core.listing()).by_id[1].uuid
    assert (await core.session(uuid)).title == "All-hands"
    with pytest.raises(SessionReplaced):
        await core.session(1, "bbbbbbbb-1111-4222-8333-000000000001")
    with pytest.raises(SessionReplaced):
        await core.summary(uuid[:8], "bbbbbbbb-1111-4222-8333-000000000001")
    assert (await core.session(1, uuid.upper())).title == "All-hands"      # (uuids compared as the key rule does)
    get_session = Library.get_session

    def restored_first(self, key, *a):
        shutil.copy(b.path, tmp_path / "restoring.db")
        os.replace(tmp_path / "restoring.db", self.db_path)      # (a restore: the file replaced whole)
        return get_session(self, key, *a)
    monkeypatch.setattr(Library, "get_session", restored_first)
    with pytest.raises(SessionReplaced):
        await core.session(uuid)
    core.library.close()


async def test_sizes_and_types_are_checked_before_any_work(env):
    """Oversized or mistyped requests are refused before the listing is read or a job exists."""
    core, rec, reads, out = env
    for ids, formats, target, options in [
            (["1"] * 200_000, ["txt"], str(out), {}),
            (["1"], ["txt"] * 100_000, str(out), {}),
            (["1"], ["txt"], str(out), {"include_audio": "yes"}),
            (["1"], ["txt"], "/" + "x" * 5000, {})]:
        with pytest.raises(InvalidArgument):
            await core.check_export(ids, formats, target, options)
    assert reads == [] and core.jobs.list() == []
    for target, options, error in [("/etc", {}, NotAllowedError), ("relative/folder", {}, InvalidArgument),
                                   (str(out), {"template": "nope"}, NotFoundError)]:
        with pytest.raises(error):
            await core.check_export(["1"], ["pdf"], target, options)
    assert reads == ["list"] and core.jobs.list() == []
    spec = await core.check_export(["2", "1", "2"], ["txt", "txt"], str(out), {"priority": 3})
    assert spec.session_ids == (2, 1) and spec.formats == ("txt",) and spec.options.priority == 3
    assert reads == ["list"], "ids are resolved from the (cached) listing, never by loading a session"
    spec = await core.check_export("all", [], str(out))
    assert spec.formats == tuple(core.cfg.export.formats) and spec.session_ids == (2, 1)


async def test_a_recording_is_looked_up_without_loading_its_session(env):
    """summary() and recording(): the listing's summary and the recording as session() checks it, no load."""
    core, rec, reads, _ = env
    sid = rec.session(audio_file_path=rec.audio("board.wav"))
    uuid = (await core.listing()).by_id[sid].uuid
    whole = await core.session(sid)
    assert whole.audio is not None and whole.audio.path.name == "board.wav"
    reads.clear()
    assert (await core.summary(uuid[:8])) == whole.summary
    summary, recording = await core.recording(uuid)
    assert summary == whole.summary and recording == whole.audio
    assert await core.recording(1) == ((await core.listing()).by_id[1], None)
    assert reads == []
    with pytest.raises(NotFoundError):
        await core.recording(99)
    with pytest.raises(InvalidArgument, match="too long"):
        await core.summary("1" * 100_000)
    assert reads == []
