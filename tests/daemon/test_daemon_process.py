"""The real daemon as a subprocess: sdnotify, signals, reload, and the D-Bus API end to end."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.parts.daemon import write_config


def test_bad_config_exits_1_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[dbus]\nbuss = 'session'\n")
    r = subprocess.run([sys.executable, "-m", "steno_exportd", "--config", str(cfg), "run"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "dbus.buss: unknown key (did you mean 'bus'?)" in r.stderr


def test_ready_status_watchdog_then_sigterm_exits_0(tmp_path, private_bus, daemon_factory):
    cfg = write_config(tmp_path / "c.toml", tmp_path, private_bus)
    d = daemon_factory(cfg, watchdog_usec=400_000)
    ready = d.wait_ready()
    assert ready.get("STATUS"), ready
    n = len(d.notify.messages)
    d.notify.wait("WATCHDOG", "1", timeout=2, since=n)
    time.sleep(0.5)
    pings = d.notify.seen("WATCHDOG", "1", since=n)
    assert 2 <= len(pings) <= 6, f"{len(pings)} watchdog pings in ~0.5 s at 0.2 s interval"
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(5) == 0
    assert time.monotonic() - t0 < 5
    assert d.notify.seen("STOPPING", "1")


def test_sigint_exits_0(tmp_path, private_bus, daemon_factory):
    d = daemon_factory(write_config(tmp_path / "c.toml", tmp_path, private_bus))
    d.wait_ready()
    d.signal(signal.SIGINT)
    assert d.wait_exit(5) == 0


def test_sighup_good_and_bad_config(tmp_path, private_bus, daemon_factory):
    path = write_config(tmp_path / "c.toml", tmp_path, private_bus)
    d = daemon_factory(path)
    d.wait_ready()
    # A bad config: rejected, logged, shown in STATUS=, the daemon keeps running.
    path.write_text(path.read_text() + "\n[logging]\nlevel = 'LOUD'\n")
    n = len(d.notify.messages)
    d.signal(signal.SIGHUP)
    d.notify.wait("RELOADING", "1", since=n, proc=d)
    st = d.notify.wait("READY", "1", since=n, proc=d)
    assert "reload failed" in st["STATUS"] and "logging.level" in st["STATUS"], st
    assert d.proc.poll() is None
    assert "reload rejected, keeping the old config" in d.log()
    # A good config: applied (DEBUG logging now), the error leaves STATUS=.
    path.write_text(path.read_text().replace("'LOUD'", "'DEBUG'"))
    n = len(d.notify.messages)
    d.signal(signal.SIGHUP)
    st = d.notify.wait("READY", "1", since=n, proc=d)
    assert "reload failed" not in st["STATUS"], st
    assert "configuration reloaded" in d.log()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(5) == 0


def test_a_full_notify_socket_never_stalls_the_daemon(tmp_path, private_bus, daemon_factory):
    """systemd's notify queue holds 10 datagrams: with nobody reading it (a busy PID 1, here a test
    that stops draining), watchdog pings are dropped and D-Bus calls still answer at once."""
    cfg = write_config(tmp_path / "c.toml", tmp_path, private_bus)
    d = daemon_factory(cfg, watchdog_usec=200_000)
    d.wait_ready()
    time.sleep(2.5)                          # ~25 pings at 0.1 s: the queue is full long before
    for _ in range(2):                       # a reload sends RELOADING=1 and READY=1 into the full queue
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", private_bus, "reload"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 < 8, "the daemon's event loop stalled on sd_notify"
    assert "the notify socket is full" in d.log()
    d.notify.drain()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(5) == 0


def test_exit_after_a_pdf_export_prints_no_ignored_exception(tmp_path, private_bus, daemon_factory):
    """The render worker pool is shut down on the way out: Python printed "Exception ignored in ...
    weakref_cb" at exit when it was left to the interpreter's own clean-up."""
    from tests.parts.daemon import make_library
    make_library(tmp_path, sessions=2)
    (tmp_path / "exports").mkdir()
    d = daemon_factory(write_config(tmp_path / "c.toml", tmp_path, private_bus))
    d.wait_ready()
    r = subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", private_bus, "export",
                        "--to", str(tmp_path / "exports"), "--sessions", "1", "--formats", "pdf", "--wait"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list((tmp_path / "exports").rglob("*.pdf")), "the PDF was rendered in the worker process"
    d.signal(signal.SIGTERM)
    assert d.wait_exit(10) == 0
    log = d.log()
    assert "stopped" in log
    assert "Exception ignored" not in log and "Traceback" not in log, log
