"""Screenshots of the web page for docs/: list, session and progress pages, phone and desktop widths.

Run from the repo with the venv: .venv/bin/python packaging/screenshots.py (needs Debian's chromium).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steno_exportd import demo  # noqa: E402

SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


def main() -> int:
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        demo.generate(t / "lib", sessions=12, seed=1)
        (t / "exports").mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (t / "c.toml").write_text(f"""[recorder]\ndb_path = "{t / 'lib' / demo.DB_NAME}"
[state]\ndir = "{t / 'state'}"\nruntime_dir = "{t / 'run'}"
[export]\nallowed_dirs = ["{t / 'exports'}"]
[usb]\nenabled = false
[http]\nbind = ["127.0.0.1"]\nport = {port}
[dbus]\nbus = "session"
""")
        env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
        p = subprocess.Popen([sys.executable, "-m", "steno_exportd", "--config", str(t / "c.toml"), "run", "--demo"],
                             env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(url + "/api/v1/status", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                for kind, (w, h) in SIZES.items():
                    page = browser.new_page(viewport={"width": w, "height": h})
                    page.goto(url + "/")
                    page.screenshot(path=str(REPO / "docs" / f"web-list-{kind}.png"))
                    page.goto(url + "/sessions/3")
                    page.locator("button.seg").nth(2).click()
                    page.screenshot(path=str(REPO / "docs" / f"web-session-{kind}.png"))
                    page.goto(url + "/devices")
                    page.wait_for_function("() => document.getElementById('live').textContent === 'Live.'")
                    page.evaluate("""async (target) => {
                        const csrf = document.querySelector('meta[name=csrf]').content;
                        await fetch('/api/v1/exports', {method: 'POST', headers: {'X-CSRF-Token': csrf,
                          'Content-Type': 'application/json'}, body: JSON.stringify({sessions: 'all',
                          formats: ['pdf', 'docx', 'audio'], target: target})}); }""",
                                  str(t / "exports" / kind))if (t / "exports" / kind).mkdir() is None else None
                    page.wait_for_function("() => [...document.querySelectorAll('#jobs progress')]"
                                           ".some(p => p.value > 0 && p.value < 1)", timeout=60000)
                    page.screenshot(path=str(REPO / "docs" / f"web-progress-{kind}.png"))
                    page.wait_for_function("() => [...document.querySelectorAll('#jobs td.state')]"
                                           ".every(td => !td.textContent.startsWith('running'))", timeout=120000)
                    page.close()
                browser.close()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    print(json.dumps(sorted(str(x.name) for x in (REPO / "docs").glob("web-*.png"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
