"""Running rclone: one ``rclone rcd`` child per push (its remote-control API on loopback: no process
start per operation), bounded answers, killed when the push ends, and its failures (exit code,
error text) told as what a person can act on (RcloneError)."""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import errno
import http.client
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat as stat_mod
import subprocess
import threading
import time
import typing
from pathlib import Path
from typing import Any, Callable

from steno_exportd import safeparse
from steno_exportd.atomic import write_file
from steno_exportd.config import Config, RcloneRemote
from steno_exportd.engine import targets
from steno_exportd.errors import TargetError, TargetFullError

log = logging.getLogger(__name__)

STDERR_KEEP = 16 * 1024             # the tail of rclone's stderr kept for the message
OUTPUT_LIMIT = 64 * 1024 * 1024     # a listing or small file read at most this big
ENTRY_KEY = b'"IsDir":'             # once in each entry of a listing's answer, nowhere else (names' quotes: escaped)
ERROR_TEXT = 300                    # characters of a store's error text kept for a message
SETPRIV = "setpriv"                 # util-linux's, found in PATH: starts rclone (dying_with_parent)
LOCK_WAIT = 3.0                     # seconds an operation on the store is made again while the store answers 423
                                    # Locked (a WebDAV lock there)

# (401 as a word: a port's digits, 'dial tcp 127.0.0.1:14010', a connection's local port, are no HTTP status)
_AUTH = re.compile(r"\b401\b|403 forbidden|unauthori[sz]ed|unable to authenticate|authentication failed|"
                   r"permission denied|access denied|invalid_grant|invalid_client|couldn't fetch token|"
                   r"token.{0,40}expired|expired.{0,40}token|login|bad password", re.I)
_EXPIRED = re.compile(r"invalid_grant|expired", re.I)
_QUOTA = re.compile(r"quota|insufficient storage|\b507\b|no space left|storage.{0,20}full|"
                    r"out of space|disk full|"
                    r"too big for remaining disk space|no space on filesystem",   # SFTP: rclone's, the protocol's
                    re.I)
_NETWORK = re.compile(r"connection refused|no such host|network is unreachable|no route to host|i/o timeout|"
                      r"connection reset|broken pipe|unexpected eof|\beof\b|timeout|dial tcp|"
                      r"connection lost|connection closed|server closed", re.I)
# rclone's words for a login token it failed to refresh, whatever the cause (v1.60: "couldn't fetch token - maybe it
# has expired? - refresh with ...: <cause>"): the cause after them
_TOKEN_FETCH = re.compile(r"couldn't fetch token\b(.*)", re.I | re.S)
# a cause that is the network, not the login server's answer (Go's words; its client's timeout, 'context deadline
# exceeded (Client.Timeout exceeded ...)'; a resolver without an answer)
_OFFLINE = re.compile(_NETWORK.pattern + r"|deadline exceeded|name resolution|server misbehaving|network is down|"
                                         r"host is down", re.I)
# the login server's refusal of the token (an answer: OAuth's error codes, an HTTP status of one)
_TOKEN_REFUSED = re.compile(r"invalid_grant|invalid_client|invalid_request|unauthorized_client|"
                            r"cannot fetch token: \d{3}\b|refresh token is not set", re.I)
# the login server failing to answer (Go's oauth2: "cannot fetch token: 503 Service Unavailable\nResponse: <its
# body>"): a server error or too many requests, not a refusal of the token
_TOKEN_SERVER_DOWN = re.compile(r"cannot fetch token: ((?:5\d\d|429)\b[^\n]*)", re.I)
_LOCKED = re.compile(r": 423 Locked\b")     # rclone's text of a WebDAV answer "423 Locked" (case kept: not a title)
_IS_FILE = re.compile(r"is a file not a directory", re.I)     # rclone's ErrorIsFile: a path names a file
_READ_ONLY = re.compile(r"read[- ]only file ?system", re.I)
# a write refused where the login could read (a write's "404 Not Found": a Go WebDAV server's, rclone serve's, refusal)
_REFUSED = re.compile(r"(?i:forbidden|permission denied|access ?denied|insufficient ?permission)|: 404 Not Found\b")
WRITES = ("operations/mkdir", "operations/uploadfile", "operations/copyfile", "operations/movefile",
          "operations/deletefile", "operations/purge", "operations/rmdir", "sync/move")
_SERVING = re.compile(r"Serving remote control on https?://127\.0\.0\.1:(\d+)/")    # rclone rcd's NOTICE of its port
# rclone reads a setting for each of its flags from the environment (RCLONE_<FLAG>), its remote-control server's
# (RCLONE_RC_*) and every backend's defaults (RCLONE_<BACKEND>_<OPTION>) too; an admin's shell or unit file may hold
# some for an rclone of their own (its web GUI: RCLONE_RC_BASEURL, RCLONE_RC_HTPASSWD, RCLONE_RC_CERT; a dry run
# tried once; its log quieted or moved: RCLONE_LOG_LEVEL, RCLONE_SYSLOG, which hid the NOTICE that says rcd's port),
# which reached the push's rclone rcd and broke every push ("rclone did not start", writes skipped).
# Its command line sets what the push needs: none of them is passed on, but those that open the admin's rclone
# config (its password, a command that says it: an encrypted rclone.config_file) and set a remote of it
# (RCLONE_CONFIG_<REMOTE>_<KEY>: rclone's documented way to give a remote's setting, a token kept out of the file).
# RCLONE_CONFIG (another config file) is not: rclone.config_file names it. The rest of the environment is the
# system's, not rclone's settings, and passed on: PATH, HOME (rclone's cache), TMPDIR (where it spools a stream),
# proxies, TLS trust (SSL_CERT_FILE), ssh-agent, a store's own login variables for env_auth (AWS_*, ...).
_RCLONE_KEPT = re.compile(r"RCLONE_CONFIG_PASS|RCLONE_PASSWORD_COMMAND|RCLONE_CONFIG_.+_.+")
# beyond those, what would change the shape of rclone's lines read here: under systemd the daemon's INVOCATION_ID
# (rclone v1.60's test for running as a service) and JOURNAL_STREAM (later versions') made rclone log for the
# journal: "<3>ERROR : ...", a syslog priority and no date; its stderr is a pipe to the push, not the journal
_QUIETING = ("INVOCATION_ID", "JOURNAL_STREAM")
# rclone's last words when it cannot load its config file (it exits at the first call that opens a remote, and
# the push saw only a connection closed: "rclone stopped answering", tried three times): its path, its reason
_CONFIG_LOAD = re.compile(r'Failed to load config file "((?:[^"\\\n]|\\.)*)": ([^\n]*)')
_UNPARSED = re.compile(r"could not parse line: (.*)")

# what starts a line of rclone's log before its words: a syslog priority (its journal format), its date and time
_LOG_PREFIX = re.compile(r"^(?:<[0-7]>)?(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+)?")
_CONFIG = re.compile(r"didn't find section in config file|config file .{0,40}not found|"
                     r"unknown backend|couldn't find type", re.I)
# the remote as written refused by rclone before it reaches any store (its fspath parser: a connection string's
# slip, a remote name it cannot take, a backend it does not have; a URL without its scheme, as a connection string's
# unquoted URL is cut at its colon: 'Propfind "http/./127.0.0.1:9/x": unsupported protocol scheme ""')
_UNREADABLE = re.compile(r"unterminated quoted config value|unquoted config value must end|"
                         r"config parameters can't be empty|config name can't be empty|"
                         r"config name contains invalid characters|config name starts with|didn't find backend called|"
                         r"unsupported protocol scheme", re.I)
# a string as Go quotes it (%q: rclone's 'mkdir "office/x" failed', Go's 'Put "http://..."'), taken in order
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# a name of dotted parts outside quotes: a host (Go's 'dial tcp: lookup login.microsoftonline.com: no such host'), an
# address, a file name
_DOTTED = re.compile(r"[\w-]+(?:\.[\w-]+)+")


def rclone_environment(environ: typing.Mapping[str, str]) -> dict[str, str]:
    """The environment the push's rclone gets: the daemon's, without rclone's own settings but those of the admin's
    rclone config (_RCLONE_KEPT), nor what would change the shape of its log (_QUIETING)."""
    return {k: v for k, v in environ.items()
            if k not in _QUIETING and (not k.upper().startswith("RCLONE_") or _RCLONE_KEPT.fullmatch(k))}


class RcloneError(TargetError):
    """An rclone push failed; ``permanent`` errors (login, config) are not retried."""

    def __init__(self, message: str, permanent: bool = False, locked: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.locked = locked            # the store refused it while something there was locked: not done


def last_line(err: str) -> str:
    """The most telling line of rclone's stderr (its last error, without the timestamp or a syslog priority before
    it), printable: it may carry the store's own words (a WebDAV error's body), which must not put escapes on a
    terminal or lines in the log; credentials masked: it may quote the remote or its URL (a connection string's
    "pass=...", "user:password@host"), and the line is a job's error, which every browser of the page sees."""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Failed" in ln or "CRITICAL" in ln] or lines
    text = errors[-1] if errors else ""
    return safeparse.printable(safeparse.redact(_LOG_PREFIX.sub("", text))[:300])


def is_file(e: RcloneError) -> bool:
    """rclone refused a path because it names a file where a folder must be."""
    return bool(_IS_FILE.search(str(e)))


def _answer_json(body: bytes) -> dict:
    """A remote-control answer's body as JSON; one that is not JSON (a proxy's page) as {"error": its start}."""
    try:
        data = safeparse.json_loads(body) if body.strip() else {}
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {"error": body[:ERROR_TEXT].decode("utf-8", "replace")}


def not_found(status: int, body: bytes) -> bool:
    """rclone's own answer that a path is not there: its JSON error of status 404. Its --rc-serve answers a file it
    found and then failed to open (the store failing for a moment: a 503, a drop) with a bare 404 page: not that."""
    try:
        data = safeparse.json_loads(body) if status == 404 else None
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("status") == 404


def error_text(body: bytes) -> str:
    """The error a remote-control answer carries (rclone's {"error": ..., "input": ..., "path": ..., "status": ...}:
    its "error"; else the body's start), for a message: the store's words, so one printable line, bounded, and
    credentials masked (see last_line)."""
    text = safeparse.printable(safeparse.redact(str(_answer_json(body).get("error") or "").strip()))
    return safeparse.shorten(text, ERROR_TEXT)


def explain(code: int, err: str, where: str, *, write: bool = False) -> TargetError:
    """rclone's exit code and stderr as the error a person can act on. ``write``: the store refused a write (after
    the push's reads there: its login works), so a refusal (403 Forbidden, permission denied) is of writing there."""
    if said := _config_unloadable(err, where):
        return said
    line = last_line(err) or f"rclone exited with status {code}"
    # the words are matched outside the paths and URLs the text quotes: the folders named there are the recorder's
    # (a meeting's title: "Forbidden City trip", "Login page review"; a temp name's process id: 4011), and a drop
    # while sending one was a refusal for good, never tried again; and outside the host names it does not quote (a
    # SharePoint store's login server not found, 'lookup login.microsoftonline.com', was a refused login)
    err = _DOTTED.sub("\u2026", _QUOTED.sub(lambda m: '"\u2026"' if "/" in m.group() else m.group(), err))
    # a token its login server could not be reached to refresh (no DNS, the network down) is the network, not an
    # expired login: tried again (an OAuth store's, OneDrive's, Drive's, whole push was failed for good)
    token = _TOKEN_FETCH.search(err)
    offline = bool(token and _OFFLINE.search(token[1]) and not _TOKEN_REFUSED.search(token[1]))
    # its login server answering the renewal with an error of its own (503: down, overloaded): not the login either
    down = _TOKEN_SERVER_DOWN.search(token[1]) if token else None
    if _LOCKED.search(err):         # (first: the text names paths, whose digits and words the others could match)
        return RcloneError(f"{where}: a file or folder on the store is locked by another program (a document "
                           f"open from the store?) ({line})", locked=True)
    if _IS_FILE.search(err):
        return RcloneError(f"{where}: a file on the store is where a folder must be ({line})", True)
    if _UNREADABLE.search(err):
        return RcloneError(f"{where}: rclone cannot read the remote as written: its name or connection string "
                           f"(rclone.remotes[].remote), or its settings in the rclone config ({line})", True)
    if _CONFIG.search(err):
        return RcloneError(f"{where}: the rclone remote is not set up in the rclone config ({line})", True)
    if _READ_ONLY.search(err) or (write and _REFUSED.search(err) and not _EXPIRED.search(err)):
        return RcloneError(f"{where}: the store refuses to save files there (read-only, or no permission to write "
                           f"in that folder) ({line})", True)
    if down:
        return RcloneError(f"{where}: the store's login server is not answering; tried again later "
                           f"({safeparse.printable(down[1].strip())[:80]})")
    if _AUTH.search(err) and not offline:
        if _EXPIRED.search(err):
            return RcloneError(f"{where}: the store's login has expired; renew it with 'rclone config reconnect' "
                               f"({line})", True)
        return RcloneError(f"{where}: the store refused the login (wrong user or password in the rclone "
                           f"config) ({line})", True)
    if _QUOTA.search(err):
        return TargetFullError(f"{where}: the store is full (no space left, or its quota reached) ({line})")
    if offline or _NETWORK.search(err) or code == 5:
        return RcloneError(f"{where}: the store cannot be reached (network down or server not answering) "
                           f"({line})")
    if code == 7:
        return RcloneError(f"{where}: the store refused the request for good ({line})", True)
    return RcloneError(f"{where}: {line}", code in (1, 3, 4))


def _config_unloadable(err: str, where: str, conf: str | None = None) -> RcloneError | None:
    """rclone's words that it cannot load its config file (broken, unreadable, a folder, encrypted without its
    password) as one line naming the file and rclone's reason; None when it says no such thing. A line it could not
    parse is never quoted (it may be a credential pasted on a line of its own): said by its number when ``conf``,
    the config file given to rclone, is the file and holds it."""
    m = _CONFIG_LOAD.search(err)
    if not m:
        return None
    path = m[1].replace('\\"', '"').replace("\\\\", "\\")
    reason = safeparse.printable(safeparse.redact(m[2].strip()))[:ERROR_TEXT]
    if unparsed := _UNPARSED.match(m[2].strip()):
        n = _line_number(conf, unparsed[1].strip()) if conf and os.path.abspath(conf) == path else None
        reason = f"{f'line {n}' if n else 'a line'} is neither a [remote] nor a 'key = value' setting"
    elif "most likely wrong password" in err:
        reason = f"the password given for it is wrong ({reason})"
    return RcloneError(f"{where}: rclone cannot load its config file {safeparse.printable(path)} "
                       f"(rclone.config_file): {reason}", True)


def _line_number(path: str, line: str) -> int | None:
    """The number of the first line of the file at ``path`` (a regular file, its first MiB) that reads ``line``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    return next((n for n, ln in enumerate(text.splitlines(), 1) if ln.strip() == line), None)


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that the child is SIGKILLed when the thread that started it ends (the daemon SIGKILLed, a test
    run killed): never an orphan holding a store's login and a loopback port. util-linux's setpriv (Essential in
    Debian) sets PR_SET_PDEATHSIG, then runs ``argv``: no Python code runs between fork and exec (a preexec_fn in a
    threaded daemon may deadlock on a lock another thread held at the fork, and makes Popen fork the whole daemon
    rather than vfork). The kernel ties it to the starting thread, not the process: start it with
    popen_dying_with_parent()."""
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]


def _binary(path: str) -> tuple | None:
    """The program at ``path`` (its path, device, inode and modification time): what tells another rclone (an
    upgrade replaces the file) from the one asked about before; None when it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_dev, st.st_ino, st.st_mtime_ns


_SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steno-spawn")


def popen_dying_with_parent(argv: list[str], **kw: Any) -> subprocess.Popen:
    """subprocess.Popen(dying_with_parent(argv), **kw) from one thread that lives as long as the process: the death
    signal follows the thread that started the child, so one started from a thread that then ends (a timer's, a
    pool's worker retired, a push's own thread) would be killed with that thread, mid-push."""
    return _SPAWNER.submit(subprocess.Popen, dying_with_parent(argv), **kw).result()


WORKING_DIR = "rclone"       # in the state folder: the push's copy of the admin's rclone config (working_config)
_WORKING_LOCK = threading.Lock()
# under _WORKING_LOCK, by state folder: rclone rcds started with the copy and not closed yet (a push running), and
# the state folders whose last start or reload left no push using the copy (forget_unused_copy): there, until a
# reload pushes through rclone again, the last rclone running removes it when it closes, each time (a push whose
# job was asked for before that reload, waiting for its turn to the same folder meanwhile, makes it again)
_RUNNING: dict[str, int] = {}
_UNUSED: set[str] = set()


_TOKEN = re.compile(rb"^[ \t]*token[ \t]*[=:]")


def _tokens(text: bytes) -> dict[bytes, bytes]:
    """Each remote's (INI section's) ``token = ...`` line in an rclone config, by the section's name (the first)."""
    found: dict[bytes, bytes] = {}
    section = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(b"[") and s.endswith(b"]"):
            section = s[1:-1].strip()
        elif section is not None and _TOKEN.match(line):
            found.setdefault(section, line.strip())
    return found


def _carried(admins: bytes, last: bytes, work: bytes) -> bytes:
    """The admin's rclone config as it is, but for the ``token`` line of each remote whose token the admin did not
    change since ``last`` (the admin's file as last copied): the copy's (``work``), the login rclone renewed."""
    before, renewed, now = _tokens(last), _tokens(work), _tokens(admins)
    out, section = [], None
    for line in admins.splitlines(keepends=True):
        s = line.strip()
        if s.startswith(b"[") and s.endswith(b"]"):
            section = s[1:-1].strip()
        elif (section is not None and _TOKEN.match(line) and section in renewed
              and before.get(section) == now.get(section) == line.strip()):
            line = renewed[section] + (line[len(line.rstrip(b"\r\n")):] or b"\n")
        out.append(line)
    return b"".join(out)


def _forget_copy(state_dir: str) -> None:
    """The copy (credentials) and its companion removed: the push no longer runs rclone with it. Every file of the
    folder goes (the folder is the copy's alone, 700): what a save cut short leaves beside it holds the same
    credentials, rclone's own ("rclone.conf<digits>", its temp file; "rclone.conf.old", the file it renames away
    before its temp file takes the name) and write_file's (".rclone.conf.<pid>.<hex>.tmp", the daemon killed in the
    middle). Nothing is followed: a symlink there is removed, not what it names; the folder itself a symlink (to
    another folder: listed through it, the files there were removed) is not ours, left alone. Never raises: a
    failure (a read-only state folder, an I/O error, a name busy) is one warning, and the daemon's start, its reload
    or the push goes on."""
    if not state_dir:
        return
    folder = Path(state_dir) / WORKING_DIR
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return                  # (none: nothing kept; a file of that name: not ours to remove)
    except OSError as e:
        if e.errno != errno.ELOOP:          # (ELOOP: a symlink of that name, not ours)
            log.warning("rclone: the copy of the rclone config in %s could not be looked at (%s): its credentials "
                        "may stay there", folder, e.strerror or e)
        return
    failed: OSError | None = None
    try:
        for name in os.listdir(fd):
            try:
                os.unlink(name, dir_fd=fd)
            except (FileNotFoundError, IsADirectoryError):
                pass            # (gone meanwhile; a folder: not the copy's, and not removed whole)
            except OSError as e:
                failed = failed or e
    except OSError as e:
        failed = failed or e
    finally:
        os.close(fd)
    if failed is not None:
        log.warning("rclone: the copy of the rclone config in %s could not be removed whole (%s): its credentials "
                    "may stay there", folder, failed.strerror or failed)


def forget_unused_copy(cfg: Config) -> None:
    """At the daemon's start and each reload: the copy of the admin's rclone config removed where no push will run
    rclone with it again: no rclone remote configured, or rclone.config_file emptied (working_config removes it
    itself once the admin's file is writable, when a push next runs; the copy of a file that is gone is kept, see
    there). Cheap when there is none (one look at the folder). Put off while a push runs rclone (a reload during a
    push: rclone saved a renewed login into the copy again after it was emptied, and that push's rclone lost its
    config file): done when the last of them closes, and again whenever the last one closes until a reload pushes
    through rclone again (a push asked for before this reload made the copy again after the sweep: it stayed until
    the next reload or start)."""
    with _WORKING_LOCK:
        if cfg.rclone.remotes and cfg.rclone.config_file:
            _UNUSED.discard(cfg.state.dir)
            return
        _UNUSED.add(cfg.state.dir)
        if not _RUNNING.get(cfg.state.dir):
            _forget_copy(cfg.state.dir)


def _rclone_started(state_dir: str) -> None:
    with _WORKING_LOCK:
        _RUNNING[state_dir] = _RUNNING.get(state_dir, 0) + 1


def _rclone_ended(state_dir: str) -> None:
    """One rclone of ``state_dir`` closed: the copy forgotten now when the last reload said no push uses it (and the
    last one ran)."""
    with _WORKING_LOCK:
        left = _RUNNING.get(state_dir, 1) - 1
        if left > 0:
            _RUNNING[state_dir] = left
            return
        _RUNNING.pop(state_dir, None)
        if state_dir in _UNUSED:
            _forget_copy(state_dir)


def working_config(source: str, state_dir: str) -> str:
    """The rclone config file the push's rclone runs with: the admin's ``source`` where rclone can save what it renews
    there (an OAuth store's login: OneDrive, Drive, Dropbox, Box: a new token, and at most providers a new refresh
    token, each time it renews; rclone writes a temp file beside it and renames it over it), else a copy of it in the
    daemon's state folder (its own folder, mode 700; the file 600). The admin's file under /etc is read-only to the
    daemon (the unit's ProtectSystem=strict; a folder of root's besides): each renewal was lost, every fs rclone
    opened began again from the admin's token, and a login server that takes a refresh token once (Box) refused the
    push as an expired login (OneDrive once that token's 90 days were over). The admin's file as last copied is kept
    beside the copy (source.conf, 600); when the admin's file changes (a remote added, a login reconnected) the copy
    is made again from it, each remote keeping the token rclone renewed where the admin's token for it is the one
    last copied (the admin's own where he changed it: reconnected). A token is carried by its remote's name alone: a
    remote the admin renames begins from the admin's token under its new name (a login server that takes a refresh
    token once refuses it: 'rclone config reconnect' it), as a name is what says which login a remote is; a token
    matched by its text instead could carry a login to a remote the admin pointed at another account. The copy and its companion are removed where the
    push no longer uses them (the admin's file writable), kept while the admin's file is gone or unreadable (rclone's
    own save of it renames it away for a moment; a chmod mistake): the renewed logins in it are the only good ones.
    ``source`` itself where it cannot be read or the
    copy made (said in a warning): rclone says then what is wrong with it, as before."""
    if os.access(source, os.W_OK) and os.access(os.path.dirname(os.path.abspath(source)), os.W_OK):
        with _WORKING_LOCK:
            _forget_copy(state_dir)
        return source
    try:
        raw = Path(source).read_bytes()
    except OSError:         # (gone too: kept, as the logins it holds are the only good ones, and rclone's own save
        return source       # renames the admin's file away for a moment: a push then would have lost them)
    if not state_dir:
        return source
    folder = Path(state_dir) / WORKING_DIR
    work, mark = folder / "rclone.conf", folder / "source.conf"
    with _WORKING_LOCK:
        try:
            last = mark.read_bytes() if not mark.is_symlink() else None
        except OSError:
            last = None
        if last == raw and work.is_file() and not work.is_symlink():
            return str(work)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            data = raw
            if last is not None and work.is_file() and not work.is_symlink():
                data = _carried(raw, last, work.read_bytes())
            write_file(work, data, 0o600)
            write_file(mark, raw, 0o600)
        except OSError as e:
            log.warning("rclone.config_file: no copy of %s in %s (%s): a login rclone renews is not kept",
                        source, folder, e.strerror or e)
            return source
    return str(work)


class Rcd:
    """One ``rclone rcd`` child for one push: rclone's remote-control API on a loopback port, its login
    random and passed in the environment (never on the command line). Every operation is one HTTP
    request to it; its stderr is kept as a bounded tail for messages; close() ends it."""

    def __init__(self, cfg: Config, remote: RcloneRemote) -> None:
        self.remote = remote
        self.where = f"rclone:{remote.name}"
        self.timeout = max(60.0, remote.timeout * 4)
        t = f"{max(1, int(remote.timeout))}s"
        self.config_file = cfg.rclone.config_file       # the admin's; rclone runs with working_config()'s copy
        self._state_dir = cfg.state.dir
        self._counted = False                           # in _RUNNING (start() to close())
        self._argv = [cfg.rclone.command, "--config", cfg.rclone.config_file, "--contimeout", t, "--timeout", t,
                      "--low-level-retries", "1", "--retries", "1", "--ask-password=false",
                      "--ignore-checksum",     # the push compares the store's hash itself (once, not twice)
                      # a copy's call answers when the copy has ended (Rcd.begin), which over a slow uplink or a
                      # bandwidth limit can be hours after the call: rclone's 1 h limit on writing an answer lost it
                      "--rc-server-write-timeout", "0"]
        if remote.bandwidth_limit_kbps:
            self._argv += ["--bwlimit", f"{remote.bandwidth_limit_kbps}K"]
        self._auth = "Basic " + base64.b64encode(f"steno:{secrets.token_hex(16)}".encode()).decode()
        self.port = 0
        self.binary: tuple | None = None    # the rclone program start() runs: its path, file and time (_binary)
        self.proc: subprocess.Popen | None = None
        self._err = bytearray()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start rclone rcd and wait until it answers. rclone picks its loopback port itself (and says which): a
        port picked here and handed to it is free for a moment in between, when any local user (the touchscreen's)
        could take it and be sent the push (the fs of each request, a connection string's password with it, and
        the meetings' files)."""
        self.port = 0
        if not self._counted:               # (counted from before its copy is made: a reload then waits for it)
            self._counted = True
            _rclone_started(self._state_dir)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self._argv[2] = working_config(self.config_file, self._state_dir)
        user, _, pw = base64.b64decode(self._auth.split()[1]).decode().partition(":")
        env = {**rclone_environment(os.environ), "RCLONE_RC_USER": user, "RCLONE_RC_PASS": pw}
        found = shutil.which(self._argv[0], path=env.get("PATH"))
        if found is None:
            raise RcloneError(f"{self.where}: cannot run {self._argv[0]} (not found); install Debian's rclone "
                              f"package", True)
        if shutil.which(SETPRIV, path=env.get("PATH")) is None:
            # (rclone is there: what is missing is the program that starts it, dying_with_parent())
            path = safeparse.printable(env.get("PATH") or "")[:200]
            raise RcloneError(f"{self.where}: cannot start {self._argv[0]}: {SETPRIV} is not in the daemon's PATH "
                              f"({path}; it starts rclone so that rclone ends with the daemon: Debian's util-linux "
                              f"package)", True)
        self.binary = _binary(found)
        try:
            self.proc = popen_dying_with_parent(self._argv + ["rcd", "--rc-addr", "127.0.0.1:0", "--rc-serve"],
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE, env=env, close_fds=True,
                                                start_new_session=True)
        except OSError as e:
            raise RcloneError(f"{self.where}: cannot run {self._argv[0]} ({e.strerror}); install Debian's "
                              f"rclone package", True) from e
        self._reader = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True,
                                        name="rclone-stderr")
        self._reader.start()
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise explain(self.proc.returncode, self.stderr(), self.where)
            if not self.port and (said := _SERVING.search(self.stderr())):
                self.port = int(said[1])
            try:
                if self.port:
                    self.call("rc/noop", {})
                    return
            except (RcloneError, OSError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RcloneError(f"{self.where}: rclone did not start: {last_line(self.stderr())}") from None
            time.sleep(0.01)            # (it answers ~0.1 s after its start)

    def _drain(self, f: io.BufferedReader) -> None:
        for chunk in iter(lambda: f.read1(4096), b""):      # (what is there: start() waits for the port's line)
            self._err += chunk
            if len(self._err) > STDERR_KEEP:
                del self._err[: len(self._err) - STDERR_KEEP]

    def stderr(self) -> str:
        """rclone's stderr (its tail), the admin's config file named where it names the copy it runs with."""
        text = self._err.decode("utf-8", "replace")
        return text if self._argv[2] == self.config_file else text.replace(self._argv[2], self.config_file)

    def connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        """A connection to rclone rcd, Nagle off (an upload's small chunk frames must not wait for ACKs)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.timeout)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            conn.close()
            raise self.stopped(e) from e
        return conn

    def stopped(self, e: Exception) -> RcloneError:
        """A request rclone did not answer (``e``: its connection refused or closed): rclone stopped answering; or,
        when it has ended for a config file it cannot load (at the first call that opens a remote), that, said."""
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.5)             # (its exit closed the connection: a moment, at most)
            if self.proc.poll() is not None and self._reader is not None:
                self._reader.join(1)            # (its last words read)
            if self.proc.poll() is not None and (said := _config_unloadable(self.stderr(), self.where,
                                                                            self.config_file)):
                return said
        return RcloneError(f"{self.where}: rclone stopped answering ({e})")

    def headers(self) -> dict[str, str]:
        return {"Authorization": self._auth}

    def call(self, method: str, params: dict, *, missing_ok: bool = False, locked_again: bool = True,
             listing: str | None = None) -> dict | None:
        """One remote-control call; its JSON answer, None when missing_ok and the path is not there. ``listing``: the
        folder an operations/list reads (for its error past MAX_ENTRIES, see _body). An operation
        the store refused because a file or folder there was locked (WebDAV's 423: a lock another client holds, or
        one the server takes for a moment while it answers another request; rclone's own retries of it are off,
        see --low-level-retries) was not done: it is made again for up to LOCK_WAIT seconds (not when
        ``locked_again`` is False: a move whose free destination was looked up before, which a lock there may mean
        someone is taking)."""
        if not locked_again or not method.startswith(("operations/", "sync/")):
            return self._call(method, params, missing_ok=missing_ok, listing=listing)
        return self.unlocked(lambda: self._call(method, params, missing_ok=missing_ok, listing=listing), method)

    def unlocked(self, fn: Callable[[], Any], what: str) -> Any:
        """fn() (an operation on the store), made again while the store answers 423 Locked, until LOCK_WAIT seconds
        have passed: then its error says the store holds a lock."""
        pause, deadline = 0.05, time.monotonic() + LOCK_WAIT
        while True:
            try:
                return fn()
            except RcloneError as e:
                left = deadline - time.monotonic()
                if not e.locked or left <= 0:
                    raise
                log.debug("%s: %s: locked on the store, again in %.2fs", self.where, what, min(pause, left))
                time.sleep(min(pause, left))
                pause *= 2

    def _call(self, method: str, params: dict, *, missing_ok: bool = False, listing: str | None = None
              ) -> dict | None:
        return self.end(self.begin(method, params), method, missing_ok=missing_ok, listing=listing)

    def begin(self, method: str, params: dict) -> http.client.HTTPConnection:
        """A remote-control call sent, its answer not awaited: end() reads it (it has come once the connection is
        readable). rclone runs the call meanwhile, as long as it takes (a copy: until the store has the file; no
        job to ask about), and stops it when the connection closes (or its ``_group`` is stopped)."""
        conn = self.connection()
        try:
            conn.request("POST", f"/{method}", body=json.dumps(params).encode(),
                         headers={**self.headers(), "Content-Type": "application/json"})
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self.stopped(e) from e
        return conn

    def end(self, conn: http.client.HTTPConnection, method: str, *, missing_ok: bool = False,
            listing: str | None = None) -> dict | None:
        """The answer of a call begin() sent (see call()); the connection closed."""
        try:
            try:
                r = conn.getresponse()
                body = self._body(r, listing)
            except (OSError, http.client.HTTPException) as e:
                raise self.stopped(e) from e
            return self.answer(r.status, body, missing_ok=missing_ok, write=method in WRITES)
        finally:
            conn.close()

    @staticmethod
    def _body(r: http.client.HTTPResponse, listing: str | None) -> bytes:
        """An answer's body (at most OUTPUT_LIMIT + 1 bytes); a listing's only up to MAX_ENTRIES entries: past them,
        too_many_entries(``listing``) and the rest not read (rclone answers a folder's listing whole: someone's
        folder of a million files is ~100 MB of JSON, which read and parsed here outgrew a recorder's memory)."""
        if listing is None or r.status != 200:
            return r.read(OUTPUT_LIMIT + 1)
        body, entries = bytearray(), 0
        while len(body) <= OUTPUT_LIMIT and (chunk := r.read(1 << 20)):
            start = max(0, len(body) - len(ENTRY_KEY) + 1)      # (a key cut between two chunks counts once)
            body += chunk
            entries += body.count(ENTRY_KEY, start)
            if entries > targets.MAX_ENTRIES:
                raise targets.too_many_entries(listing)
        return bytes(body)

    def answer(self, status: int, body: bytes, *, missing_ok: bool = False, write: bool = False) -> dict | None:
        """A remote-control answer as a dict, or the explained error it carries (``write``: of a write, see explain)."""
        if len(body) > OUTPUT_LIMIT:
            raise RcloneError(f"{self.where}: rclone's answer is larger than {OUTPUT_LIMIT} bytes", True)
        data = _answer_json(body)
        if status == 200 and not data.get("error"):      # (job/status answers "error": "" when it has none)
            return data
        if missing_ok and status == 404:
            return None
        return self.fail(str(data.get("error") or f"HTTP {status}"), status, write=write)

    def fail(self, err: str, status: int = 500, *, write: bool = False) -> "typing.NoReturn":
        raise explain(3 if status == 404 else 0, err, self.where, write=write)

    def close(self) -> None:
        """End rclone rcd (and anything it started); reap it. No request goes to its port after (a request of a
        thread still running: the port is free for any local program to take once rclone has ended, so it is
        forgotten before)."""
        self.port = 0
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(2)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        if self._counted:
            self._counted = False
            _rclone_ended(self._state_dir)


def config_problems(cfg: Config) -> list[str]:
    """What is wrong with the rclone config file the remotes need (missing, readable by others), and credentials
    outside it: a remote given as a connection string with its login in it, in the daemon's config file (for settings:
    an admin may copy it around, check-config prints it, the package leaves it readable by the service's group).
    Said without the credential."""
    if not cfg.rclone.remotes:
        return []
    problems = [f"rclone.remotes[{i}].remote: holds a credential (a password, token or key in the connection "
                f"string), and the daemon's config file is for settings (other users may read it): make that remote "
                f"in rclone.config_file ('rclone --config {cfg.rclone.config_file} config') and name it here"
                for i, r in enumerate(cfg.rclone.remotes) if safeparse.redact(r.remote) != r.remote]
    path = cfg.rclone.config_file
    try:
        st = os.stat(path)
    except OSError as e:
        return problems + [f"rclone.config_file: {path}: {e.strerror} (make it with 'rclone --config {path} config')"]
    if st.st_mode & (stat_mod.S_IRWXG | stat_mod.S_IRWXO):     # (its group too, as SMB's password file)
        problems.append(f"rclone.config_file: {path} holds credentials and other users can read it "
                        f"(mode {stat_mod.S_IMODE(st.st_mode):o}); chmod 600 it (owner: the service user)")
    return problems
