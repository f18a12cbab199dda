"""The .deb installed with apt in a container with a real systemd as PID 1, used as an admin and a LAN
client would use it, then purged. The tests run in file order on one container (each step builds on
the previous one, as on a real recorder)."""
from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from markupsafe import escape

from tests.packaging.conftest import VERSION, recorder_library
from tests.parts import require_tool, wait_for
from tests.parts.nspawn import Container

UI, OTHER = "stenoui1", "stenoother"
CONFIG = "/etc/steno-exportd/config.toml"


@pytest.fixture(scope="module")
def box(deb, container_factory) -> Container:
    c = container_factory("steno-pkg", "172.30.231")
    c.boot()
    recorder_library(c)
    out = c.install(deb).stdout
    assert f"Setting up steno-exportd ({VERSION})" in out, out
    c.run(f"useradd --no-create-home -s /usr/sbin/nologin -G steno-ui {UI} && "
          f"useradd --no-create-home -s /usr/sbin/nologin {OTHER}")
    return c


def _active(c: Container) -> dict[str, str]:
    return c.show("steno-exportd.service", "ActiveState", "SubState", "StatusText", "MainPID", "Type",
                  "NRestarts", "UnitFileState", "User")


def test_installed_service_is_enabled_active_and_sent_ready(box):
    # Type=notify: "active (running)" only after the daemon sent READY=1; STATUS= is its own text.
    try:
        st = wait_for(lambda: (s := _active(box))["ActiveState"] == "active" and s, timeout=60, interval=0.5,
                      what="steno-exportd to become active")
    except pytest.fail.Exception:
        pytest.fail(f"steno-exportd did not become active within 60 s; its journal:\n{box.journal()}")
    assert st["Type"] == "notify" and st["SubState"] == "running" and st["UnitFileState"] == "enabled", st
    assert st["StatusText"] and st["NRestarts"] == "0", (st, box.journal())
    assert "ready in" in box.journal(), box.journal()
    # it runs as the system user made by sysusers.d, in the recorder's group, so it reads the library
    uid = box.run(f"stat -c %U /proc/{st['MainPID']}").stdout.strip()
    assert uid == "steno-export"
    assert "silentsteno" in box.run("id -nG steno-export").stdout.split()
    for unit in ("steno-exportd-samba-reload.path", "dbus-org.silentsteno.Export1.service"):
        assert box.run(f"systemctl is-enabled {unit} || true").stdout.strip() in ("enabled", "alias"), unit
    assert box.run("systemctl is-active steno-exportd-samba-reload.path").stdout.strip() == "active"
    assert box.run("stat -c '%U %a' /srv/steno-export /var/lib/steno-exportd").stdout.split() == \
        ["steno-export", "755", "steno-export", "750"]
    # the config (it may hold the page's password hash) is for root and the service, not every local user
    assert box.run(f"stat -c '%U %G %a' {CONFIG}").stdout.split() == ["root", "steno-export", "640"]
    assert "Permission denied" in box.run(f"cat {CONFIG} 2>&1", user=OTHER, check=False).stdout
    snippet = box.run("cat /var/lib/steno-exportd/samba/steno-exportd.conf").stdout
    assert "# Sharing is off." in snippet and "[" not in snippet, snippet
    # the snippet changing while smbd is stopped leaves no failed unit behind: the reload is skipped
    def reload_unit() -> str:
        return box.run("systemctl show -p ExecCondition -p Result steno-exportd-samba-reload.service").stdout
    box.run("systemctl stop smbd")
    before = reload_unit()
    box.run("touch /var/lib/steno-exportd/samba/steno-exportd.conf")
    ran = wait_for(lambda: (r := reload_unit()) != before and "stop_time=[n/a]" not in r and r, timeout=20, interval=0.5,
                   what="the reload unit to run on the changed snippet")
    assert re.search(r"status=[1-9]", ran) and "Result=exec-condition" in ran, ran     # no smbd: skipped
    assert "steno" not in box.run("systemctl list-units --failed --no-legend --plain").stdout


def test_status_works_for_steno_ui_and_is_refused_for_another_user(box):
    ok = box.run("steno-exportctl status", user=UI)
    assert f"steno-exportd {VERSION}" in ok.stdout and re.search(r"sessions:\s+7\b", ok.stdout), ok.stdout
    refused = box.run("steno-exportctl status", user=OTHER, check=False)
    assert refused.returncode == 5, (refused.returncode, refused.stdout, refused.stderr)
    assert refused.stdout == "" and "Rejected send message" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    # the man pages are there for both commands
    assert box.run("man -w steno-exportd steno-exportctl").stdout.count("/usr/share/man/") == 2


LISTEN = """
import asyncio, sys
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=["type='signal',sender='org.silentsteno.Export1'"]))
    seen = []
    bus.add_message_handler(lambda m: seen.append(m.member) if m.message_type == MessageType.SIGNAL
                            and m.path.startswith("/org/silentsteno") else None)
    print("listening", flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    print(len(seen), flush=True)
asyncio.run(main())
"""


def test_only_steno_ui_receives_the_daemons_signals(box):
    """Job progress and switch changes are broadcast: another user must not be able to listen in."""
    listeners = {}
    for user in (UI, OTHER):
        listeners[user] = subprocess.Popen(
            ["nsenter", "-t", str(box.leader), "-a", "systemd-run", "--quiet", "--wait", "--pipe", "--collect",
             f"--uid={user}", "--", "/usr/lib/steno-exportd/bin/python3", "-c", LISTEN, "6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for user, p in listeners.items():
            assert p.stdout.readline().strip() == "listening", (user, p.stderr.read())
        box.run("steno-exportctl auto-export off && steno-exportctl auto-export on")
        counts = {u: int(p.communicate(timeout=60)[0].strip()) for u, p in listeners.items()}
    finally:
        for p in listeners.values():
            p.kill()
    assert counts[UI] >= 2 and counts[OTHER] == 0, counts


def _fetch(opener, url: str, data: dict | None = None, **headers: str) -> tuple[int, str]:
    """(status, body) of one request from the LAN; a refusal is an answer too."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(urllib.request.Request(url, data=body, headers=headers), timeout=10) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def test_a_fresh_install_shows_the_lan_only_the_pairing_screen_until_a_code_pairs_a_browser(box):
    """Closed out of the box: a browser on the LAN gets the pairing screen and no meeting; a code from
    `steno-exportctl pair` (steno-ui only) logs that browser in."""
    base = f"http://{box.ip}:8080"
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def page():
        try:
            return _fetch(browser, f"{base}/")
        except OSError:
            return None
    status, body = wait_for(page, timeout=30, interval=0.5, what=f"the web page on {box.ip}:8080")
    assert status == 200 and 'action="/pair"' in body and 'name="password"' not in body, body
    before = [body] + [_fetch(browser, f"{base}{path}") for path in ("/api/v1/sessions", "/api/v1/status")]
    assert [b[0] for b in before[1:]] == [401, 401], before
    assert "paired browsers only" in box.run("steno-exportctl status", user=UI).stdout
    refused = box.run("steno-exportctl pair", user=OTHER, check=False)
    assert refused.returncode != 0 and "pairing code" not in refused.stdout
    offer = json.loads(box.run("steno-exportctl pair --json", user=UI).stdout)
    assert re.fullmatch(r"\d{4}-\d{4}", offer["code"]) and offer["url"].endswith(f"/pair?code={offer['code']}"
                                                                                 .replace("-", "")), offer
    csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    status, home = _fetch(browser, f"{base}/pair", {"code": offer["code"], "csrf": csrf, "next": "/"}, Origin=base)
    assert status == 200 and 'action="/pair"' not in home, home
    status, listed = _fetch(browser, f"{base}/api/v1/sessions")
    assert status == 200
    titles = [s["title"] for s in json.loads(listed)["items"]]
    assert len(titles) == 7 and all(str(escape(t)) in home for t in titles)
    assert not any(t in b or str(escape(t)) in b for t in titles for b in (before[0], before[1][1], before[2][1]))
    status, st = _fetch(browser, f"{base}/api/v1/status")
    assert status == 200 and json.loads(st)
    # another browser on the LAN is still outside
    assert _fetch(urllib.request.build_opener(), f"{base}/api/v1/sessions")[0] == 401


SHARE_PW = "read-only share pw"


def _smbclient(box: Container, command: str, auth: list[str] | None = None) -> subprocess.CompletedProcess:
    """smbclient from the LAN, as the share user by default (guests are refused out of the box)."""
    return subprocess.run(["smbclient", *(auth or ["-U", f"steno-share%{SHARE_PW}"]), f"//{box.ip}/meetings",
                           "-c", command], capture_output=True, text=True, timeout=60)


def test_the_share_users_password_is_set_by_the_root_unit_even_while_smbd_is_stopped(box):
    """steno-exportctl samba-password (steno-ui) hands it to the shipped helper through the .path unit."""
    assert box.run("systemctl is-active smbd || true").stdout.strip() != "active"
    request = "/var/lib/steno-exportd/samba/share-user.request"
    refused = box.run("steno-exportctl samba-password", user=OTHER, check=False, input=SHARE_PW + "\n")
    assert refused.returncode != 0 and box.run(f"test -e {request} || echo none").stdout.strip() == "none"
    out = box.run("steno-exportctl samba-password", user=UI, input=SHARE_PW + "\n").stdout
    assert "handed to the root helper" in out, out
    try:        # the helper removes the request first, then makes the account and sets its password
        wait_for(lambda: "steno-share:" in box.run("pdbedit -L").stdout, timeout=30, interval=0.5,
                 what="the reload unit's helper to set the password")
    except pytest.fail.Exception:
        pytest.fail(f"the share user was not set; the unit's journal:\n{box.journal('steno-exportd-samba-reload')}")
    assert box.run(f"test -e {request} || echo gone").stdout.strip() == "gone"
    assert box.run("getent passwd steno-share | cut -d: -f7").stdout.strip() == "/usr/sbin/nologin"
    assert "steno" not in box.run("systemctl list-units --failed --no-legend --plain").stdout


def test_setup_samba_then_sharing_on_serves_the_share_read_only(box, tmp_path):
    require_tool("smbclient")
    box.run("systemctl start smbd")
    first = box.run("steno-exportctl setup-samba").stdout
    assert "added 'include = /var/lib/steno-exportd/samba/steno-exportd.conf'" in first, first
    again = box.run("steno-exportctl setup-samba").stdout
    assert "already includes" in again and "nothing to do" in again, again
    conf = box.run("cat /etc/samba/smb.conf").stdout
    assert conf.count("include = /var/lib/steno-exportd/samba/steno-exportd.conf") == 1
    assert box.run("ls /etc/samba/ | grep -c '^smb.conf.steno-exportd-.*\\.bak$'").stdout.strip() == "1"

    assert box.run("steno-exportctl sharing on", user=UI).stdout.startswith("sharing: on")
    listing = wait_for(lambda: (r := _smbclient(box, "ls")).returncode == 0 and r.stdout.count(" D ") >= 7
                       and "SHA256SUMS" in r.stdout and r.stdout, timeout=90, interval=1,
                       what=f"\\\\{box.ip}\\meetings to list the session folders "
                            f"(status: {box.run('steno-exportctl status', check=False).stdout})")
    assert "manifest.json" in listing
    assert "serving" in box.run("steno-exportctl status").stdout or \
        "samba:       on" in box.run("steno-exportctl status").stdout
    guest = _smbclient(box, "ls", auth=["-N"])                 # out of the box, a guest reads nothing
    assert guest.returncode != 0 and "SHA256SUMS" not in guest.stdout, guest.stdout
    assert re.search(r"NT_STATUS_(ACCESS_DENIED|LOGON_FAILURE)", guest.stdout + guest.stderr), guest.stderr
    (tmp_path / "intruder.txt").write_text("x")
    put = _smbclient(box, f"put {tmp_path / 'intruder.txt'} intruder.txt")
    assert re.search(r"NT_STATUS_(ACCESS_DENIED|MEDIA_WRITE_PROTECTED)", put.stdout + put.stderr), put.stdout
    assert "intruder.txt" not in _smbclient(box, "ls").stdout


def test_every_default_allowed_dir_is_writable_under_the_shipped_unit(box):
    """export.allowed_dirs as shipped: an export into each works under the unit's sandbox."""
    dirs = json.loads(box.run("/usr/lib/steno-exportd/bin/python3 -c 'import json; from steno_exportd.config "
                              "import Config; print(json.dumps(Config().export.allowed_dirs))'").stdout)
    assert dirs
    for i, d in enumerate(dirs):
        # a folder there that the service user owns, as udisks2's mount of a stick under /media would be
        target = f"{d}/probe-{i}"
        box.run(f"install -d -o steno-export -g steno-export {target}")
        r = box.run(f"steno-exportctl export --to {target} --sessions 1 --formats txt --wait", user=UI,
                    check=False, timeout=180)
        assert r.returncode == 0 and "completed" in r.stdout, (d, r.stdout, r.stderr, box.journal()[-2000:])
        assert box.run(f"ls {target}/SilentSteno").stdout.strip()
        box.run(f"rm -rf {target}")


MAIN_SECTIONS = """
[render]
company = "Kanzlei Beispiel"
time_zone = "Europe/Berlin"
language = "de"

[email]
enabled = true
smtp_host = "{host}"
smtp_port = {port}
sender = "steno@recorder.example"
recipients = ["office@example.org"]
retry_initial_seconds = 1
timeout = 10

[notify]
events = ["export_done", "export_failed"]

[retention]
history_days = 30
interval_hours = 1
"""


def test_render_mail_and_retention_sections_work_under_the_shipped_unit(box, tmp_path):
    """[render], [email], [notify] and [retention] in the installed service's sandbox: XLSX/PDF/DOCX
    rendered with the branding (openpyxl and the bidi libraries from the private environment, the render
    worker process), and the export_done notice mailed through the outbox to a real SMTP server on the
    host's end of the container's link."""
    from tests.parts.smtp import SmtpServer
    server = SmtpServer(tmp_path, security="none", auth=False, host=box.host_ip)
    good = box.run(f"cat {CONFIG}").stdout
    target = "/media/probe-mail"
    try:
        box.run(f"cat > {CONFIG}", input=MAIN_SECTIONS.format(host=box.host_ip, port=server.port))
        box.run(f"steno-exportd check-config {CONFIG}")
        box.run("systemctl restart steno-exportd")
        wait_for(lambda: _active(box)["ActiveState"] == "active", timeout=60, interval=0.5,
                 what="steno-exportd to restart with the new sections")
        box.run(f"install -d -o steno-export -g steno-export {target}")
        r = box.run(f"steno-exportctl export --to {target} --sessions 1 --formats xlsx pdf docx --wait", user=UI,
                    check=False, timeout=240)
        assert r.returncode == 0 and "completed" in r.stdout, (r.stdout, r.stderr, box.journal()[-3000:])
        out = box.root / target.lstrip("/") / "SilentSteno"
        made = {p.suffix: p for p in out.rglob("*") if p.suffix in (".xlsx", ".pdf", ".docx")}
        assert set(made) == {".xlsx", ".pdf", ".docx"}, sorted(map(str, out.rglob("*")))
        import openpyxl
        sheet = openpyxl.load_workbook(made[".xlsx"], read_only=True).worksheets[0]
        assert sum(1 for _ in sheet.iter_rows()) > 1
        pdf = subprocess.run(["pdftotext", str(made[".pdf"]), "-"], capture_output=True, text=True, check=True)
        assert "Kanzlei Beispiel" in pdf.stdout
        got = wait_for(lambda: server.received and server.received[0], timeout=90, interval=0.5,
                       what=f"the export_done notice at the SMTP server (journal: {box.journal()[-1500:]})")
        assert got.rcpt_tos == ["office@example.org"] and got.mail_from == "steno@recorder.example"
        assert got.message["Subject"] == f"[steno] Export to {target} finished: 1 session", got.message["Subject"]
        assert "Traceback" not in box.journal()
    finally:
        server.stop()
        box.run(f"cat > {CONFIG}", input=good)
        box.run(f"rm -rf {target} && systemctl restart steno-exportd")
    wait_for(lambda: _active(box)["ActiveState"] == "active", timeout=60, interval=0.5,
             what="steno-exportd to restart with the shipped config")


def test_reload_with_a_bad_config_keeps_the_old_one(box):
    before = _active(box)
    good = box.run(f"cat {CONFIG}").stdout
    try:
        box.run(f"sed -i 's/^# port = 8080/prot = 8081/' {CONFIG} && grep -q '^prot' {CONFIG} && "
                "systemctl reload steno-exportd")
        st = wait_for(lambda: "reload failed" in (s := _active(box))["StatusText"] and s, timeout=30,
                      interval=0.5, what="the rejected reload in the unit's status")
        assert "http.prot" in st["StatusText"] and st["ActiveState"] == "active", st
        assert st["MainPID"] == before["MainPID"]
        assert "steno-exportd" in box.run("steno-exportctl status", user=UI).stdout
        with urllib.request.urlopen(f"http://{box.ip}:8080/", timeout=10) as r:
            assert r.status == 200
    finally:
        box.run(f"cat > {CONFIG}", input=good)
    box.run("systemctl reload steno-exportd")
    wait_for(lambda: "reload failed" not in _active(box)["StatusText"], timeout=30, interval=0.5,
             what="a good reload to clear the error")


def test_systemd_analyze_security_exposure_is_at_most_2(box):
    out = box.run("systemd-analyze security --no-pager steno-exportd.service").stdout
    m = re.search(r"Overall exposure level for steno-exportd\.service: ([\d.]+)", out)
    assert m, out
    print(f"systemd-analyze security steno-exportd (in the container): {m.group(1)}")
    assert float(m.group(1)) <= 2.0, out


def test_purge_as_documented_leaves_nothing_of_ours(box):
    shipped = [p for p in box.run("dpkg -L steno-exportd").stdout.splitlines()
               if p.startswith("/") and not box.run(f"test -d {p} && echo d || true").stdout.strip()]
    assert "/usr/bin/steno-exportd" in shipped and CONFIG in shipped
    original = box.run("grep -L steno-exportd /etc/samba/smb.conf.steno-exportd-*.bak | head -n 1").stdout.strip()
    # docs/install.md: take the include line out of smb.conf, then purge
    box.run("steno-exportctl setup-samba --remove")
    box.run(f"cmp /etc/samba/smb.conf {original}")       # smb.conf is as it was before setup-samba
    box.run("apt-get purge -y -q steno-exportd 2>&1", timeout=300)
    assert box.run("dpkg-query -W -f '${db:Status-Status}' steno-exportd 2>&1 || true").stdout.strip() in (
        "not-installed", "dpkg-query: no packages found matching steno-exportd")
    left = [p for p in shipped if box.run(f"test -e {p} && echo yes || true").stdout.strip()]
    assert left == [], left
    for d in ("/etc/steno-exportd", "/var/lib/steno-exportd", "/srv/steno-export", "/run/steno-exportd",
              "/usr/lib/steno-exportd"):
        assert box.run(f"test -e {d} && echo yes || true").stdout.strip() == "", d
    # every file the container gained that is named after us (the overlay's upper layer holds exactly
    # what changed), except the smb.conf backups setup-samba made for the admin and the recorder's data
    ours = []
    for path in sorted(box.upper.rglob("*")):
        rel = "/" + str(path.relative_to(box.upper))
        if "steno" not in rel or rel.startswith(("/var/lib/silentsteno", "/proc/", "/sys/")):
            continue
        if path.is_char_device() and path.stat().st_rdev == 0:      # a whiteout: something removed
            continue
        if re.fullmatch(r"/etc/samba/smb\.conf\.steno-exportd-[\d-]+\.bak", rel):
            continue
        ours.append(rel)
    assert ours == [], ours
    # Debian policy keeps the system user and groups (their files may exist elsewhere)
    assert box.run("getent passwd steno-export && getent group steno-ui").returncode == 0
