"""Screenshots of every page of the web app for docs/screenshots/: phone (390x844) and laptop (1366x900),
the two main pages in dark mode too. The pages are those the layout tests check (tests/web/tour.py).

Run from the repo with the venv: .venv/bin/python packaging/screenshots.py [FOLDER]  (needs Debian's chromium)
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.web import tour as T  # noqa: E402

DARK = ("meetings", "meeting")        # dark mode on the two main pages: the folder stays small


def main(out: Path) -> int:
    from playwright.sync_api import sync_playwright
    out.mkdir(parents=True, exist_ok=True)
    exe = next(p for p in T.CHROMIUM if os.path.exists(p))
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu",
                                                                "--disable-dev-shm-usage"])
        try:
            with T.tour(browser, Path(tmp)) as t:
                for size in T.SIZES:
                    for scheme in ("light", "dark"):
                        for name, page in T.pages(browser, t, size, scheme):
                            if scheme == "dark" and name not in DARK:
                                continue
                            png = out / f"{name}-{size}{'-dark' if scheme == 'dark' else ''}.png"
                            png.write_bytes(page.screenshot())
                            print(png.relative_to(REPO) if png.is_relative_to(REPO) else png)
                    ctx = browser.new_context(viewport=T.SIZES[size])       # the sharing part of a meeting
                    try:
                        page = ctx.new_page()
                        T.log_in(page, t.url)
                        page.goto(f"{t.url}/sessions/{t.session_id}")
                        page.locator("ul.links li").first.locator("details.qr-box summary").click()
                        page.locator("#share").scroll_into_view_if_needed()
                        page.evaluate("document.getElementById('share').scrollIntoView()")
                        png = out / f"meeting-sharing-{size}.png"
                        png.write_bytes(page.screenshot())
                        print(png.relative_to(REPO) if png.is_relative_to(REPO) else png)
                    finally:
                        ctx.close()
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"))
