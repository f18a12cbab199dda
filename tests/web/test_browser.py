"""End to end: the daemon (`run --demo`) serving the page, driven by a real headless Chromium."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from steno_exportd import demo
from tests.parts import wait_for
from tests.web.helpers import PASSWORD, PASSWORD_HASH

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_daemon(tmp_path: Path, extra_toml: str = ""):
    """`run --demo` on a demo library with password login; yields (url, tmp_path); stopped with SIGTERM."""
    lib = tmp_path / "library"
    demo.generate(lib, sessions=7, seed=5)
    (tmp_path / "exports").mkdir()
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[recorder]
db_path = "{lib / demo.DB_NAME}"
[state]
dir = "{tmp_path / 'state'}"
runtime_dir = "{tmp_path / 'run'}"
[export]
allowed_dirs = ["{tmp_path / 'exports'}"]
[usb]
enabled = false
[http]
bind = ["127.0.0.1"]
port = {port}
[http.auth]
mode = "password"
password_hash = "{PASSWORD_HASH}"
[dbus]
bus = "session"
{extra_toml}""")
    out = tmp_path / "daemon.out"
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    with open(out, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "steno_exportd", "--config", str(cfg), "run", "--demo"],
                             stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_for(lambda: "web page:" in out.read_text() or p.poll() is not None, 30, what="the web page")
        assert p.poll() is None, out.read_text()
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0, out.read_text()


@pytest.fixture
def daemon(tmp_path):
    with run_daemon(tmp_path) as d:
        yield d


def login(page, url: str) -> None:
    page.goto(url + "/")
    if "/login" in page.url:
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
    page.wait_for_url(url + "/")


def test_login_seek_on_click_and_live_job_progress(daemon, chromium_page):
    url, tmp = daemon
    page = chromium_page
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    assert "/login" in page.url
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")
    page.fill("input[name=q]", "roadmap")
    page.click("form.search button[type=submit]")
    page.wait_for_url("**/?q=roadmap*")
    assert page.locator("table.list tbody tr").count() == 1
    link = page.locator("table.list a[href^='/sessions/']").first
    href = link.get_attribute("href")
    link.click()
    page.wait_for_selector("#player")
    page.wait_for_function("() => document.getElementById('player').readyState >= 1", timeout=15000)
    seg = page.locator("button.seg").nth(3)
    start = float(seg.get_attribute("data-start"))
    seg.click()
    page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {start}) < 1.5",
                           timeout=10000)
    assert page.locator(".transcript li.current").count() == 1
    # downloads: a PDF and a ZIP, as the browser saves them
    with page.expect_download() as dl:
        page.click("a[href$='/download/pdf?template=summary']")
    pdf = tmp / "dl.pdf"
    dl.value.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF") and dl.value.suggested_filename.endswith(".pdf")
    with page.expect_download() as dl:
        page.click("a[href$='/zip']")
    zpath = tmp / "dl.zip"
    dl.value.save_as(zpath)
    import subprocess
    import zipfile
    zipfile.ZipFile(zpath).extractall(tmp / "unzipped")
    r = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp / "unzipped" / "SilentSteno",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # a share link for 2 downloads, used from a fresh browser (no login) until it is used up
    page.fill("input[name=max_downloads]", "2")
    page.click("form[action$='/share'] button[type=submit]")
    share = page.locator("section[aria-labelledby=share] a[href^='/s/']").first.get_attribute("href")
    guest = page.context.browser.new_context()
    try:
        gp = guest.new_page()
        for _ in range(2):
            gp.goto(url + share)
            with gp.expect_download() as dl:
                gp.click("a[href$='/zip']")
            dl.value.path()                                   # wait for the whole file
        gp.goto(url + share)
        assert "used up" in gp.content()
    finally:
        guest.close()
    # devices and jobs: an export started from the API shows up and completes, live (SSE)
    page.goto(url + "/devices")
    page.wait_for_function("() => document.getElementById('live').textContent === 'Live.'", timeout=10000)
    sid = re.search(r"/sessions/(\d+)", href).group(1)
    status = page.evaluate("""async ([sid, target]) => {
        const csrf = document.querySelector('meta[name=csrf]').content;
        const r = await fetch('/api/v1/exports', {method: 'POST', headers: {'X-CSRF-Token': csrf,
            'Content-Type': 'application/json'}, body: JSON.stringify({sessions: [Number(sid)],
            formats: ['txt', 'pdf'], target: target})});
        return r.status; }""", [sid, str(tmp / "exports")])
    assert status == 202
    page.wait_for_function("() => [...document.querySelectorAll('#jobs td.state')].some(td => "
                           "td.textContent.startsWith('completed'))", timeout=60000)
    assert page.locator("#jobs progress").first.get_attribute("value") in ("1", "1.0")
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_send_selected_to_office_and_watch_the_push_complete(office, tmp_path, chromium_page):
    smbd, remote, root, _ = office
    extra = f"""[smb]
recorder_folder = "rec-browser"
[[smb.remotes]]
name = "office"
server = "127.0.0.1"
port = {remote.port}
share = "{remote.share}"
username = "{remote.username}"
password_file = "{remote.password_file}"
formats = ["txt", "json"]
timeout = 5
"""
    page = chromium_page
    with run_daemon(tmp_path, extra) as (url, _):
        login(page, url)
        send = page.locator("#selection button[data-push]")
        send.click()                                        # nothing ticked: said so, nothing sent
        assert "Select at least one meeting" in page.locator("#push-msg").inner_text()
        boxes = page.locator("#selection input[name=id]")
        boxes.nth(0).check()
        boxes.nth(1).check()
        page.evaluate("() => { const b = document.querySelector('button[data-push=office]');"
                      " b.dataset.push = 'nas2'; }")         # a remote gone from the config meanwhile
        send.click()
        page.wait_for_function("() => document.getElementById('push-msg').textContent.includes('nas2')")
        assert page.locator("#push-msg").inner_text() == \
            "Could not send to nas2: no SMB remote 'nas2' (known: office)"
        assert page.url == url + "/"
        page.evaluate("() => { document.querySelector('button[data-push=nas2]').dataset.push = 'office'; }")
        send.click()
        page.wait_for_url(url + "/devices")
        page.wait_for_function("() => [...document.querySelectorAll('#jobs tr')].some(tr => "
                               "tr.textContent.includes('smb:office') && "
                               "tr.querySelector('td.state')?.textContent === 'completed')", timeout=60000)
    nas = root / "nas" / "rec-browser"
    assert len(list(nas.rglob("transcript.txt"))) == 2
    r = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=nas, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
