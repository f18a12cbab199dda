"""tests/parts/udev.py: a system bus the tests started is stopped with its socket removed (dbus-daemon leaves it, and
the next program to look, a demo after CI, got 'connection refused' from a bus that was gone)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.parts import require_root, require_tool

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import os
from tests.parts import udev
assert not udev.system_bus_running()
bus = udev.start_system_bus()
assert bus is not None and udev.system_bus_running()
udev.stop_system_bus(bus)
print("left:", sorted(os.listdir("/run/dbus")), "answers:", udev.system_bus_running())
"""


def test_a_system_bus_the_tests_started_is_stopped_and_leaves_no_socket():
    require_root()
    require_tool("unshare", "dbus-daemon")
    # a mount namespace of its own, with an empty /run/dbus: the machine's bus (or a session fixture's) unseen
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs none /run/dbus && exec {sys.executable} -c '{SCRIPT}'"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "left: [] answers: False", r.stdout
