"""Every page of the web app, filled in as a user would see it: the daemon (`run --demo`), a login, an export
(history, a job), share links (one with a PIN); used by tests/web/test_phone.py and by
packaging/screenshots.py (the pictures in docs/screenshots/)."""
from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path

from steno_exportd import demo
from tests.parts import wait_for
from tests.web.helpers import PASSWORD

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 900}
SIZES = {"phone": PHONE, "laptop": LAPTOP}
CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
AXE = Path("/opt/steno-test-js/node_modules/axe-core/axe.min.js")    # packaging/install-test-deps.sh


@dataclasses.dataclass(frozen=True)
class Tour:
    url: str
    tmp: Path
    member: dict[str, str]          # page name -> path, for a logged-in user
    guest: dict[str, str]           # page name -> path, for a browser that is not logged in
    share_url: str                  # the full URL the session page shows for the share link
    share_path: str
    session_id: int


def log_in(page, url: str) -> None:
    page.goto(url + "/")
    if "/login" in page.url:
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
    page.wait_for_url(url + "/")


def longest_meeting(db: Path) -> int:
    """The id of the meeting with the most transcript lines (and a recording)."""
    from steno_exportd.library import Library
    with Library(db) as lib:
        sessions = [lib.get_session(s.id) for s in lib.list_sessions()]
    return max((s for s in sessions if s.audio), key=lambda s: len(s.segments)).id


@contextlib.contextmanager
def tour(browser, tmp: Path):
    """The daemon with every page holding something; yields a Tour (the daemon stops afterwards)."""
    from tests.web.test_browser import run_daemon
    with run_daemon(tmp) as (url, _):
        ctx = browser.new_context(viewport=LAPTOP)
        try:
            page = ctx.new_page()
            log_in(page, url)
            sid = longest_meeting(tmp / "library" / demo.DB_NAME)
            page.goto(f"{url}/sessions/{sid}")
            status = page.evaluate("""async ([sid, target]) => {
                const csrf = document.querySelector('meta[name=csrf]').content;
                const r = await fetch('/api/v1/exports', {method: 'POST', headers: {'X-CSRF-Token': csrf,
                    'Content-Type': 'application/json'}, body: JSON.stringify({sessions: [sid],
                    formats: ['txt', 'md'], target: target})});
                return r.status; }""", [sid, str(tmp / "exports")])
            assert status == 202, status
            page.fill("input[name=pin]", "482913")
            page.click("form[action$='/share'] button[type=submit]")
            page.wait_for_selector("ul.links li")
            page.fill("input[name=max_downloads]", "3")
            page.click("form[action$='/share'] button[type=submit]")
            wait_for(lambda: page.locator("ul.links li").count() == 2, 10, what="two share links")
            newest = page.locator("ul.links li").first
            share_path = newest.locator("a[href^='/s/']").get_attribute("href")
            share_url = newest.locator(".full-url").inner_text()
            pin_path = page.locator("ul.links li").nth(1).locator("a[href^='/s/']").get_attribute("href")
            page.goto(url + "/devices")
            wait_for(lambda: "completed" in page.locator("#jobs").inner_text()
                     or bool(page.reload()), 60, interval=1, what="the export job completed")
            word = re.findall(r"[^\W\d_]{5,}", page.evaluate(
                f"fetch('/api/v1/sessions/{sid}').then(r => r.json()).then(j => j.segments[0].text)"))[0]
        finally:
            ctx.close()
        yield Tour(url, tmp,
                   member={"meetings": "/", "search": "/search?q=" + word, "meeting": f"/sessions/{sid}",
                           "devices": "/devices", "history": "/history", "not-found": "/sessions/999999"},
                   guest={"login": "/login", "share": share_path, "share-pin": pin_path},
                   share_url=share_url, share_path=share_path, session_id=sid)


def pages(browser, t: Tour, size: str, scheme: str):
    """(name, page) for every page at one size and colour scheme, each loaded and settled."""
    for who, paths in (("member", t.member), ("guest", t.guest)):
        ctx = browser.new_context(viewport=SIZES[size], color_scheme=scheme)
        try:
            page = ctx.new_page()
            if who == "member":
                log_in(page, t.url)
            for name, path in paths.items():
                page.goto(t.url + path)
                page.wait_for_load_state("networkidle")
                yield name, page
        finally:
            ctx.close()
