"""Root fixtures: the real parts every test folder may use (udev, D-Bus, udisks2, smbd, avahi,
systemd, Chromium, loop filesystems, the daemon as a process), demo libraries, and the guard
every test runs under."""
import pytest

from tests.recorder_db import DemoLibraries

pytest_plugins = [      # a module another one imports comes first (assertion rewriting)
    "tests.parts.udev",
    "tests.parts.dbus",
    "tests.parts.smbd",
    "tests.parts.rclone",
    "tests.parts.daemon",
    "tests.parts.systemd",
    "tests.parts.loopfs",
    "tests.parts.chromium",
    "tests.parts.avahi",
    "tests.parts.smtp",
    "tests.parts.netns",
    "tests.default_threads",    # default_threads: what ran in the loop's default executor (opt-in, per test)
    "tests.guard",      # the autouse guard: a blocked event loop, leaked threads/mounts/loops/children
    "pytester",         # tests/test_guard.py runs tests that break the rules in a pytest of their own
]


@pytest.fixture(scope="session")
def demo_library(tmp_path_factory):
    """demo_library(dst, sessions=4, seed=6, small=True) -> the database path of a demo library
    copied to dst (a test may change its copy). Each kind is generated once per run; the first
    call of a kind takes up to a second, so async code calls it through asyncio.to_thread."""
    return DemoLibraries(tmp_path_factory.mktemp("demo-libraries")).copy

