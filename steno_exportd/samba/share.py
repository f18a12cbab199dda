"""Samba share of the export folder: snippet writer, testparm validation, reload, close.

The daemon never rewrites smb.conf: it writes one snippet (cfg.samba.snippet_path) that the admin's
smb.conf includes with a single line, ``include = /var/lib/steno-exportd/samba/steno-exportd.conf``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import re
import subprocess
import tempfile

from steno_exportd.config import Config, SambaConfig
from steno_exportd.errors import ConfigError, TargetError

log = logging.getLogger(__name__)

# What the engine writes while it works (temp files, session folders being built, the marker in a
# folder built in place): never shown to share users.
from steno_exportd.engine.targets import MARKER, PARTIAL_SUFFIX, TEMP_PREFIX  # noqa: E402

VETO_PATTERNS = (f"{TEMP_PREFIX}*", f"*{PARTIAL_SUFFIX}", MARKER)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,79}")
# what a host name may not bring into the share's comment: a line break (a line of its own in the share), a
# backslash (at a line's end smb.conf joins the next line to it), % (smbd's substitutions), other controls
_NOT_IN_COMMENT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\%]+")
_USER_RE = re.compile(r"[@+&]?[A-Za-z0-9_][A-Za-z0-9_.\-\\]{0,63}")
# testparm warnings that mean the snippet is not what we meant (it still exits 0 on these).
_BAD_STDERR = re.compile(r"unknown parameter|ignoring unknown|error|invalid|can't find include", re.I)


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    """What happened when a snippet was applied."""

    changed: bool
    reloaded: bool
    snippet: str


CLOSED = "# closed share: "     # the root reload unit disconnects users from the shares named so


def render_snippet(cfg: SambaConfig, *, enabled: bool, vfs_fruit: bool, hostname: str = "",
                   subdir: str = "", closing: str = "") -> str:
    """The share definition (or an empty placeholder when sharing is off) as smb.conf text.

    ``subdir``: the export's root folder inside export_dir (the share shows the session folders).
    ``closing``: a share whose connected users must be disconnected (switched off or changed).
    """
    head = ("# Written by steno-exportd; do not edit (it is replaced on every change).\n"
            "# smb.conf includes it with: include = " + cfg.snippet_path + "\n")
    if closing:
        head += CLOSED + closing + "\n"
    if not enabled:
        return head + "# Sharing is off.\n"
    problems = check_config(cfg)
    if subdir and (subdir in (".", "..") or any(c in subdir for c in "/\n\r%")):
        problems.append(f"export.root_folder: {subdir!r} cannot be shared")
    if problems:
        raise ConfigError(problems, "samba")
    lines = [
        f"[{cfg.share_name}]",
        f"   comment = SilentSteno meetings{' on ' + comment_text(hostname) if hostname else ''}",
        f"   path = {share_path(cfg, subdir)}",
        "   browseable = yes",
        "   read only = yes",
        "   writeable = no",
        "   printable = no",
        "   create mask = 0644",
        "   follow symlinks = no",
        "   wide links = no",
        "   hide dot files = yes",
        "   veto files = /" + "/".join(VETO_PATTERNS) + "/",
        "   delete veto files = no",
    ]
    reader = force_user(cfg)
    if reader:
        lines.append(f"   force user = {reader}")
    if cfg.guest_ok:
        lines.append("   guest ok = yes")
    else:
        lines.append("   guest ok = no")
        lines.append("   valid users = " + " ".join(share_users(cfg)))
    if vfs_fruit:
        lines += ["   vfs objects = fruit streams_xattr",
                  "   fruit:metadata = stream",
                  "   fruit:model = MacSamba",
                  "   fruit:veto_appledouble = no",
                  "   fruit:wipe_intentionally_left_blank_rfork = yes",
                  "   fruit:delete_empty_adfiles = yes"]
    return head + "\n".join(lines) + "\n"


def comment_text(text: str) -> str:
    """Text (the host's name: the kernel takes any bytes as one) as it may stand in the share's comment line."""
    return _NOT_IN_COMMENT.sub("_", text).strip()[:80]


def share_users(cfg: SambaConfig) -> list[str]:
    """Who may read the share when guests may not: the share user, then samba.valid_users."""
    return list(dict.fromkeys([u for u in (cfg.share_user, *cfg.valid_users) if u]))


PASSWORD_REQUEST = "share-user.request"     # beside the snippet: the root helper sets the password and removes it


def request_password(cfg: Config, password: str) -> None:
    """Hand the share user's password to the root helper unit (steno-exportd-samba-reload.path watches the file):
    written 0600 under a temp name, then renamed, so the helper never reads half of it."""
    sc = cfg.samba
    if not sc.share_user or not _USER_RE.fullmatch(sc.share_user) or sc.share_user[0] in "@+&":
        raise ConfigError([f"samba.share_user: {sc.share_user!r} is not a user name"], "samba")
    path = pathlib.Path(sc.snippet_path).with_name(PASSWORD_REQUEST)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{sc.share_user}\n{password}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    try:        # opened for writing and closed, unchanged: the .path unit's PathChanged starts the root helper
        os.close(os.open(sc.snippet_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC))
    except OSError as e:
        log.warning("share user %s: could not nudge the reload unit through %s: %s", sc.share_user,
                    sc.snippet_path, e.strerror or e)
    log.info("share user %s: new password handed to the root helper", sc.share_user)


def force_user(cfg: SambaConfig) -> str:
    """The user smbd reads the share as: samba.force_user, else the daemon's own user (it writes the
    files, with its umask: 0640 under the shipped unit, which guests could not read). Root: none."""
    if cfg.force_user:
        return cfg.force_user
    if os.geteuid() == 0:
        return ""
    import pwd
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return ""


def check_config(cfg: SambaConfig) -> list[str]:
    """Problems that would let a value inject smb.conf text or make a useless share."""
    out = []
    if not _NAME_RE.fullmatch(cfg.share_name) or cfg.share_name.lower() in ("global", "homes", "printers"):
        out.append(f"samba.share_name: {cfg.share_name!r} is not a usable share name")
    if not cfg.export_dir or not os.path.isabs(cfg.export_dir) or any(c in cfg.export_dir for c in "\n\r%"):
        out.append(f"samba.export_dir: {cfg.export_dir!r} must be an absolute path without newlines or %")
    for u in cfg.valid_users:
        if not _USER_RE.fullmatch(u):
            out.append(f"samba.valid_users: {u!r} is not a user or group name")
    if cfg.force_user and (not _USER_RE.fullmatch(cfg.force_user) or cfg.force_user[0] in "@+&"):
        out.append(f"samba.force_user: {cfg.force_user!r} is not a user name")
    if cfg.share_user and (not _USER_RE.fullmatch(cfg.share_user) or cfg.share_user[0] in "@+&"):
        out.append(f"samba.share_user: {cfg.share_user!r} is not a user name")
    if not cfg.guest_ok and not share_users(cfg):
        out.append("samba.share_user: needed when guest_ok = false")
    return out


@functools.cache
def fruit_available() -> bool:
    """True when smbd has the vfs_fruit and vfs_streams_xattr modules (macOS support)."""
    try:
        out = subprocess.run(["smbd", "-b"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    m = re.search(r"MODULESDIR:\s*(\S+)", out)
    if not m:
        return False
    vfs = pathlib.Path(m.group(1)) / "vfs"
    return (vfs / "fruit.so").exists() and (vfs / "streams_xattr.so").exists()


def validate(snippet: str, cfg: SambaConfig) -> None:
    """Run testparm on a temp smb.conf that includes the candidate; raise ConfigError on any complaint."""
    with tempfile.TemporaryDirectory(prefix="steno-testparm-") as d:
        cand = pathlib.Path(d) / "snippet.conf"
        cand.write_text(snippet)
        conf = pathlib.Path(d) / "smb.conf"
        conf.write_text(f"[global]\n   include = {cand}\n")
        try:
            proc = subprocess.run([*cfg.testparm_command, str(conf)], capture_output=True, text=True,
                                  timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as e:
            raise ConfigError([f"samba: cannot run {cfg.testparm_command[0]!r}: {e}"], "testparm") from e
    bad = [ln.strip() for ln in proc.stderr.splitlines() if _BAD_STDERR.search(ln)]
    if proc.returncode != 0 or bad:
        why = bad or [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()][-3:] or [
            f"exit status {proc.returncode}"]
        raise ConfigError([f"samba: testparm rejected the share: {w}" for w in why], "testparm")
    if cfg.share_name and "Sharing is off" not in snippet and f"[{cfg.share_name}]" not in proc.stdout:
        raise ConfigError([f"samba: testparm does not show the share [{cfg.share_name}]"], "testparm")


def install(snippet: str, cfg: SambaConfig) -> bool:
    """Validate, then atomically replace the snippet; False when it was already current."""
    path = pathlib.Path(cfg.snippet_path)
    try:
        if path.read_text() == snippet:
            return False
    except OSError:
        pass
    validate(snippet, cfg)
    _write(path, snippet)
    return True


def _write(path: pathlib.Path, snippet: str) -> None:
    """Atomically replace the snippet file (temp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(snippet)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


def reload(cfg: SambaConfig) -> None:
    """Ask smbd to re-read its configuration; TargetError when it does not answer."""
    if not cfg.reload_command:
        return          # systemd's steno-exportd-samba-reload.path reloads smbd when the snippet changes
    try:
        proc = subprocess.run(cfg.reload_command, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise TargetError(f"samba reload failed: {e}") from e
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise TargetError(f"samba reload failed: {msg[-1] if msg else f'exit status {proc.returncode}'}")


def share_path(cfg: SambaConfig, subdir: str = "") -> str:
    """The folder the share serves: export_dir, or the export's root folder inside it."""
    return os.path.join(cfg.export_dir, subdir) if subdir else cfg.export_dir


def share_section(snippet: str) -> tuple[str, str]:
    """(share name, its definition) in a snippet we wrote; ("", "") when sharing is off."""
    m = re.search(r"^\[([^\]\n]+)\]\n", snippet, re.M)
    return (m.group(1), snippet[m.start():]) if m else ("", "")


def close_share(cfg: SambaConfig, name: str) -> None:
    """Disconnect users still connected to a share that is gone or changed (smbd keeps them otherwise)."""
    if not cfg.reload_command or not cfg.close_command:
        return          # the systemd unit does it (CLOSED line in the snippet)
    try:
        proc = subprocess.run([*cfg.close_command, name], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise TargetError(f"samba: connected users of [{name}] not disconnected: {e}") from e
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise TargetError(f"samba: connected users of [{name}] not disconnected: "
                          f"{msg[-1] if msg else f'exit status {proc.returncode}'}")


def apply(cfg: SambaConfig, enabled: bool, hostname: str = "", subdir: str = "") -> ApplyResult:
    """Render, validate, install and reload; on any error the previous snippet stays in place.

    When the share is switched off or its definition changes, users still connected to the old one
    are disconnected (smbd would let them go on with the old rules); their clients reconnect.
    """
    try:
        previous = pathlib.Path(cfg.snippet_path).read_text()
    except OSError:
        previous = None
    old_name, old_section = share_section(previous or "")
    fruit = fruit_available()
    new_section = share_section(render_snippet(cfg, enabled=enabled, vfs_fruit=fruit, hostname=hostname,
                                               subdir=subdir))[1]
    closing = old_name if old_name and old_section != new_section else ""
    snippet = render_snippet(cfg, enabled=enabled, vfs_fruit=fruit, hostname=hostname, subdir=subdir,
                             closing=closing)
    if enabled:
        os.makedirs(cfg.export_dir, mode=0o755, exist_ok=True)
        if subdir:
            os.makedirs(share_path(cfg, subdir), mode=0o755, exist_ok=True)
    changed = install(snippet, cfg)
    if changed:
        try:
            reload(cfg)
        except TargetError:
            # smbd did not take it: the previous snippet goes back, so the state stays what smbd
            # serves and the next sync tries again instead of finding the new one "unchanged"
            if previous is not None:
                _write(pathlib.Path(cfg.snippet_path), previous)
            else:
                with _suppress():
                    os.unlink(cfg.snippet_path)
            raise
        if closing:
            close_share(cfg, closing)
    return ApplyResult(changed=changed, reloaded=changed, snippet=snippet)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)
