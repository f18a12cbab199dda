"""Every page in Chromium at phone (390×844) and laptop (1366×900) size, light and dark: nothing scrolls
sideways, axe-core (the npm package, run inside the page) finds no violation; the share link's QR code
decodes (zbar) to the full URL the page shows; a guest sees no link that leads into the private pages."""
from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit

import pytest

from tests.parts import require, require_tool, wait_for
from tests.web import tour as T

WIDE_OK = "() => document.documentElement.scrollWidth <= window.innerWidth"
# boxes whose content is cut off or scrolls sideways inside them (a table in an overflow box: its last columns
# out of sight); form controls scroll their own text and are left out
CUT_OFF = """() => [...document.querySelectorAll('main *')]
    .filter(e => !['INPUT', 'TEXTAREA', 'SELECT', 'AUDIO', 'OPTION'].includes(e.tagName))
    .filter(e => e.clientWidth > 1)                       // not text for screen readers only (.sr)
    .filter(e => getComputedStyle(e).overflowX !== 'visible' && e.scrollWidth > e.clientWidth + 1)
    .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + e.scrollWidth + ' > ' + e.clientWidth)"""


@pytest.fixture(scope="module")
def browser():
    exe = next((p for p in T.CHROMIUM if os.path.exists(p)), None)
    require(exe is not None, "chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def toured(browser, tmp_path_factory):
    with T.tour(browser, tmp_path_factory.mktemp("tour")) as t:
        yield t


def axe_violations(page) -> list[str]:
    require(T.AXE.exists(), f"axe-core at {T.AXE} (packaging/install-test-deps.sh)")
    page.evaluate(T.AXE.read_text())         # evaluated by the test, so the page's CSP does not apply
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
        .map(v => v.id + ': ' + v.help + ' — ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '))""")
    return found


@pytest.mark.parametrize("size", list(T.SIZES))
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_fits_the_screen_and_passes_axe(browser, toured, size, scheme):
    problems = []
    seen = 0
    for name, page in T.pages(browser, toured, size, scheme):
        seen += 1
        if not page.evaluate(WIDE_OK):
            wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                .slice(0, 5).map(e => e.tagName + '.' + e.className)""")
            problems.append(f"{name}: scrolls sideways ({page.evaluate('document.documentElement.scrollWidth')} > "
                            f"{page.evaluate('window.innerWidth')}) {wide}")
        problems += [f"{name}: cut off: {x}" for x in page.evaluate(CUT_OFF)]
        problems += [f"{name}: {v}" for v in axe_violations(page)]
    assert seen == len(toured.member) + len(toured.guest)
    assert not problems, "\n".join(problems)


def test_touch_targets_are_44_px_on_a_phone(browser, toured):
    """Buttons, links in the navigation and the list's checkboxes (with their label) are at least 44 px tall."""
    small = []
    for name, page in T.pages(browser, toured, "phone", "light"):
        small += [f"{name}: {x}" for x in page.evaluate("""() => [...document.querySelectorAll(
            'button, a.button, .top nav a, label.tick, input:not([type=hidden]):not([type=checkbox]), select, summary')]
            .filter(e => e.offsetParent !== null)
            .filter(e => e.getBoundingClientRect().height < 43.5)
            .map(e => e.outerHTML.slice(0, 80))""")]
    assert not small, "\n".join(small)


def test_the_qr_code_decodes_to_the_full_share_url(browser, toured, tmp_path):
    require_tool("zbarimg")
    parts = urlsplit(toured.share_url)
    assert parts.scheme == "http" and parts.path == toured.share_path and parts.hostname, toured.share_url
    ctx = browser.new_context(viewport=T.PHONE, permissions=["clipboard-read", "clipboard-write"])
    try:
        page = ctx.new_page()
        T.log_in(page, toured.url)
        page.goto(f"{toured.url}/sessions/{toured.session_id}#share")
        item = page.locator("ul.links li").first
        assert item.locator(".full-url").inner_text() == toured.share_url
        item.locator("button[data-copy]").click()                   # one tap: the link is on the clipboard
        wait_for(lambda: item.locator("button[data-copy]").inner_text() == "Copied", 5, what="'Copied'")
        assert page.evaluate("navigator.clipboard.readText()") == toured.share_url
        item.locator("details.qr-box summary").click()
        qr = item.locator("svg.qr")
        (tmp_path / "qr.png").write_bytes(qr.screenshot())    # (path=: Playwright would start a writer thread)
        state = item.locator(".link-state").inner_text()
        assert "3 of 3 downloads left" in state and "expires" in state, state
        box = item.locator(".link-state").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= T.PHONE["width"]
        revoke = item.locator("button", has_text="Revoke").bounding_box()
        assert revoke["x"] + revoke["width"] <= T.PHONE["width"], revoke
    finally:
        ctx.close()
    out = subprocess.run(["zbarimg", "--raw", "-q", str(tmp_path / "qr.png")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == toured.share_url


def test_a_guest_sees_no_private_links(browser, toured):
    """On the share page and its PIN page a browser that is not logged in finds only links it may open."""
    ctx = browser.new_context(viewport=T.PHONE)
    try:
        page = ctx.new_page()
        for name in ("share", "share-pin", "login"):
            page.goto(toured.url + toured.guest[name])
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
            private = [h for h in hrefs if not h.startswith(("/s/", "#")) and h != "/login"]
            assert not private, (name, private)
            assert page.locator("nav[aria-label=Main]").count() == 0
        page.goto(toured.url + toured.guest["share"])
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        assert any(h.startswith(toured.share_path + "/") for h in hrefs), hrefs   # its own downloads are there
    finally:
        ctx.close()


def test_select_all_ticks_every_meeting_on_the_page(browser, toured):
    ctx = browser.new_context(viewport=T.PHONE)
    try:
        page = ctx.new_page()
        T.log_in(page, toured.url)
        boxes = page.locator("#selection input[name=id]")
        assert boxes.count() > 1 and not any(boxes.nth(i).is_checked() for i in range(boxes.count()))
        page.click("#select-all")
        assert all(boxes.nth(i).is_checked() for i in range(boxes.count())) and page.url == toured.url + "/"
        assert page.locator("#select-all").inner_text() == "Select none"
    finally:
        ctx.close()


def test_long_transcript_loads_on_demand_finds_and_follows_the_timeline(browser, toured):
    """A 2-hour meeting: the page holds the first lines, the rest come as the reader scrolls; the find box
    keeps only the lines with the word (accents ignored); a turn in the timeline plays from its second with
    its line marked and in view."""
    from steno_exportd.web.pages import FIRST_LINES
    ctx = browser.new_context(viewport=T.PHONE)
    try:
        page = ctx.new_page()
        T.log_in(page, toured.url)
        page.goto(f"{toured.url}/sessions/{toured.session_id}")
        lines = page.locator("#transcript > li")
        total = int(page.locator("#transcript").get_attribute("data-total"))
        assert lines.count() == FIRST_LINES < total
        page.locator("#tr-more").scroll_into_view_if_needed()
        wait_for(lambda: lines.count() > FIRST_LINES, 10, what="more lines as the reader scrolls")
        word = page.locator("#transcript li .text").nth(3).inner_text().split()[-1].strip(".,;:!?")
        page.fill("#find", word.upper())
        wait_for(lambda: lines.count() == total, 20, what="every line loaded for find")
        wait_for(lambda: "with" in page.locator("#find-status").inner_text(), 10, what="the count")
        shown = page.eval_on_selector_all("#transcript > li:not([hidden]) .text", "els => els.map(e => e.textContent)")
        assert shown and all(word.casefold() in t.casefold() for t in shown)
        assert page.locator("#find-status").inner_text().startswith(f"{len(shown)} line")
        page.fill("#find", "")
        wait_for(lambda: page.locator("#transcript > li[hidden]").count() == 0, 10, what="all lines again")
        turn = page.locator("svg.speaker-timeline a").nth(40)
        second = float(turn.get_attribute("href").split("#t=")[1])
        turn.click(force=True)                  # a pointer user's click (the turns are left out of the tab order)
        page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {second}) < 1",
                               timeout=10000)
        current = page.locator("#transcript li.current")
        wait_for(lambda: current.count() == 1, 10, what="the line of that second marked")
        start = float(current.locator("[data-start]").get_attribute("data-start"))
        assert start <= second + 0.001
        box = current.bounding_box()
        assert 0 <= box["y"] and box["y"] + box["height"] <= T.PHONE["height"], box
    finally:
        ctx.close()
