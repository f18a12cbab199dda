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


def test_an_id_file_left_empty_by_a_power_cut_is_made_again_not_an_end_to_the_ownership_checks(tmp_path, monkeypatch,
                                                                                                caplog):
    """A power cut soon after the first run can leave the kept id's file empty (written, not synced). It was then
    never made again: every push got "" (a recorder id of "": no claim, the bare host name's folder shared with any
    recorder of that name; a board of "": copies not told apart), with no log line. Now it is made again, once, and
    every later caller gets the one it holds."""
    monkeypatch.setattr(identity, "BOARD_SERIAL", str(tmp_path / "no-serial-number"))
    for name, make in ((identity.BOARD_ID_FILE, lambda state: identity.board_id(state)),
                       (identity.RECORDER_ID_FILE,
                        lambda state: identity.recorder_id(state, str(tmp_path / "no-machine-id")))):
        state = tmp_path / f"state-{name}"
        state.mkdir()
        (state / name).write_bytes(b"")
        got = make(str(state))
        assert got and (state / name).read_text().strip() == got, (name, got)
        assert make(str(state)) == got
        assert sorted(p.name for p in state.iterdir()) == [name]       # no temp file left


def test_files_written_at_once_without_replacing_leave_exactly_one_whole_and_no_temp_file(tmp_path):
    """atomic.write_file(replace=False), which keeps the recorder and board ids: eight writers at once, each its own
    content; exactly one gives the file its content (whole), the seven others are told FileExistsError, and no temp
    file is left beside it."""
    from steno_exportd.atomic import write_file
    path = tmp_path / "board-id"
    won, refused, start = [], [], threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        try:
            write_file(path, f"{n:032x}\n".encode(), 0o644, replace=False)
            won.append(n)
        except FileExistsError:
            refused.append(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7, (won, refused)
    assert path.read_text() == f"{won[0]:032x}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board-id"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
