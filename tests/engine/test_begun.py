"""The recorder's own record of the <folder>.partial folders it began on a store without markers (engine/begun.py):
what a later push's clean-up removes. A record that could not be brought up to date must not name a folder that
is no longer ours."""
from __future__ import annotations

from steno_exportd.engine.begun import Begun


def test_a_record_that_cannot_be_updated_names_no_folder_a_later_push_would_remove(tmp_path, caplog):
    state = str(tmp_path / "state")
    b = Begun(state, "webdav:office", "SilentSteno")
    b.add("2026-11-15 Meeting 6.partial")                  # made, then moved into place: ...
    assert "2026-11-15 Meeting 6.partial" in Begun(state, "webdav:office", "SilentSteno")
    b.path.with_name(f".{b.path.name}.tmp").mkdir()        # ... but the record cannot be written now (a full or
    b.discard("2026-11-15 Meeting 6.partial")              # failing state folder: here its temp name is taken)
    # a person renames that finished folder to '2026-11-15 Meeting 6.partial'; the next push reads the record
    later = Begun(state, "webdav:office", "SilentSteno")
    assert "2026-11-15 Meeting 6.partial" not in later, "the stale record would have the person's folder removed"
    assert any("not written" in r.getMessage() for r in caplog.records)
