"""Config: defaults, every key documented, all errors reported at once with key paths."""
import subprocess
import sys
from pathlib import Path

import pytest

from steno_exportd import config
from steno_exportd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "steno_exportd", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_shipped_config_is_valid_and_documents_every_key():
    text = (ROOT / "config" / "config.toml").read_text()
    cfg = config.load(ROOT / "config" / "config.toml")
    assert cfg == config.Config()
    for key, type_name, default, doc in config.documentation():
        leaf = key.rsplit(".", 1)[-1]
        assert f"{leaf} = " in text, f"{key} is not documented in config/config.toml"
        assert f"type: {type_name}" in text
        assert doc, f"{key} has no documentation"
        assert f"# {doc}" in text, f"{key}: config/config.toml describes it otherwise than the code"


def test_check_config_ok():
    r = run_cli("check-config", "config/config.toml")
    assert r.returncode == 0, r.stderr
    assert "[usb.auto_export]" in r.stdout


def test_three_mistakes_reported_together(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[usb.auto_export]\nformats = ["txt", "pdf", "pdff"]\n'
                 '[http]\nprot = 8080\n[recorder]\nlock_timeout = "five"\n')
    r = run_cli("check-config", str(p))
    assert r.returncode == 1
    assert "usb.auto_export.formats[2]: unknown format 'pdff' (did you mean 'pdf'?)" in r.stderr
    assert "http.prot: unknown key (did you mean 'port'?)" in r.stderr
    assert "recorder.lock_timeout: expected a number, got 'five'" in r.stderr


def test_check_config_reports_a_share_smbd_would_refuse(tmp_path):
    p = tmp_path / "share.toml"
    p.write_text('[samba]\nenabled = true\nshare_name = "global"\nguest_ok = false\nshare_user = ""\n')
    r = run_cli("check-config", str(p))
    assert r.returncode == 1
    assert "samba.share_name: 'global' is not a usable share name" in r.stderr
    assert "samba.share_user: needed when guest_ok = false" in r.stderr
    p.write_text('[samba]\nenabled = true\n')                  # the defaults: no guests, the share user
    r = run_cli("check-config", str(p))
    assert r.returncode == 0 and "guest_ok = false" in r.stdout and 'share_user = "steno-share"' in r.stdout, r.stderr
    p.write_text('[samba]\nenabled = false\nshare_name = "global"\n')
    r = run_cli("check-config", str(p))
    assert r.returncode == 0 and "sharing is off now" in r.stderr


@pytest.mark.parametrize("toml, expected", [
    ("[export]\nfolder_pattern = '{date} {titel}'\n", "export.folder_pattern: unknown placeholder '{titel}' (did you mean '{title}'?)"),
    ("[http]\nport = 70000\n", "http.port: must be <= 65535"),
    ("[http.auth]\nallowed_networks = ['10.0.0.0/33']\n", "http.auth.allowed_networks[0]: not a network"),
    # no password in the config is fine now (pairing, or one set from the touchscreen); no login on the LAN is not
    ("[http]\nbind = ['192.168.1.5']\n[http.auth]\nmode = 'none'\n",
     "http.auth.mode: 'none' (no password) on 192.168.1.5 opens every meeting to the network"),
    ("[dbus]\nbus = 'sytem'\n", "dbus.bus: must be 'system', 'session'"),
    ("[[smb.remotes]]\nname = 'nas'\nserver = 'nas'\nshare = 's'\nschedule = '* *'\n", "smb.remotes[0].schedule: cron expression needs 5 fields"),
    ("[usb]\nenabled = 'yes'\n", "usb.enabled: expected a boolean"),
    ("[logging]\nlevel = 'VERBOSE'\n", "logging.level: 'VERBOSE' is not one of"),
    ("usb = 3\n", "usb: expected a table"),
    ("[render\n", "TOML syntax error"),
    ("a = " + "[" * 5_000 + "\n", "TOML syntax error: nested too deeply"),     # tomllib's RecursionError before
    # TOML has nan and inf: nan passed every bound (no comparison holds), inf every lower one
    ("[http]\nidle_timeout = nan\n", "http.idle_timeout: must be a finite number, got nan"),
    ("[http.auth]\nsession_hours = inf\n", "http.auth.session_hours: must be a finite number, got inf"),
    ("[recorder]\npoll_interval = -inf\n", "recorder.poll_interval: must be a finite number, got -inf"),
])
def test_bad_values(tmp_path, toml, expected):
    p = tmp_path / "c.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert expected in str(e.value)


def test_share_link_defaults_no_link_may_have_are_refused_naming_the_key(tmp_path):
    """A careless admin's "links last long": defaults past what one link may have (a year, 1,000 downloads) were
    accepted, and then every link made with them (the touchscreen's, the page's with its fields left empty, a
    mail's for an oversized attachment) was refused with a message about the user's own empty fields."""
    p = tmp_path / "links.toml"
    p.write_text("[http.share_links]\ndefault_expiry_hours = 9000.0\ndefault_max_downloads = 5000\n")
    r = run_cli("check-config", str(p))
    assert r.returncode == 1, r.stderr        # before: 0, and every share link made with the defaults refused
    assert "http.share_links.default_expiry_hours: must be <= 8784, got 9000.0" in r.stderr, r.stderr
    assert "http.share_links.default_max_downloads: must be <= 1000, got 5000" in r.stderr, r.stderr
    p.write_text("[http.share_links]\ndefault_expiry_hours = 8784.0\ndefault_max_downloads = 1000\n")
    r = run_cli("check-config", str(p))
    assert r.returncode == 0, r.stderr


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_secrets_masked():
    cfg = config.from_dict({"http": {"auth": {"mode": "password", "password_hash": "scrypt$abc"}}})
    assert "scrypt$abc" not in config.dump(cfg)
    assert "********" in config.dump(cfg)


def test_smb_remotes_parsed():
    cfg = config.from_dict({"smb": {"remotes": [{"name": "office", "server": "nas", "share": "m", "port": 4450}]}})
    assert cfg.smb.remotes[0].port == 4450
    assert cfg.smb.remotes[0].timeout == 15.0


def test_credentials_in_an_rclone_remote_are_masked_when_the_config_is_printed(tmp_path):
    """An rclone remote given as a connection string carries its login (the URL's user:password, the obscured
    'pass=', which 'rclone reveal' turns back into the password). 'steno-exportd check-config' printed it as it
    was, while it masks every secret of its own: its output, pasted into a ticket or a forum, gave the NAS login
    away. Now those are masked too; the rest of the remote is shown."""
    p = tmp_path / "c.toml"
    p.write_text("[[rclone.remotes]]\nname = 'cloud'\n"
                 "remote = \":webdav,url='https://steno:Summer2026@nas.example/dav',pass=kQbHMuj1jBl_dWz0:office\"\n")
    r = run_cli("check-config", str(p))
    assert r.returncode == 0, r.stderr
    shown = next(line for line in r.stdout.splitlines() if line.startswith("remote = "))
    assert "Summer2026" not in shown and "kQbHMuj1jBl_dWz0" not in shown, shown
    assert shown == "remote = \":webdav,url='https://steno:***@nas.example/dav',pass=***:office\"", shown


def test_an_rclone_remote_holding_a_credential_in_the_config_is_warned_about(tmp_path):
    """The issue: credentials only in files readable by the daemon's user. config.toml is shipped 0644 (every
    local user reads it: the touchscreen's, the recorder's), and an rclone remote may be a connection string with
    its login in it; check-config and the daemon's start warned about a world-readable rclone.conf but said
    nothing of that one. Now they say where the credential belongs, without showing it."""
    p = tmp_path / "c.toml"
    p.write_text("[[rclone.remotes]]\nname = 'cloud'\n"
                 "remote = \":webdav,url='https://steno:Summer2026@nas.example/dav',pass=kQbHMuj1jBl_dWz0:office\"\n"
                 "[[rclone.remotes]]\nname = 'plain'\nremote = 'nas:office'\n")
    r = run_cli("check-config", str(p))
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "rclone.remotes[" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: rclone.remotes[0].remote: holds a credential"), r.stderr
    assert "rclone.config_file" in warned[0], warned
    assert "Summer2026" not in r.stderr and "kQbHMuj1jBl_dWz0" not in r.stderr, r.stderr



LONG = "x" * 5000


@pytest.mark.parametrize("data,count", [
    ({"recorder": {"db_path": "rel/" + LONG, "lock_timeout": LONG},
      "export": {"naming": LONG, "folder_pattern": "{" + LONG + "}", "formats": ["txt", LONG, 7 * [LONG]]},
      "render": {"time_zone": LONG, "language": LONG},
      "schedules": [{"name": "a", "cron": "* * * * " + LONG, "target": "/x"},
                    {"name": "b", "cron": "x y z w " + LONG, "target": "/x"}]}, 10),
    ({"email": {"username": LONG, "security": "none", "smtp_host": "mail." + LONG},
      "smb": {"remotes": [{"name": LONG, "server": "nas", "share": "s"}, {"name": LONG, "server": "nas", "share": "s"}]},
      "schedules": [{"name": "b", "cron": "1 * * * *", "target": "rclone:" + LONG},
                    {"name": "c", "cron": "1 * * * *", "target": "relative/" + LONG}]}, 4),
], ids=["fields", "across"])
def test_every_message_about_a_long_value_is_bounded_and_still_names_it(data, count):
    """A value pasted wrong (a whole key file into a path, a log line into a time zone) is quoted in the message,
    cut with an ellipsis: check-config, the journal and a stick's reason stay readable; never a traceback."""
    with pytest.raises(ConfigError) as ei:
        config.from_dict(data)
    problems = ei.value.problems
    assert len(problems) == count, problems
    for p in problems:
        assert len(p) <= 300, p[:300]
        assert "xxxxxxxxxx" in p, p[:300]        # the value is still shown, cut
