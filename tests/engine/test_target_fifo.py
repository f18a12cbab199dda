"""A FIFO on a stick under a name we read (SHA256SUMS, a manifest, a file of ours) never hangs a read of the stick:
the open of a FIFO waits for a writer, in a thread no cancel reaches. A plain folder (no mount, no lock)."""
from __future__ import annotations

import os
import threading

import pytest

from steno_exportd.engine.naming import ROOT_FALLBACK
from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.engine.verify import verify_target
from steno_exportd.errors import TargetError


def test_open_read_refuses_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "audio.wav")
    holder = os.open(tmp_path / "audio.wav", os.O_RDWR | os.O_NONBLOCK)   # the old code's open returns, not hangs
    try:
        for uncached in (False, True):
            with pytest.raises(TargetError, match="not a file: audio.wav"):
                DirectoryTarget(tmp_path).open_read("audio.wav", uncached=uncached)
    finally:
        os.close(holder)


def test_a_verify_of_a_stick_whose_sha256sums_is_a_fifo_ends_and_says_so(tmp_path):
    root = tmp_path / ROOT_FALLBACK
    root.mkdir()
    os.mkfifo(root / "SHA256SUMS")
    out: list = []
    t = threading.Thread(target=lambda: out.append(verify_target(DirectoryTarget(tmp_path))), daemon=True)
    t.start()
    t.join(30)                                  # a bound for a hang, not a timing: it ends at once
    hung = t.is_alive()
    if hung:                                    # the old code: blocked in the FIFO's open; a writer frees it
        os.close(os.open(root / "SHA256SUMS", os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
    assert not hung, "the verify hung opening the FIFO named SHA256SUMS"
    assert any("SHA256SUMS" in p and "not a file" in p for p in out[0].problems), out[0].problems
