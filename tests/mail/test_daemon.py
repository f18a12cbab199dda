"""The real daemon process: the [email] keys it documents send mail, and a mail pending across a restart
is sent after it."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

from tests.parts import wait_for
from tests.parts.daemon import make_library, write_config
from tests.parts.smtp import free_port

ADMIN = '["admin@example.org"]'


def ctl_export(bus: str, target, session: str = "1") -> None:
    r = subprocess.run([sys.executable, "-m", "steno_exportd.exportctl", "--bus", bus, "export", "--to", str(target),
                        "--sessions", session, "--formats", "txt", "--wait"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_email_keys_documented_before_send_mail_when_an_export_finishes(tmp_path, private_bus, daemon_factory,
                                                                         smtp_server):
    """The finding: with [email] enabled (only the keys that were documented then), an SMTP server got no
    connection when an export finished."""
    server = smtp_server("none", auth=False)
    make_library(tmp_path, sessions=2)
    (tmp_path / "exports").mkdir()
    cfg = write_config(tmp_path / "c.toml", tmp_path, private_bus, **{
        "email.enabled": "true", "email.smtp_host": '"127.0.0.1"', "email.smtp_port": str(server.port),
        "email.recipients": ADMIN})
    d = daemon_factory(cfg)
    d.wait_ready()
    ctl_export(private_bus, tmp_path / "exports")
    wait_for(lambda: server.received, timeout=30, what="a mail about the finished export")
    [mail] = server.received
    assert mail.rcpt_tos == ["admin@example.org"]
    assert mail.message["Subject"].startswith(f"[steno] Export to {tmp_path / 'exports'} finished: 1 session")


def test_a_mail_pending_when_the_daemon_stops_is_sent_after_the_restart(tmp_path, private_bus, daemon_factory,
                                                                          smtp_server):
    port = free_port()                       # nothing listens here until the daemon has stopped
    make_library(tmp_path, sessions=2)
    (tmp_path / "exports").mkdir()
    cfg = write_config(tmp_path / "c.toml", tmp_path, private_bus, **{
        "email.enabled": "true", "email.smtp_host": '"127.0.0.1"', "email.smtp_port": str(port),
        "email.recipients": ADMIN, "email.retry_initial_seconds": "0.3", "email.retry_max_seconds": "60.0"})
    first = daemon_factory(cfg)
    first.wait_ready()
    ctl_export(private_bus, tmp_path / "exports")
    wait_for(lambda: first.log().count("next try in") >= 2, timeout=30, what="two failed tries in the log")
    first.signal(signal.SIGTERM)
    assert first.wait_exit(10) == 0

    server = smtp_server("none", auth=False, port=port)
    second = daemon_factory(cfg)
    second.wait_ready()
    wait_for(lambda: server.received, timeout=30, what="the pending mail after the restart")
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    try:
        wait_for(lambda: db.execute("SELECT state FROM outbox").fetchall() == [("sent",)], timeout=10,
                 what="the outbox row marked sent")
        attempts = db.execute("SELECT attempts FROM outbox").fetchone()[0]
    finally:
        db.close()
    assert attempts >= 3                     # two or more refused before the stop, one after
    time.sleep(1.0)                          # an absence: a second delivery would come within the retry delay
    assert len(server.received) == 1
    assert "Export to" in server.received[0].message["Subject"]
