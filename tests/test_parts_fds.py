"""tests/parts/fds.py: sockets numbered above 1024 where the open-file limits allow it, and a clear failure (in CI)
naming the limits where they do not."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import socket, sys
from tests.parts.fds import above_1024
try:
    with above_1024():
        with socket.socket() as s:
            print("socket", s.fileno())
except BaseException as e:
    print(type(e).__name__, e)
"""


def _held_under(soft: int, hard: int, ci: str = "true") -> str:
    """What above_1024() does in a process whose open-file limits are ``soft`` and ``hard``."""
    env = {**os.environ, "CI": ci}
    r = subprocess.run([sys.executable, "-c", HOLD], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_soft_limit_below_what_it_needs_is_raised_when_the_hard_limit_allows():
    out = _held_under(1024, 1500)
    assert out.startswith("socket ") and int(out.split()[1]) >= 1024, out


def test_a_hard_limit_too_low_fails_in_ci_naming_the_limits():
    out = _held_under(1000, 1000)
    assert out.startswith("Failed needs an open-file limit of at least "), out
    assert "RLIMIT_NOFILE is soft 1000, hard 1000" in out and "ulimit -Hn" in out, out


def test_a_hard_limit_too_low_skips_outside_ci():
    out = _held_under(1000, 1000, ci="")
    assert out.startswith("Skipped needs an open-file limit of at least "), out
