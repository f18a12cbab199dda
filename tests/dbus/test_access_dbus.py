"""The touchscreen's side of web access, against the real daemon on a real dbus-daemon, with its web page driven
by a real headless Chromium: StartPairing's code typed into one browser logs that browser in and no other;
ListPairedBrowsers / RevokeBrowser (at once); SetWebPassword then a login with it; callers outside steno-ui
refused; `steno-exportctl pair` and `status` (an open LAN is said on the first line)."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.dbus.test_policy import accounts  # noqa: F401 - the fixture: steno-ui, a UI user and another user
from tests.parts.daemon import REPO, make_library, require_core, write_config
from tests.parts.dbus import PrivateBus
from tests.parts.chromium import chromium_page  # noqa: F401
from tests.web.helpers import free_port

SITE = next(p for p in sys.path if p.endswith("site-packages"))


@pytest.fixture
def shared_bus():
    """A private bus whose socket other users can reach (the refused caller runs as another user)."""
    d = Path(tempfile.mkdtemp(prefix="steno-access-", dir="/tmp"))
    d.chmod(0o755)
    bus = PrivateBus(d)
    try:
        yield bus.address
    finally:
        bus.stop()
        shutil.rmtree(d, ignore_errors=True)


def start(tmp_path, bus, daemon_factory, **extra):
    require_core()
    make_library(tmp_path, sessions=4)
    (tmp_path / "exports").mkdir(exist_ok=True)
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", tmp_path, bus, **{
        "http.enabled": "true", "http.bind": '["127.0.0.1"]', "http.port": str(port), **extra})
    d = daemon_factory(cfg)
    d.wait_ready(timeout=30)
    return f"http://127.0.0.1:{port}", d


def ctl(bus: str, *args: str, user: str | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    """steno-exportctl against the bus; as another user through setpriv (with the system's python)."""
    cmd = [sys.executable, "-m", "steno_exportd.exportctl", "--bus", bus, *args]
    env = dict(os.environ)
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups",
               "/usr/bin/python3", *cmd[1:]]
        env = {"PYTHONPATH": f"{REPO}:{SITE}", "PATH": "/usr/bin:/bin", "HOME": "/"}
    return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=60, env=env, cwd="/")


def titles(tmp_path) -> list[str]:
    from steno_exportd.library import Library
    lib = Library(tmp_path / "library" / "silent_steno.db")
    try:
        return [s.title for s in lib.list_sessions()]
    finally:
        lib.close()


def test_pairing_from_dbus_logs_in_one_chromium_and_revoking_ends_it(tmp_path, shared_bus, daemon_factory,
                                                                       chromium_page):
    url, d = start(tmp_path, shared_bus, daemon_factory)
    title = titles(tmp_path)[0]
    page = chromium_page
    page.context.clear_cookies()
    page.goto(url + "/")
    assert "/login" in page.url and page.locator("#code").count() == 1 and page.locator("#password").count() == 0
    assert title not in page.content()
    r = ctl(shared_bus, "pair", "--json")
    assert r.returncode == 0, r.stderr
    offer = json.loads(r.stdout)
    assert offer["url"] == f"{url}/pair?code={offer['code'].replace('-', '')}" and 60 < offer["seconds"] <= 300
    page.fill("#code", offer["code"])
    page.click("#pair-form button[type=submit]")
    page.wait_for_url(url + "/")
    assert title in page.content()
    other = page.context.browser.new_context()             # another browser: still outside, the code is used up
    try:
        p2 = other.new_page()
        p2.goto(offer["url"])                              # the QR code's URL: the code is filled in
        assert p2.input_value("#code") == offer["code"].replace("-", "")
        p2.click("#pair-form button[type=submit]")
        assert "wrong, used or expired" in p2.content()
        p2.goto(url + "/")
        assert "/login" in p2.url and title not in p2.content()
    finally:
        other.close()
    r = ctl(shared_bus, "browsers", "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert [(b["kind"], b["address"]) for b in found] == [("pairing", "127.0.0.1")]
    assert "Chrome" in found[0]["agent"]
    r = ctl(shared_bus, "browsers")
    assert r.returncode == 0 and r.stdout.startswith(f"{found[0]['id']}  pairing   127.0.0.1"), r.stdout
    r = ctl(shared_bus, "revoke-browser", found[0]["id"])
    assert r.returncode == 0, r.stderr
    page.goto(url + "/")                                    # at once: the next request is outside
    assert "/login" in page.url and title not in page.content()
    assert ctl(shared_bus, "revoke-browser", found[0]["id"]).returncode == 4     # gone: NotFound


def test_set_web_password_over_dbus_then_login_and_outsiders_refused(tmp_path, shared_bus, daemon_factory,
                                                                      accounts, chromium_page):  # noqa: F811
    url, d = start(tmp_path, shared_bus, daemon_factory)
    title = titles(tmp_path)[0]
    for args, stdin in ((["pair"], ""), (["web-password"], "an outsider's pw\n"), (["browsers"], ""),
                        (["samba-password"], "an outsider's pw\n")):
        r = ctl(shared_bus, *args, user=accounts["other"], stdin=stdin)
        assert r.returncode == 5 and "only root or members of the group steno-ui" in r.stderr, (args, r.stderr)
    r = ctl(shared_bus, "web-password", user=accounts["ui"], stdin="from the touchscreen\n")   # the UI user may
    assert r.returncode == 0, r.stderr
    r = ctl(shared_bus, "web-password", stdin="short\n")
    assert r.returncode == 2 and "8 to 1024" in r.stderr
    page = chromium_page
    page.context.clear_cookies()
    page.goto(url + "/")
    page.fill("#password", "an outsider's pw")
    page.click("#login-form button[type=submit]")
    assert "Wrong password" in page.content()
    page.fill("#password", "from the touchscreen")
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url + "/")
    assert title in page.content()
    assert "refused to" in d.log() and "Traceback" not in d.log()


def test_status_says_an_open_lan_on_its_first_line(tmp_path, shared_bus, daemon_factory):
    url, d = start(tmp_path, shared_bus, daemon_factory, **{"http.bind": '["0.0.0.0"]',
                                                             "http.auth.mode": '"none"',
                                                             "http.auth.allow_open_lan": "true"})
    r = ctl(shared_bus, "status")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("WARNING") and "OPEN TO THE LAN" in first and "allow_open_lan" in first
    r = ctl(shared_bus, "pair")
    assert r.returncode == 1 and "nothing to pair" in r.stderr


def test_status_of_a_closed_page_names_how_it_is_protected(tmp_path, shared_bus, daemon_factory):
    url, d = start(tmp_path, shared_bus, daemon_factory)
    r = ctl(shared_bus, "status")
    assert r.returncode == 0, r.stderr
    assert not r.stdout.startswith("WARNING")
    assert "web access:  paired browsers only (no web password set yet)" in r.stdout
