"""The real daemon as a subprocess: sdnotify, signals, reload, and the D-Bus API end to end."""
from __future__ import annotations

import signal
import sqlite3
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


def test_a_reload_that_cannot_write_the_state_db_keeps_the_daemon_running(tmp_path, private_bus, daemon_factory):
    """SIGHUP while another writer holds the daemon's state DB past its 10 s busy timeout (so too a full disk):
    the reload fails, says so in STATUS= and one log line, and the daemon runs on. Before, the reload task raised
    sqlite3.OperationalError and the daemon stopped itself (exit 1), with every job under way."""
    path = write_config(tmp_path / "c.toml", tmp_path, private_bus)
    d = daemon_factory(path)
    d.wait_ready()
    holder = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")       # the write lock, as another writer holds it
        n = len(d.notify.messages)
        d.signal(signal.SIGHUP)
        st = d.notify.wait("READY", "1", timeout=60, since=n, proc=d)
        assert "reload failed: OperationalError: database is locked" in st["STATUS"], st
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert "reload failed, the daemon runs on: OperationalError: database is locked" in d.log()
    assert "Traceback" not in d.log()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(10) == 0


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


def test_sigterm_while_a_pdf_renders_exits_at_once_and_cleanly(tmp_path, private_bus, daemon_factory):
    """SIGTERM while a long PDF renders in the worker process: the render is stopped (the worker killed),
    the daemon exits 0 within its stop budget, and the interpreter's exit prints nothing (issue 15)."""
    from tests.daemon.test_daemon_systemd import _render_cpu_seconds
    from tests.recorder_db import RecorderDB

    rec = RecorderDB(tmp_path / "library")
    try:
        with rec.conn:
            rec.conn.execute("BEGIN")
            sid = rec.session()
            for i in range(40_000):
                rec.entry(sid, i * 2.0, i * 2.0 + 1.5, f"sentence {i}: what was said about the budget and the plan")
    finally:
        rec.close()
    (tmp_path / "exports").mkdir()
    d = daemon_factory(write_config(tmp_path / "c.toml", tmp_path, private_bus))
    d.wait_ready()
    r = subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", private_bus, "export",
                        "--to", str(tmp_path / "exports"), "--sessions", str(sid), "--formats", "pdf"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 60
    while _render_cpu_seconds(d.proc.pid) < 1.5:
        assert time.monotonic() < deadline, "the PDF never rendered"
        time.sleep(0.1)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    took = time.monotonic() - t0
    log = d.log()
    assert took < 5, f"SIGTERM to exit took {took:.1f} s while a PDF rendered"
    assert log.rstrip().endswith("INFO steno_exportd.daemon: stopped"), log[-2000:]
    assert "Exception ignored" not in log and "Traceback" not in log, log[-2000:]
    assert not list((tmp_path / "exports").rglob("*.pdf")), "a PDF under its final name"
