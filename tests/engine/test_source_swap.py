"""THREATS.md: whoever can write the recorder's data folder can swap a recording for a symlink at any moment; an
export to a stick (or a local folder) must never copy the file the symlink points to. Real exports into a folder,
while a thread keeps swapping the recordings between the real files and symlinks to a file of the daemon's own
(a secret), and a watcher that holds every file that ever appears in the export folder."""
from __future__ import annotations

from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from tests.configs import make_config
from tests.fakes import library
from tests.parts.swap import MARKER, runs_while_swapping

EXPORTS = 12                # exports into fresh folders (each copies every recording again) ...
BUDGET = 30.0               # ... for at most this many seconds


def test_a_recording_swapped_for_a_symlink_during_an_export_never_copies_the_file_it_points_to(tmp_path):
    lib = library(tmp_path, 8, audio_size=1 << 20)
    recordings = sorted((tmp_path / "rec").glob("*.wav"))
    real = {p.read_bytes() for p in recordings}
    secret = tmp_path / "state-of-the-daemon.db"        # outside the data folder, readable by the daemon's user
    secret.write_bytes((MARKER * 30000)[:(700 << 10) + 7])
    cfg = make_config(tmp_path)
    outs = tmp_path / "sticks"
    outs.mkdir()
    results = []

    def one_export(i, _swapper):
        out = outs / f"stick{i}"
        out.mkdir()
        results.extend(run_export(lib, SimpleSpec(str(out), tuple(range(1, 9)), ("audio",), ExportOptions()), cfg))

    got = runs_while_swapping(recordings, secret, outs, one_export, EXPORTS, BUDGET)
    done = got.runs
    assert not got.leaked, f"the secret reached the stick in {done} export(s): {got.leaked}"
    # the race ran: the paths were swapped during the exports, and files appeared meanwhile
    assert got.swaps > 100 and got.seen > 8 * done, (got.swaps, got.seen)
    for f in outs.rglob("*.wav"):
        assert f.read_bytes() in real, f"{f} is not a recording"
    # a recording met as a symlink fails that session (sent again by the next export), it is never a success
    assert any(r.ok for r in results), results
