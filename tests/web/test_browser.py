"""End to end: the daemon (`run --demo`) serving the page, driven by a real headless Chromium."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import urlencode

import pytest

from steno_exportd import demo
from tests.parts import sha256sum_check, wait_for
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
    import zipfile
    zipfile.ZipFile(zpath).extractall(tmp / "unzipped")
    assert not sha256sum_check(tmp / "unzipped" / "SilentSteno")
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
    sid = re.search(r"/sessions/([^/?#]+)", href).group(1)             # (its uuid, as the list names it)
    status = page.evaluate("""async ([sid, target]) => {
        const csrf = document.querySelector('meta[name=csrf]').content;
        const r = await fetch('/api/v1/exports', {method: 'POST', headers: {'X-CSRF-Token': csrf,
            'Content-Type': 'application/json'}, body: JSON.stringify({sessions: [sid],
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
    assert not sha256sum_check(nas)


def test_a_search_result_opens_the_meeting_at_its_second(daemon, chromium_page):
    """A word said in one meeting only, typed without its accents on the search page: one meeting
    found, and its result opens that meeting with the line marked and the player at that second."""
    url, tmp = daemon
    page = chromium_page
    login(page, url)
    meeting, word, starts = word_said_in_one_meeting(tmp / "library" / demo.DB_NAME)
    typed = unaccented(word).lower()
    page.click("nav a[href='/search']")
    page.fill("input[name=q]", typed)
    page.click("form.search button[type=submit]")
    page.wait_for_url("**/search?q=*")

    def indexed() -> bool:          # the daemon indexes the library in the background after its start
        if "still being indexed" not in page.content() and page.locator("ul.hits a[href*='#t=']").count():
            return True
        page.goto(url + "/search?" + urlencode({"q": typed}))
        return False
    wait_for(indexed, 30, interval=0.5, what=f"{typed!r} found in a transcript")
    assert "1 meeting found" in page.content()
    assert page.locator("ul.hits mark").first.inner_text().casefold() == word.casefold()
    link = page.locator("ul.hits a[href*='#t=']").first
    href = link.get_attribute("href")
    assert href.startswith(f"/sessions/{meeting}#t=")
    seconds = float(href.split("#t=")[1])
    assert any(abs(seconds - s) < 0.001 for s in starts), (seconds, starts)
    link.click()
    page.wait_for_selector(".transcript li.current")
    assert page.locator(".transcript li.current").count() == 1
    start = float(page.locator(".transcript li.current button.seg").get_attribute("data-start"))
    assert abs(start - seconds) < 0.001, (start, seconds)
    assert word.casefold() in page.locator(".transcript li.current .text").inner_text().casefold()
    page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {seconds}) < 0.5",
                           timeout=10000)


def word_said_in_one_meeting(db: Path) -> tuple[str, str, list[float]]:
    """(session uuid: what the search's links name it by, word, starts of its lines): a word of a meeting with a
    recording that no other text of the library holds (titles, summaries, people...); a Latin-script one, accented
    if there is one."""
    from steno_exportd.library import Library
    with Library(db) as lib:
        sessions = [lib.get_session(s.id) for s in lib.list_sessions()]
    where: dict[str, set[int]] = {}
    for s in sessions:
        texts = [s.title, s.summary_text, s.description, s.meeting_platform, s.summary.location, *s.summary.tags,
                 *s.topics, *(f"{a.text} {a.owner}" for a in s.action_items),
                 *(f"{p.name} {p.role} {p.organization}" for p in s.participants),
                 *(f"{g.speaker_name} {g.text}" for g in s.segments)]
        for w in re.findall(r"\w+", " ".join(t or "" for t in texts)):
            where.setdefault(unaccented(w).casefold(), set()).add(s.id)    # as the index folds it
    own = [(not w.isascii(), len(w), w, s) for s in sessions if s.audio for g in s.segments
           for w in re.findall(r"\w+", g.text)
           if where[unaccented(w).casefold()] == {s.id} and len(w) >= 4 and w.isalpha() and unaccented(w).isascii()]
    assert own, "the demo library has no word said in one meeting only"
    *_, word, s = max(own, key=lambda x: x[:3])
    return s.uuid, word, [g.start for g in s.segments if word.casefold() in re.findall(r"\w+", g.text.casefold())]


def unaccented(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
