"""Headless Chromium through Playwright (system chromium; never `playwright install`)."""
from __future__ import annotations

import os

import pytest

from tests.parts import require

CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def chromium_page():
    """A Playwright page in the system's headless Chromium."""
    exe = next((p for p in CANDIDATES if os.path.exists(p)), None)
    require(exe is not None, "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright Python package")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            yield page
        finally:
            browser.close()
