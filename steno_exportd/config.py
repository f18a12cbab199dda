"""The daemon's configuration: one TOML file parsed into frozen dataclasses.

Every key has a default. Loading checks everything at once and raises one
``ConfigError`` listing each problem as ``key.path: reason`` (with "did you mean"
for misspelled keys). Secrets are masked when the config is printed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import ipaddress
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable

from steno_exportd import safeparse
from steno_exportd.errors import ConfigError
from steno_exportd.formats import DOCUMENT_TEMPLATES, FORMATS

# the config file read without --config (the daemon's and every command's); STENO_CONFIG names another, for a test's
# own (never the machine's file) or a second instance
DEFAULT_PATH = Path(os.environ.get("STENO_CONFIG") or "/etc/steno-exportd/config.toml")
MAX_CONCURRENT_JOBS = 16        # export.max_concurrent_jobs at most (the jobs' own threads: engine/jobs.py)

Check = Callable[[Any], "str | None"]


def opt(default: Any, doc: str, *, choices: tuple | None = None, items: tuple | None = None,
        min: float | None = None, max: float | None = None, check: Check | None = None,
        secret: bool = False) -> Any:
    """A config key: its default, its documentation and how to validate it."""
    meta = dict(doc=doc, choices=choices, items=items, min=min, max=max, check=check, secret=secret)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, doc: str = "") -> Any:
    return dataclasses.field(default_factory=cls, metadata=dict(doc=doc))


def table_list(cls: type, doc: str) -> Any:
    return dataclasses.field(default_factory=list, metadata=dict(doc=doc, table_of=cls))


# ---- checks -------------------------------------------------------------------------

_PLACEHOLDERS = ("date", "time", "title", "short_id", "uuid", "id", "location",
                 "job_id", "timestamp", "format", "seq")


SHOWN_MAX = 80       # characters of a value quoted in a message (a whole key file pasted into a path)


def _shown(value: Any) -> str:
    """A value someone wrote, quoted for a message: repr (a newline in it forges no log line), cut to SHOWN_MAX."""
    return safeparse.shorten(repr(value), SHOWN_MAX)


def check_pattern(value: str) -> str | None:
    names = re.findall(r"{([^{}]*)}", value)
    bad = [n for n in names if n not in _PLACEHOLDERS]
    if bad:
        hint = difflib.get_close_matches(bad[0], _PLACEHOLDERS, n=1)
        return (f"unknown placeholder {_shown('{' + bad[0] + '}')}"
                + (f" (did you mean '{{{hint[0]}}}'?)" if hint else "")
                + f"; valid: {', '.join('{' + p + '}' for p in _PLACEHOLDERS)}")
    if not value.strip():
        return "must not be empty"
    return None


def _check_cidr(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"not a network in CIDR form: {_shown(value)} (e.g. '192.168.0.0/16')"
    return None


def _check_cron(value: str) -> str | None:
    if value == "":
        return None
    fields = value.split()
    if len(fields) != 5:
        return f"cron expression needs 5 fields (minute hour day month weekday), got {len(fields)}: {_shown(value)}"
    from croniter import croniter          # the one cron parser (schedules.py runs what it accepts)
    try:
        croniter(value)
    except (ValueError, KeyError, TypeError) as e:
        return f"invalid cron expression {_shown(value)}: {safeparse.shorten(str(e), SHOWN_MAX)}"
    return None


def _check_bus(value: str) -> str | None:
    if value in ("system", "session") or "=" in value:
        return None
    return "must be 'system', 'session' or a D-Bus address such as 'unix:path=/run/x/bus'"


def _check_abs_or_empty(value: str) -> str | None:
    if value and not value.startswith("/"):
        return f"must be an absolute path, got {_shown(value)}"
    return None


def _check_time_zone(value: str) -> str | None:
    if not value:
        return None
    import zoneinfo
    try:
        zoneinfo.ZoneInfo(value)
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):   # (a name too long for a file name: OSError)
        return f"unknown time zone {_shown(value)} (an IANA name such as 'Europe/Berlin', or empty for the system's)"
    return None


def _check_language(value: str) -> str | None:
    if re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", value):
        return None
    return f"not a BCP 47 language tag: {_shown(value)} (e.g. 'en', 'de', 'pt-BR')"


# ---- schema -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecorderConfig:
    db_path: str = opt("/var/lib/silentsteno/data/silent_steno.db",
                       "The recorder's SQLite database (opened read-only).", check=_check_abs_or_empty)
    data_dir: str = opt("", "The recorder's data dir; relative audio paths resolve against it. "
                        "Empty: the database's folder.", check=_check_abs_or_empty)
    lock_timeout: float = opt(5.0, "Seconds to wait for a locked database before failing.", min=0.1, max=300)
    machine_id_file: str = opt("/etc/machine-id", "The system's machine id: this recorder's short id on a NAS "
                               "or cloud store is derived from it (never the id itself).",
                               check=_check_abs_or_empty)
    poll_interval: float = opt(2.0, "Seconds between cheap 'did the database change' checks.",
                               min=0.2, max=3600)


@dataclasses.dataclass(frozen=True)
class StateConfig:
    dir: str = opt("/var/lib/steno-exportd", "The daemon's own state (state DB, caches).",
                   check=_check_abs_or_empty)
    runtime_dir: str = opt("/run/steno-exportd", "Runtime files (sockets, pid).",
                           check=_check_abs_or_empty)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    root_folder: str = opt("SilentSteno", "Folder created at the root of every target.")
    naming: str = opt("pattern", "How session folders are named.",
                      choices=("pattern", "id", "title", "sequential"))
    folder_pattern: str = opt("{date} {title} ({short_id})",
                              "Session folder name when naming = 'pattern'.", check=check_pattern)
    formats: list[str] = opt(["txt", "md", "html", "json", "srt", "vtt", "pdf", "audio"],
                             "Formats written by default.", items=FORMATS)
    template: str = opt("detailed", "Default PDF/DOCX template.")
    include_audio: bool = opt(True, "Copy the original recording.")
    verify: bool = opt(True, "Read every written file back and compare its SHA-256.")
    overwrite_foreign: bool = opt(False, "Replace files on a target that this daemon did not write.")
    free_space_margin_mb: int = opt(16, "Free space kept in reserve on a target, MiB.", min=0)
    continue_on_error: bool = opt(True, "Keep exporting other sessions when one fails.")
    max_concurrent_jobs: int = opt(2, "Jobs that run at the same time.", min=1, max=MAX_CONCURRENT_JOBS)
    retries: int = opt(2, "Retries of a transient error, with backoff.", min=0, max=10)
    allowed_dirs: list[str] = opt(["/media", "/srv/steno-export"],
                                  "Directories D-Bus/web callers may export into (the shipped unit must let the "
                                  "service write there: ReadWritePaths=).")
    job_history_days: int = opt(90, "Days finished jobs stay in the state DB.", min=1)
    hash_ahead: bool = opt(True, "Hash each recording in the background (idle priority, paused while a job or "
                           "a download runs) once its session is exportable, so the first ZIP or export finds "
                           "its checksums ready.")


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    template_dir: str = opt("/etc/steno-exportd/templates",
                            "User templates (txt/md/html Jinja2) overriding or adding to the built-in ones.",
                            check=_check_abs_or_empty)
    font_path: str = opt("", "TrueType font for PDF; empty: search DejaVu Sans.", check=_check_abs_or_empty)
    page_size: str = opt("A4", "Paper size of PDF/DOCX.", choices=("A4", "Letter"))
    logo: str = opt("", "Logo image at the top of PDF/DOCX reports.", check=_check_abs_or_empty)
    accent_color: str = opt("#1f4e79", "Accent colour of reports (#rrggbb).",
                            check=lambda v: None if re.fullmatch(r"#[0-9a-fA-F]{6}", v) else "must be #rrggbb")
    company: str = opt("", "Name shown in report headers.")
    time_zone: str = opt("", "IANA time zone of the times in documents (e.g. 'Europe/Berlin'); empty: the "
                         "system's.", check=_check_time_zone)
    language: str = opt("en", "BCP 47 language of the meetings (HTML/DOCX lang); a paragraph in another "
                        "script is marked with its own.", check=_check_language)


@dataclasses.dataclass(frozen=True)
class AutoExportConfig:
    enabled: bool = opt(True, "Export automatically when a stick is inserted.")
    sessions: str = opt("new", "Which sessions: new (not on the stick yet), all, since_days.",
                        choices=("new", "all", "since_days"))
    since_days: int = opt(30, "With sessions = since_days: how many days back.", min=1, max=36500)
    formats: list[str] = opt(["txt", "html", "pdf", "srt", "audio"], "Formats written to sticks.",
                             items=FORMATS)
    template: str = opt("detailed", "PDF/DOCX template for sticks.")
    include_audio: bool = opt(True, "Copy the recordings to sticks.")
    eject_after: bool = opt(True, "Unmount and power the stick off after the export.")


@dataclasses.dataclass(frozen=True)
class UsbConfig:
    enabled: bool = opt(True, "Watch for USB sticks.")
    allow_labels: list[str] = opt([], "Only these filesystem labels (empty: any).")
    allow_uuids: list[str] = opt([], "Only these filesystem UUIDs (empty: any).")
    prefer_labels: list[str] = opt([], "On a stick with several partitions, prefer these labels.")
    ignore_uuids: list[str] = opt([], "Never touch these filesystems.")
    mount_options: list[str] = opt(["nosuid", "nodev", "noexec"], "Options for every mount.")
    settle_seconds: float = opt(0.5, "Debounce for bursts of udev change events.", min=0, max=30)
    auto_export: AutoExportConfig = section(AutoExportConfig)


@dataclasses.dataclass(frozen=True)
class HttpAuthConfig:
    mode: str = opt("password", "Access control. password: every browser logs in, with the web password or by "
                                "pairing (a one-time code from the touchscreen); with no password set yet, remote "
                                "browsers see only the pairing screen. none: no login at all, refused on any "
                                "address but loopback unless allow_open_lan = true.", choices=("none", "password"))
    password_hash: str = opt("", "scrypt hash made by 'steno-exportd hash-password'; empty: the password set from "
                                 "the touchscreen or a paired browser (kept in the state dir) applies. Set here, it "
                                 "wins over that one.", secret=True)
    allow_open_lan: bool = opt(False, "With mode = none: allow listening on a non-loopback address, so every device "
                                      "on the allowed networks reads every meeting without a password.")
    pairing: bool = opt(True, "Allow pairing a browser with a one-time code shown on the touchscreen "
                              "(StartPairing over D-Bus, steno-exportctl pair).")
    pairing_minutes: float = opt(5.0, "How long a pairing code is valid, minutes (it works once).", min=0.05,
                                 max=60)
    session_hours: float = opt(12.0, "Login lifetime, hours.", min=0.1)
    allowed_networks: list[str] = opt(
        ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fe80::/10", "fc00::/7"],
        "Client networks allowed to connect (CIDR).")
    max_failed_logins: int = opt(5, "Failed logins or share PINs per client address before it must wait.", min=1)
    max_failed_network: int = opt(20, "Failed attempts per network (IPv4 /24, IPv6 /64) before it must wait.",
                                  min=1)
    max_failed_global: int = opt(100, "Failed attempts from all addresses together before everyone must wait.",
                                 min=1)
    lockout_seconds: int = opt(300, "The longest wait after failed attempts (the first is 1/16 of it, "
                                    "doubling with each further failure).", min=1)

# what one share link may have (access.store.create_link): the defaults of the keys below too, or every link made
# with them (the touchscreen's, the page's with its fields left empty, a mail's) would be refused
LINK_MAX_HOURS = 24 * 366
LINK_MAX_DOWNLOADS = 1000


@dataclasses.dataclass(frozen=True)
class ShareLinksConfig:
    enabled: bool = opt(True, "Allow share links.")
    default_expiry_hours: float = opt(72.0, "Default lifetime of a share link.", min=0.01, max=LINK_MAX_HOURS)
    default_max_downloads: int = opt(5, "Default number of downloads a link allows (any GET of a file or the "
                                        "ZIP, Range requests included).", min=1, max=LINK_MAX_DOWNLOADS)
    min_pin_digits: int = opt(6, "Shortest PIN a share link may have.", min=4, max=12)
    max_wrong_pins: int = opt(10, "Wrong PINs after which a link locks itself for good (0: never).", min=0)


@dataclasses.dataclass(frozen=True)
class HttpTlsConfig:
    mode: str = opt("off", "HTTPS on the page's port: off; self-signed (a certificate made on first start and "
                           "kept in the state dir); files (cert_file and key_file).",
                    choices=("off", "self-signed", "files"))
    cert_file: str = opt("", "PEM certificate (chain) for mode = files.", check=_check_abs_or_empty)
    key_file: str = opt("", "PEM private key for mode = files.", check=_check_abs_or_empty, secret=True)


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    enabled: bool = opt(True, "Serve the LAN web page.")
    bind: list[str] = opt(["0.0.0.0"], "Addresses to listen on.")
    port: int = opt(8080, "TCP port.", min=1, max=65535)
    public_url: str = opt("", "URL shown to users; empty: http://<hostname>.local:<port>.")
    cache_max_mb: int = opt(256, "Size bound of the rendered-format cache, MiB.", min=0)
    max_body_kb: int = opt(64, "Largest accepted request body, KiB.", min=1)
    host_names: list[str] = opt([], "Further names the page answers to (besides its host name, <host>.local, "
                                    "localhost, its addresses and public_url's host); other Host headers get 421.")
    max_connections: int = opt(512, "Open connections at most (also bounded by the open-file limit); past it "
                                    "the longest idle ones are closed first, then downloads whose client stopped "
                                    "reading for idle_timeout.", min=16)
    idle_timeout: float = opt(15.0, "Seconds a connection may stay silent (no request, or a request's headers "
                                    "not complete) before it is closed.", min=1)
    body_timeout: float = opt(30.0, "Seconds a client may take to send a request body.", min=1)
    auth: HttpAuthConfig = section(HttpAuthConfig)
    share_links: ShareLinksConfig = section(ShareLinksConfig)
    tls: HttpTlsConfig = section(HttpTlsConfig)


@dataclasses.dataclass(frozen=True)
class SambaConfig:
    enabled: bool = opt(False, "Serve the export folder as a read-only Samba share.")
    share_name: str = opt("meetings", "Share name (\\\\steno\\meetings).")
    export_dir: str = opt("/srv/steno-export", "Folder kept current and shared.", check=_check_abs_or_empty)
    snippet_path: str = opt("/var/lib/steno-exportd/samba/steno-exportd.conf",
                            "Share definition written here; smb.conf includes it.", check=_check_abs_or_empty)
    guest_ok: bool = opt(False, "Allow guest (no password) access: anyone on the network reads the share.")
    share_user: str = opt("steno-share", "With guest_ok = false: the read-only share user; its password is set "
                                         "with SetSambaPassword over D-Bus or 'steno-exportctl samba-password' "
                                         "(the root helper unit creates the account).")
    valid_users: list[str] = opt([], "With guest_ok = false: further users allowed besides share_user.")
    force_user: str = opt("", "User smbd reads the shared files as; empty: the daemon's own user (it writes "
                              "them, 0640 under the shipped unit's UMask=0027). Root: not forced.")
    smb_conf: str = opt("/etc/samba/smb.conf", "Not used: testparm checks the candidate snippet on its own "
                        "(kept so older configs load).", check=_check_abs_or_empty)
    testparm_command: list[str] = opt(["testparm", "-s"], "Validation command (the config file is appended).")
    reload_command: list[str] = opt([], "Command that reloads smbd; [] (the default): systemd's "
                                    "steno-exportd-samba-reload.path does it, as root, when the snippet changes (the "
                                    "hardened service cannot); e.g. [\"smbcontrol\", \"smbd\", \"reload-config\"] "
                                    "without that unit.")
    close_command: list[str] = opt(["smbcontrol", "smbd", "close-share"],
                                   "Command that disconnects users from a share that was switched off or changed "
                                   "(the share name is appended); not used when reload_command is [] (the systemd "
                                   "unit does it).")
    announce: bool = opt(True, "While the share is served, announce it over mDNS (avahi-daemon on the system "
                               "D-Bus) so macOS Finder lists the recorder; Windows uses wsdd (docs/samba.md).")
    announce_name: str = opt("", "Name the share is announced under; empty: the host name.")
    formats: list[str] = opt(["txt", "html", "pdf", "audio"], "Formats kept in the export folder.",
                             items=FORMATS)


@dataclasses.dataclass(frozen=True)
class SmbRemote:
    name: str = opt("", "Name of the remote (used as an export target).")
    server: str = opt("", "Host name or address of the SMB server.")
    port: int = opt(445, "TCP port.", min=1, max=65535)
    share: str = opt("", "Share name.")
    path: str = opt("", "Folder inside the share.")
    username: str = opt("", "User name (empty: guest).")
    password_file: str = opt("", "File holding the password, readable only by the service user.",
                             check=_check_abs_or_empty)
    domain: str = opt("", "Domain / workgroup.")
    require_encryption: bool = opt(False, "Refuse to push without SMB3 encryption.")
    schedule: str = opt("", "Cron expression for scheduled pushes (empty: none).", check=_check_cron)
    push_on_new: bool = opt(False, "Push each new session when it appears.")
    formats: list[str] = opt(["txt", "html", "pdf", "json", "audio"], "Formats pushed.", items=FORMATS)
    bandwidth_limit_kbps: int = opt(0, "Upload limit, KiB/s (0: none).", min=0)
    timeout: float = opt(15.0, "Connect timeout, seconds.", min=1)


@dataclasses.dataclass(frozen=True)
class SmbConfig:
    recorder_folder: str = opt("", "Per-recorder folder on remotes (SMB and rclone); empty: the host name and a "
                               "short id from the machine id (e.g. 'steno-3f9a1c'), unique in an office of "
                               "recorders with one host name.")
    office_index: bool = opt(True, "After each push, write _index/<recorder folder>.json on the remote: the "
                             "meetings this recorder holds there (one file per recorder, never a shared one).")
    remotes: list[SmbRemote] = table_list(SmbRemote, "[[smb.remotes]] tables, one per remote.")


@dataclasses.dataclass(frozen=True)
class RcloneRemote:
    name: str = opt("", "Name of the remote (used as an export target: rclone:<name>).")
    remote: str = opt("", "The rclone remote and folder, as rclone names it: 'onedrive:Meetings' (a remote "
                      "of rclone.config_file).")
    schedule: str = opt("", "Cron expression for scheduled pushes (empty: none).", check=_check_cron)
    push_on_new: bool = opt(False, "Push each new session when it appears.")
    formats: list[str] = opt(["txt", "html", "pdf", "json", "audio"], "Formats pushed.", items=FORMATS)
    bandwidth_limit_kbps: int = opt(0, "Upload limit, KiB/s (0: none).", min=0)
    timeout: float = opt(30.0, "Connect and I/O idle timeout, seconds.", min=1)


@dataclasses.dataclass(frozen=True)
class RcloneConfig:
    config_file: str = opt("/etc/steno-exportd/rclone.conf", "rclone's config file (the admin makes it with "
                           "'rclone config'); it holds credentials: readable only by the service user. rclone's "
                           "own settings in the daemon's environment (RCLONE_*) do not reach the push's rclone, "
                           "but for this file's: RCLONE_CONFIG_PASS, RCLONE_PASSWORD_COMMAND (an encrypted file) "
                           "and RCLONE_CONFIG_<REMOTE>_<KEY>. Where rclone cannot save into this file (its folder "
                           "read-only to the daemon, as the unit makes /etc), the push runs rclone with a copy of it "
                           "in <state.dir>/rclone/, where rclone keeps the logins it renews; the copy is made again "
                           "when this file changes, keeping the login rclone renewed for each remote whose token "
                           "this file did not change (by the remote's name: a remote renamed here begins from this "
                           "file's token), and removed once rclone can save into this file itself or no rclone remote "
                           "is configured.",
                           check=_check_abs_or_empty)
    command: str = opt("rclone", "The rclone program (Debian's rclone package).")
    remotes: list[RcloneRemote] = table_list(RcloneRemote, "[[rclone.remotes]] tables, one per remote.")


@dataclasses.dataclass(frozen=True)
class DbusConfig:
    enabled: bool = opt(True, "Offer the D-Bus API.")
    bus: str = opt("system", "system, session, or a bus address.", check=_check_bus)
    job_linger_seconds: float = opt(300.0, "Finished jobs stay on the bus this long.", min=0)
    ui_group: str = opt("steno-ui", "Group allowed to call the API (bus policy).")


NOTIFY_EVENTS = ("export_done", "export_failed", "push_done", "push_failed", "stick_safe", "disk_low")


@dataclasses.dataclass(frozen=True)
class EmailConfig:
    enabled: bool = opt(False, "Send mail: sessions by email and the notifications of [notify].")
    smtp_host: str = opt("localhost", "SMTP server.")
    smtp_port: int = opt(25, "SMTP port: 25, 587 (submission, with security = 'starttls') or 465 (security = 'tls').",
                         min=1, max=65535)
    security: str = opt("none", "Transport security: none, starttls (upgrade the connection; a server that does not "
                                "offer it is refused) or tls (TLS from the first byte, usually port 465); with either, "
                                "the server's certificate and name are checked.", choices=("none", "starttls", "tls"))
    starttls: bool = opt(False, "Older spelling of security = 'starttls' (kept so older configs load).")
    ca_file: str = opt("", "PEM file of the CA (or the server's own certificate) to trust; empty: the system's CAs.",
                       check=_check_abs_or_empty)
    username: str = opt("", "SMTP user (empty: no login).")
    password_file: str = opt("", "File holding the SMTP password (its first line), readable only by the service "
                                 "user.", check=_check_abs_or_empty)
    sender: str = opt("steno@localhost", "From address.")
    recipients: list[str] = opt([], "Default To addresses: notifications go here unless a [[notify.rules]] names "
                                    "its own.")
    max_message_mb: float = opt(20.0, "Largest message, MiB as sent (attachments grow by a third in a mail): over "
                                      "it the recordings, then the largest other attachments, are not attached "
                                      "(see oversize).", min=0.01, max=1024)
    oversize: str = opt("link", "What a message says about files over max_message_mb: link (a share link of the "
                                "web page for each meeting concerned, with http.share_links' default expiry and "
                                "download limit; it works where the web page can be reached, see "
                                "http.public_url) or omit (the body only names them). With the web page or share "
                                "links off, link acts as omit and the body says why.", choices=("link", "omit"))
    timeout: float = opt(30.0, "Seconds to wait for the server to connect or to answer one command.", min=1, max=600)
    retry_initial_seconds: float = opt(30.0, "Wait after the first transient failure (4xx answer, timeout, "
                                             "connection refused); it doubles with each try.", min=0.1, max=86400)
    retry_max_seconds: float = opt(3600.0, "Longest wait between two tries.", min=0.1, max=86400)
    give_up_hours: float = opt(72.0, "A message not accepted this long after it was queued fails with the last "
                                     "reason.", min=0.001, max=8760)


@dataclasses.dataclass(frozen=True)
class NotifyRule:
    events: list[str] = opt([], "Events this rule sends.", items=NOTIFY_EVENTS)
    recipients: list[str] = opt([], "To addresses; empty: email.recipients.")
    digest_minutes: float = opt(0.0, "0: one message per event; N: one message with every event of the last N "
                                     "minutes.", min=0, max=10080)


@dataclasses.dataclass(frozen=True)
class NotifyConfig:
    events: list[str] = opt(["export_done", "export_failed", "push_done", "push_failed"],
                            "With no [[notify.rules]]: the events mailed to email.recipients, one message each. "
                            "export_done/failed: an export job (stick, folder, archive; not the Samba share's own "
                            "refresh when it succeeds), push_done/failed: an SMB push, stick_safe: a stick may be "
                            "pulled, disk_low: little free space (disk_low_mb).", items=NOTIFY_EVENTS)
    disk_low_mb: int = opt(1024, "disk_low when the recorder's data folder, the state folder or the Samba export "
                                 "folder has less free space than this, MiB.", min=1)
    disk_check_seconds: float = opt(300.0, "Seconds between free-space checks (only when a rule sends disk_low).",
                                    min=0.1, max=86400)
    rules: list[NotifyRule] = table_list(NotifyRule, "[[notify.rules]] tables: which events go to whom, "
                                                     "one message each or a digest.")


@dataclasses.dataclass(frozen=True)
class RetentionConfig:
    jobs_max: int = opt(1000, "Finished jobs kept in the state DB, newest first (their age limit is "
                              "export.job_history_days); queued, running and interrupted (resumable) jobs are never pruned.", min=1)
    history_days: int = opt(365, "Days the export history (which file went where, with its SHA-256) is kept.",
                            min=1)
    history_max: int = opt(100_000, "History rows kept, newest first.", min=1)
    outbox_days: int = opt(30, "Days sent and failed messages stay listed in the outbox (queued ones always stay).",
                           min=1)
    outbox_max: int = opt(500, "Sent and failed messages kept in the outbox, newest first.", min=1)
    audit_days: int = opt(365, "Days the web page's download audit log is kept.", min=1)
    audit_max: int = opt(20_000, "Audit log rows kept, newest first.", min=1)
    hash_cache_entries: int = opt(20_000, "Recordings whose checksums are remembered (state dir cache/hashes.db).",
                                  min=100)
    interval_hours: float = opt(24.0, "Hours between two prunings (one also runs at start).", min=0.001, max=8760)


SCHEDULE_MAIL_PREFIX = "email:"


@dataclasses.dataclass(frozen=True)
class Schedule:
    name: str = opt("", "Name of the schedule (unique; shown on D-Bus, the web page and 'steno-exportctl schedules').")
    cron: str = opt("", "Cron expression (minute hour day month weekday, local time), e.g. '0 2 * * *'; or give "
                        "interval_minutes instead.", check=_check_cron)
    interval_minutes: float = opt(0.0, "Run every N minutes instead of a cron expression (0: use cron).",
                                  min=0, max=527040)
    target: str = opt("", "An absolute folder (or FILE.zip / FILE.tar.gz), smb:<remote name>, rclone:<remote name>, "
                          "or email: followed "
                          "by addresses separated by commas ('email:' alone: email.recipients).")
    sessions: str = opt("new", "Which sessions: new (recorded since the schedule's last run; the first run takes "
                               "the last since_days days), all, or since_days.",
                        choices=("new", "all", "since_days"))
    since_days: int = opt(7, "Days back for sessions = 'since_days' (and the first run of 'new').", min=1,
                          max=36500)
    tags: list[str] = opt([], "Only sessions with at least one of these tags (empty: any).")
    formats: list[str] = opt(["txt", "pdf", "audio"], "Formats.", items=FORMATS)
    template: str = opt("", "PDF/DOCX template (empty: export.template).")
    catch_up: bool = opt(True, "A run missed while the recorder was off (or the daemon stopped) runs once at the "
                               "next start; false: it is skipped.")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    level: str = opt("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclasses.dataclass(frozen=True)
class Config:
    recorder: RecorderConfig = section(RecorderConfig, "The recorder's database (read-only).")
    state: StateConfig = section(StateConfig, "Where the daemon keeps its own files.")
    export: ExportConfig = section(ExportConfig, "Layout, naming and behaviour of every export.")
    render: RenderConfig = section(RenderConfig, "Templates, fonts and report styling.")
    usb: UsbConfig = section(UsbConfig, "USB sticks.")
    http: HttpConfig = section(HttpConfig, "The LAN web page.")
    samba: SambaConfig = section(SambaConfig, "The read-only Samba share on the recorder.")
    smb: SmbConfig = section(SmbConfig, "Pushing to SMB shares (an office NAS).")
    rclone: RcloneConfig = section(RcloneConfig, "Pushing to cloud and other stores through rclone.")
    dbus: DbusConfig = section(DbusConfig, "The D-Bus API for the touchscreen UI.")
    email: EmailConfig = section(EmailConfig, "Mail: sessions by email, notifications (docs/mail.md).")
    notify: NotifyConfig = section(NotifyConfig, "Notifications: which events are mailed to whom.")
    schedules: list[Schedule] = table_list(Schedule, "[[schedules]] tables: exports on a timetable.")
    retention: RetentionConfig = section(RetentionConfig, "How long the state DB and the caches keep things.")
    logging: LoggingConfig = section(LoggingConfig, "Logging (to journald via stderr).")

    @property
    def recorder_data_dir(self) -> Path:
        return Path(self.recorder.data_dir) if self.recorder.data_dir else Path(self.recorder.db_path).parent


# ---- loading ------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _scalar_ok(tp: Any, value: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return False


def _validate_value(path: str, tp: Any, meta: dict, value: Any, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            errors.append(f"{path}: expected a {_type_name(tp)}, got {type(value).__name__}")
            return None
        out = []
        for i, item in enumerate(value):
            ipath = f"{path}[{i}]"
            if not _scalar_ok(item_tp, item):
                errors.append(f"{ipath}: expected a {_type_name(item_tp)}, got {_shown(item)}")
                continue
            if meta.get("items") and item not in meta["items"]:
                hint = difflib.get_close_matches(str(item), meta["items"], n=1)
                kind = "format" if meta["items"] is FORMATS else "value"
                errors.append(f"{ipath}: unknown {kind} {_shown(item)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; valid: {', '.join(meta['items'])}")
                continue
            out.append(item)
        return out
    if not _scalar_ok(tp, value):
        errors.append(f"{path}: expected a {_type_name(tp)}, got {_shown(value)}")
        return None
    if tp is float:
        value = float(value)
        if not math.isfinite(value):        # TOML's nan passes every bound (no comparison holds), inf every lower one
            errors.append(f"{path}: must be a finite number, got {_shown(value)}")
            return None
    if meta.get("choices") and value not in meta["choices"]:
        hint = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        errors.append(f"{path}: {_shown(value)} is not one of {', '.join(map(str, meta['choices']))}"
                      + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        return None
    if meta.get("min") is not None and value < meta["min"]:
        errors.append(f"{path}: must be >= {meta['min']}, got {_shown(value)}")
        return None
    if meta.get("max") is not None and value > meta["max"]:
        errors.append(f"{path}: must be <= {meta['max']}, got {_shown(value)}")
        return None
    if meta.get("check"):
        msg = meta["check"](value)
        if msg:
            errors.append(f"{path}: {msg}")
            return None
    return value


def _shown_key(key: str) -> str:
    """A key someone wrote (a stick's file's too) for a message: printable (a newline in it forged a log line), and
    at most 64 characters."""
    return safeparse.shorten(safeparse.printable(key), 64)


def _build(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{path or '<top>'}: expected a table, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            errors.append(f"{path + '.' if path else ''}{_shown_key(key)}: unknown key"
                          + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        tp = hints[name]
        sub = f"{path}.{name}" if path else name
        value = data[name]
        if _is_dataclass_type(tp):
            kwargs[name] = _build(tp, value, sub, errors)
        elif f.metadata.get("table_of"):
            if not isinstance(value, list):
                errors.append(f"{sub}: expected an array of tables ([[{sub}]])")
                continue
            kwargs[name] = [_build(f.metadata["table_of"], v, f"{sub}[{i}]", errors)
                            for i, v in enumerate(value)]
        else:
            v = _validate_value(sub, tp, f.metadata, value, errors)
            if v is not None:
                kwargs[name] = v
    return cls(**kwargs)


def is_loopback(bind: str) -> bool:
    """Does a listen address (http.bind) reach only this machine?"""
    if bind.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check_mail(cfg: Config, errors: list[str]) -> None:
    from steno_exportd.outbox.address import check_address
    e = cfg.email
    for key, values in [("email.sender", [e.sender])] + [(f"email.recipients[{i}]", [r])
                                                         for i, r in enumerate(e.recipients)] + \
            [(f"notify.rules[{i}].recipients[{j}]", [r]) for i, rule in enumerate(cfg.notify.rules)
             for j, r in enumerate(rule.recipients)]:
        msg = check_address(values[0])
        if msg:
            errors.append(f"{key}: {msg}")
    if e.security == "none" and not e.starttls and e.username and not is_loopback(e.smtp_host):
        errors.append(f"email.security: 'none' would send the password for {_shown(e.username)} in clear to "
                      f"{_shown(e.smtp_host)}; use 'starttls' or 'tls'")
    if e.enabled:
        for i, rule in enumerate(cfg.notify.rules):
            if not rule.events:
                errors.append(f"notify.rules[{i}].events: required")
            if not rule.recipients and not e.recipients:
                errors.append(f"notify.rules[{i}].recipients: needed when email.recipients is empty")


def _cross_check(cfg: Config, errors: list[str]) -> None:
    _check_mail(cfg, errors)
    if cfg.export.template not in DOCUMENT_TEMPLATES and not cfg.render.template_dir:
        errors.append(f"export.template: unknown template {_shown(cfg.export.template)}")
    for i, net in enumerate(cfg.http.auth.allowed_networks):
        msg = _check_cidr(net)
        if msg:
            errors.append(f"http.auth.allowed_networks[{i}]: {msg}")
    if cfg.http.tls.mode == "files" and not (cfg.http.tls.cert_file and cfg.http.tls.key_file):
        errors.append("http.tls.cert_file: mode = 'files' needs cert_file and key_file")
    if cfg.http.enabled and cfg.http.auth.mode == "none" and not cfg.http.auth.allow_open_lan:
        lan = [b for b in cfg.http.bind if not is_loopback(b)]
        if lan:
            errors.append(f"http.auth.mode: 'none' (no password) on {', '.join(lan)} opens every meeting to the "
                          f"network; bind to 127.0.0.1 only, use mode = 'password' (pairing from the touchscreen), "
                          f"or set http.auth.allow_open_lan = true if that is really meant")
    names = set()
    for i, r in enumerate(cfg.smb.remotes):
        for key in ("name", "server", "share"):
            if not getattr(r, key):
                errors.append(f"smb.remotes[{i}].{key}: required")
        if r.name in names:
            errors.append(f"smb.remotes[{i}].name: duplicate remote name {_shown(r.name)}")
        names.add(r.name)
    rnames = set()
    for i, rr in enumerate(cfg.rclone.remotes):
        for key in ("name", "remote"):
            if not getattr(rr, key):
                errors.append(f"rclone.remotes[{i}].{key}: required")
        if rr.remote and ":" not in rr.remote:
            errors.append(f"rclone.remotes[{i}].remote: {_shown(safeparse.redact(rr.remote))} names no rclone remote "
                          f"(expected 'NAME:path', NAME a remote of rclone.config_file)")
        elif said := rclone_remote_problem(rr.remote):
            errors.append(f"rclone.remotes[{i}].remote: {_shown(safeparse.redact(rr.remote))} {said}")   # (a login)
        if any(not c.isprintable() for c in rr.name):
            errors.append(f"rclone.remotes[{i}].name: {_shown(rr.name)} holds a control or unprintable character "
                          f"(it names the target rclone:<name> in logs, jobs and schedules)")
        if rr.name in rnames:
            errors.append(f"rclone.remotes[{i}].name: duplicate remote name {_shown(rr.name)}")
        rnames.add(rr.name)
    _check_schedules(cfg, names, rnames, errors)


def rclone_remote_problem(remote: str) -> str:
    """What makes an rclone remote as written ("NAME:path") unsafe to push to, "" when nothing: a control or
    unprintable character (a newline forges a log line, an escape drives a terminal; rclone passes either to the
    store as part of a name), or a '..' anywhere in it, which rclone resolves on the store: "nas:office/../.." pushed
    into the store's root, beside (and, by the push's clean-up, over) other people's folders. Checked at load and
    again when a push opens the remote (a Config made in code skips the load's checks)."""
    if any(not c.isprintable() for c in remote):
        return "holds a control or unprintable character"
    # anywhere in the remote, not in what reads as its path alone: rclone 1.60 takes ":local:../x:y" and
    # 'nas,x="a:b":..' for a parent folder, an SFTP connection string ":sftp,host=h:../../etc:z" too, and a
    # backslash separates folders on IIS's WebDAV and on SMB ("nas:office\..\other"); a '..' that names no folder
    # (in a URL or a setting of a connection string) is refused with them: rare, and put right by the admin at once
    if ".." in [part.strip() for part in re.split(r"[/\\:'\"]", remote)]:
        return "has a '..' in it: the push's folder must be that folder or one below it, never above"
    return ""


def _check_schedules(cfg: Config, remotes: set[str], rclone_remotes: set[str], errors: list[str]) -> None:
    from steno_exportd.outbox.address import check_address
    seen: set[str] = set()
    for i, s in enumerate(cfg.schedules):
        where = f"schedules[{i}]"
        if not s.name:
            errors.append(f"{where}.name: required")
        elif s.name in seen:
            errors.append(f"{where}.name: duplicate schedule name {_shown(s.name)}")
        elif s.name.startswith(("smb:", "rclone:")) or len(s.name) > 64 \
                or any(not c.isprintable() for c in s.name):
            errors.append(f"{where}.name: at most 64 printable characters, not starting with 'smb:' or 'rclone:' (the "
                          "remotes' own schedules are listed under that name)")
        seen.add(s.name)
        if bool(s.cron) == bool(s.interval_minutes):
            errors.append(f"{where}: give either cron or interval_minutes (not both, not neither)")
        t = s.target
        if not t:
            errors.append(f"{where}.target: required")
        elif t.startswith("smb:"):
            if t[4:] not in remotes:
                errors.append(f"{where}.target: no SMB remote named {_shown(t[4:])}")
        elif t.startswith("rclone:"):
            if t[7:] not in rclone_remotes:
                errors.append(f"{where}.target: no rclone remote named {_shown(t[7:])}")
        elif t.startswith(SCHEDULE_MAIL_PREFIX):
            addrs = [a.strip() for a in t[len(SCHEDULE_MAIL_PREFIX):].split(",") if a.strip()]
            for a in addrs:
                msg = check_address(a)
                if msg:
                    errors.append(f"{where}.target: {msg}")
            if not addrs and not cfg.email.recipients:
                errors.append(f"{where}.target: 'email:' with no address needs email.recipients")
            if not cfg.email.enabled:
                errors.append(f"{where}.target: mail needs [email] enabled = true")
        elif not t.startswith("/") or "\0" in t:
            errors.append(f"{where}.target: an absolute folder, FILE.zip/.tar.gz, smb:<remote>, rclone:<remote> or "
                          f"email:<addresses>, not {_shown(t)}")
        if s.template and s.template not in DOCUMENT_TEMPLATES and not cfg.render.template_dir:
            errors.append(f"{where}.template: unknown template {_shown(s.template)}")


def from_dict(data: dict, source: str = "") -> Config:
    """Build a Config from parsed TOML, raising ConfigError listing every problem."""
    errors: list[str] = []
    cfg = _build(Config, data, "", errors)
    if not errors:
        _cross_check(cfg, errors)
    if errors:
        raise ConfigError(errors, source)
    return cfg


def load(path: Path | str | None = None) -> Config:
    """Load the config file; a missing default file means all defaults."""
    p = Path(path) if path else DEFAULT_PATH
    if not p.exists():
        if path is None:
            return Config()
        raise ConfigError([f"{p}: file not found"], str(p))
    try:
        data = safeparse.toml_loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read: {e}"], str(p)) from None
    return from_dict(data, str(p))


def replace(cfg: Config, **changes: Any) -> Config:
    """Return a copy of cfg with dotted keys changed, e.g. replace(cfg, **{'usb.enabled': False})."""
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            cfg = dataclasses.replace(cfg, **{head: replace(getattr(cfg, head), **{rest: value})})
        else:
            cfg = dataclasses.replace(cfg, **{head: value})
    return cfg


# ---- printing -----------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def dump(cfg: Any, prefix: str = "", *, mask_secrets: bool = True) -> str:
    """The effective config as TOML, secrets masked (credentials inside a value too: an rclone remote's)."""
    lines: list[str] = []
    tables: list[tuple[str, Any, bool]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            tables.append((name, value, False))
        elif f.metadata.get("table_of"):
            for item in value:
                tables.append((name, item, True))
        else:
            shown = "********" if (f.metadata.get("secret") and value and mask_secrets) else value
            if mask_secrets and isinstance(shown, str):
                shown = safeparse.redact(shown)     # an rclone connection string's "pass=...", a URL's "user:pw@"
            lines.append(f"{f.name} = {_toml_value(shown)}")
    out = "\n".join(lines)
    for name, value, is_array in tables:
        body = dump(value, name, mask_secrets=mask_secrets)
        head = f"[[{name}]]" if is_array else f"[{name}]"
        out += ("\n\n" if out else "") + head + ("\n" + body if body else "")
    return out


def documentation(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key path, type, default, doc) for every key: used to check config/config.toml."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            rows += documentation(tp, name)
        elif f.metadata.get("table_of"):
            rows += documentation(f.metadata["table_of"], name + "[]")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((name, _type_name(tp), default, f.metadata.get("doc", "")))
    return rows

