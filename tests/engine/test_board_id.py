"""identity.board_id: what tells a recorder from another running a copy of its system."""
from __future__ import annotations

import threading

from steno_exportd.engine import identity


def test_two_pushes_making_the_board_id_at_once_both_get_the_id_the_file_holds(tmp_path, monkeypatch):
    """The first run's id was written under a temp name of the pid only and renamed over any there: two pushes at
    once (threads of one daemon) wrote different ids, one returning an id the file does not hold, so its later
    pushes refused its own folder. Exactly one id wins; every caller gets it."""
    monkeypatch.setattr(identity, "BOARD_SERIAL", str(tmp_path / "no-serial-number"))
    for attempt in range(20):
        state = tmp_path / f"state{attempt}"
        start = threading.Barrier(8)
        got: list[str] = []

        def run() -> None:
            start.wait()
            got.append(identity.board_id(str(state)))
        threads = [threading.Thread(target=run) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        held = (state / identity.BOARD_ID_FILE).read_text().strip()
        assert len(got) == 8 and set(got) == {held}, (attempt, got, held)
        assert sorted(p.name for p in state.iterdir()) == [identity.BOARD_ID_FILE]     # no temp file left


def test_the_board_id_is_derived_from_the_board_serial_whatever_the_state_folder(tmp_path, monkeypatch):
    serial = tmp_path / "serial-number"
    serial.write_bytes(b"10000000abcdef12\0")
    monkeypatch.setattr(identity, "BOARD_SERIAL", str(serial))
    one, two = identity.board_id(str(tmp_path / "a")), identity.board_id(str(tmp_path / "b"))
    assert one == two and len(one) == 16
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()     # nothing kept: the board says it
    serial.write_bytes(b"10000000abcdef13\0")
    assert identity.board_id(str(tmp_path / "a")) != one
