"""An SMB share as an export Target (smbprotocol): the engine writes into it as into a folder.

Paths are relative to ``\\\\server\\share\\<remote.path>``. What is SMB-specific lives here: one
connection that is never silently made again (a lost connection fails the call), pipelined writes
(PIPELINE x CHUNK bytes in flight, smbwire's zero-copy signed WRITEs), pipelined read-back on a
second connection (a second smbd process, beside the upload; a big file is read back while it is
written, each range once the server answered its WRITE, checked by CRC-32 before the rename), temp files that
survive a drop so a big recording resumes inside the file, temp names that carry host, pid and a
random tag, and a rename that never replaces.
"""
from __future__ import annotations

import collections
import functools
import logging
import os
import re
import threading
import time
import uuid
from typing import Any, Callable

from isal.isal_zlib import crc32

from steno_exportd.config import SmbRemote
from steno_exportd.engine import targets
from steno_exportd.engine.identity import host_folder
from steno_exportd.engine.targets import MAX_ENTRIES, TEMP_PREFIX, EntryStat, check_rel
from steno_exportd.errors import CancelledJob, InvalidArgument, NameTaken, TargetError, VerifyError
from steno_exportd.safeparse import printable
from steno_exportd.smb import wire as smbwire
from steno_exportd.smb.client import (SmbError, Throttle, explain, is_connection_error, is_negotiate_failure,
                                      is_silent, probe_smb1_only, read_password)

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024            # largest write request (capped by the server's max write)
READ_CHUNK = 2 * 1024 * 1024       # read-back size: 8 MiB responses cost 5x the system time here
                                   # (each is a fresh allocation: page faults), 1-2 MiB are cheapest
PIPELINE = 4                       # CHUNKs in flight per file (4 x 8 MiB: as fast as 8 here, half the memory)
FAST_WRITES = True                 # smbwire: hand-packed, zero-copy WRITE requests
RESUME_MIN = 64 * 1024 * 1024      # a file this big cut by a drop is resumed where it stopped, not re-sent
RESUME_ALIGN = 1024 * 1024         # resume offsets are whole MiB
RESUME_BACKOFF = 2 * PIPELINE * CHUNK   # resume this far before a cut temp file's end: the writes in flight
                                        # at the drop (PIPELINE x CHUNK) may have landed out of order (holes)

LIST_BYTES = 1024 * 1024           # a folder listing asked for in one answer (about 5,000 entries)
RENAME_WAIT = 20.0                 # seconds a rename refused "access denied" (a file in the folder open in another
                                   # program) is tried again
SMALL = 1024 * 1024                # a file up to this size is written in one round trip (create, write,
                                   # rename, close) from a copy of its bytes

_FILE_ATTRIBUTE_DIRECTORY = 0x10
_FILE_ATTRIBUTE_REPARSE_POINT = 0x400
_STATUS_ACCESS_DENIED = 0xC0000022
_STATUS_END_OF_FILE = 0xC0000011
_STATUS_OBJECT_NAME_COLLISION = 0xC0000035
_STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
_STATUS_SHARING_VIOLATION = 0xC0000043
_NOT_FOUND = (0xC0000034, 0xC000003A, 0xC0000103)   # name / path not found, a file where a folder should be


def _mapped(method: Callable) -> Callable:
    """Map any smbprotocol/socket error escaping ``method`` (e.g. from a file's close) to SmbError."""

    @functools.wraps(method)
    def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
        try:
            return method(self, *a, **kw)
        except (CancelledJob, InvalidArgument):
            raise
        except Exception as e:
            failure = (self if isinstance(self, SmbTarget) else self._t)._failure(e)
            if failure is e:
                raise
            raise failure from e
    return wrapper


_Exists = NameTaken         # a rename found its destination taken (another writer was first)


def _random_tag() -> str:
    """Six random hex digits, the first a letter: after '<host>-<pid>-' in a temp name it never reads as a pid's
    digits (with an all-digit tag, pi-1-2's temp file of pid 123456 was pi-1's of pid 2)."""
    h = uuid.uuid4().hex
    return "abcdef"[int(h[0], 16) % 6] + h[1:6]


def _kind(attributes: int) -> str:
    if attributes & _FILE_ATTRIBUTE_REPARSE_POINT:
        return "symlink"                # a symlink/junction on the server: never followed
    return "dir" if attributes & _FILE_ATTRIBUTE_DIRECTORY else "file"


def _stats(entries: Any, rel: str) -> dict[str, EntryStat]:
    """name -> EntryStat of a folder's listing (QUERY_DIRECTORY answers); TargetError past MAX_ENTRIES."""
    out = {}
    for e in entries:
        name = e["file_name"].get_value().decode("utf-16-le")
        if name in (".", ".."):
            continue
        if len(out) >= MAX_ENTRIES:
            raise targets.too_many_entries(rel)
        kind = _kind(e["file_attributes"].get_value())
        out[name] = EntryStat(kind, e["end_of_file"].get_value() if kind == "file" else 0,
                              e["last_write_time"].get_value().timestamp())
    return out


def _set_rename(tr: Any, dst: str, replace: bool) -> None:
    """Add a rename to ``dst`` (relative to the share) to a compound request on the file."""
    from smbclient._io import set_info
    from smbprotocol.file_info import FileRenameInformation
    info = FileRenameInformation()
    info["replace_if_exists"] = replace
    info["file_name"] = dst
    set_info(tr, info)


def _disconnect(cache: dict, log_off: bool) -> None:
    """End every connection of ``cache`` (emptied): logged off first where ``log_off`` and its server still answers;
    one whose log-off fails, or without one, is closed all the same (its socket and receive thread end)."""
    for name in list(cache):
        conn = cache.pop(name)
        if log_off:
            try:
                conn.disconnect()
                continue
            except Exception as e:  # noqa: BLE001 - closed either way, below
                log.info("SMB connection %s closed without its log-off: %s", name, printable(str(e))[:200])
        try:
            conn.disconnect(close=False)
        except Exception as e:  # noqa: BLE001 - dropped either way
            log.debug("closing SMB connection %s: %s", name, e)


class SmbTarget(targets.Target):
    """A folder on an SMB share (remote.path), reached with smbprotocol; the engine's Target protocol (known_names
    and read_small: its defaults, the share is listed and a file looked up before it is read)."""

    max_file_size: int | None = None
    atomic_dir_rename = True            # a folder rename is one request, atomic on the server
    marks_partial = True                # people browse the NAS: someone's own 'Notes.partial' may sit beside ours
                                        # (our marker in ours: one small write and one removal per session)

    def __init__(self, remote: SmbRemote, password: str | None = None, *, name: str = "",
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        self.remote = remote
        self._cancelled = cancelled       # the job was cancelled: a wait on the second connection stops (CancelledJob)
        self.name = name or f"smb:{remote.name}"
        self.throttle = Throttle(remote.bandwidth_limit_kbps) if remote.bandwidth_limit_kbps else None
        self._password = password
        self._cache: dict = {}
        self._connected = False
        self.max_write = CHUNK
        self.wire = False                  # smbwire.install() said ours are in (at connect)
        self.max_read = READ_CHUNK
        self._host = host_folder()         # the host name as a safe name (the kernel takes any bytes, "/" too)
        self.tag = f"{self._host}-{os.getpid()}-{_random_tag()}"
        self.manifests_saved: set[str] = set()  # the folders whose manifest.json this push saved (manifest.saved())
        self._reader: SmbTarget | None = None
        self._reader_lock = threading.Lock()
        self._watcher: threading.Thread | None = None     # drops the second connection at the job's cancel
        self._closing = threading.Event()
        self.dropped = False               # (a second connection) dropped at the job's cancel: its errors are that
        self._credit_lock = threading.Lock()    # one sender at a time takes credits by _with_credits

    def cancelled(self) -> bool:
        """The job was cancelled, and no unstoppable() block is open (a second connection asks its first). Inside one
        (Target.unstoppable) the run's last manifest save is written to its end, a manifest over SMALL with its
        read-back beside the writes on a second connection (made again when the cancel dropped the one there was),
        and the folders it moves into place are renamed. The engine holds it once the sessions in flight have
        ended; the cancel watcher drops the second connection after it."""
        return self.stoppable() and self._cancelled()

    reads_while_writing = True         # a big file is read back while written (export.verify: SmbKind.open sets it;
                                       # the engine clears it for a job without verify)
    save_every = 0.0                   # folders are renamed into place: saved after every session
    checks = 1                         # one read-back at a time beside the next session's writes (a NAS many
                                       # recorders share)

    @property
    def resume_min(self) -> int:
        return RESUME_MIN

    def unc(self, rel: str) -> str:
        """UNC path of ``rel`` (relative to the remote's folder)."""
        parts = [p for p in (self.remote.path.replace("/", "\\").strip("\\"),) if p]
        parts += check_rel(rel)
        return f"\\\\{self.remote.server}\\{self.remote.share}" + "".join("\\" + p for p in parts)

    def share_path(self, rel: str) -> str:
        """``rel`` as the server names it: relative to the share, backslashes."""
        return "\\".join([p for p in self.remote.path.replace("/", "\\").split("\\") if p] + check_rel(rel))

    def transact(self, rel: str, actions: Callable[[Any], None] = lambda tr: None, *, folder: bool = False,
                 credits: int = 0, **open_args: Any) -> Any:
        """One compound request on ``rel``: CREATE, what ``actions(tr)`` adds, CLOSE; the transaction
        (``.raw.fd``: what the CREATE answered, ``.results``: the answers to the actions). ``credits``: what it
        charges, waited for when other threads' requests hold them (_with_credits).

        One round trip, where smbclient's own calls take two or three (lstat, rename, small writes)."""
        from smbclient._io import SMBDirectoryIO, SMBFileTransaction, SMBRawIO
        from smbprotocol.exceptions import SMBOSError

        def run(**kw: Any) -> Any:
            raw = (SMBDirectoryIO if folder else SMBRawIO)(self.unc(rel), **open_args, **kw)
            tr = SMBFileTransaction(raw)
            actions(tr)
            try:
                if credits:
                    self._with_credits(credits, tr.commit)
                else:
                    tr.commit()
            except SMBOSError:
                if not raw.closed:          # a request after the create failed: the file stays open
                    raw.close()
                raise
            return tr
        return self._call(run)

    # -- connection -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, log on and make sure the remote's folder exists; SmbError on failure."""
        if self._connected:
            return
        import smbclient
        from smbclient import ClientConfig

        r = self.remote
        password = self._password if self._password is not None else read_password(r.password_file)
        self._password = password
        if not r.username:
            # Guest sessions cannot sign, so the negotiate check must be off (process-wide setting).
            ClientConfig().require_secure_negotiate = False
        user = (f"{r.domain}\\{r.username}" if r.domain and r.username else r.username) or "guest"
        self.wire = smbwire.install()      # our receive loop, signature check and writes: only on the smbprotocol
        try:                               # they were written for
            session = smbclient.register_session(
                r.server, username=user, password=password or "", port=r.port,
                encrypt=True if r.require_encryption else None, connection_timeout=r.timeout,
                connection_cache=self._cache, auth_protocol="ntlm",
                require_signing=bool(r.username))
            conn = session.connection
            if self.wire:
                smbwire.tune(conn)
            # A server that stops answering (not closing) is declared dead after ~2x this, not 20 min.
            conn._receive_timeout = max(5, int(r.timeout * 2))
            self.max_write = max(64 * 1024, min(CHUNK, conn.max_write_size))
            self.max_read = max(64 * 1024, min(READ_CHUNK, conn.max_read_size))
            if r.require_encryption and not session.encrypt_data:
                raise SmbError(f"{r.server} did not agree to SMB3 encryption (require_encryption = true)", True)
            try:
                smbclient.stat(self.unc(""), **self._kw())
            except Exception as e:
                raise explain(e, r) from e
        except SmbError:
            self.close()
            raise
        except Exception as e:
            self.close()
            if is_silent(e):
                # TCP accepted, no SMB reply: not an SMB1 server (those answer or hang up), nothing to
                # probe, and not retried within this job (each try would wait the whole timeout again).
                raise SmbError(f"{r.server}:{r.port} is not answering: it accepted the connection but sent "
                               f"no SMB reply (timed out after {r.timeout:g}s)", True) from e
            if is_negotiate_failure(e) and "timeout" not in str(e).lower() and probe_smb1_only(r):
                raise SmbError(f"{r.server} speaks only SMB1; SMB2 or later is needed", True) from e
            raise explain(e, r) from e
        self._connected = True

    def close(self) -> None:
        """Close both connections; safe to call twice. Each logs off where its server still answers; one whose
        server has gone (dropped, or stopped answering: its receive thread ends the connection while the log-off
        waits) is closed all the same, in one line. smbclient's reset_connection_cache logged that as a warning
        with a traceback, depending on which came first (a server stopped mid-push: about 1 test run in 8 here)."""
        self._closing.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()
        with self._reader_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        _disconnect(self._cache, log_off=True)
        self._connected = False

    def alive(self) -> bool:
        """True while the connection is up (never made again silently)."""
        if self._connected and not all(c.transport.connected and c._t_exc is None for c in self._cache.values()):
            self._connected = False
        return self._connected

    def _kw(self) -> dict:
        return {"port": self.remote.port, "connection_cache": self._cache,
                "connection_timeout": self.remote.timeout}

    def _live_kw(self) -> dict:
        """Keyword arguments for a call on the live connection; never lets smbclient reconnect silently."""
        if not self.alive():
            raise SmbError(f"{self.remote.server}:{self.remote.port} connection lost")
        return self._kw()

    def _gone(self, e: BaseException) -> None:
        if is_connection_error(e):
            self._connected = False

    def _call(self, fn: Callable, *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw, **self._live_kw())
        except CancelledJob:
            raise
        except Exception as e:
            failure = self._failure(e)
            if failure is e:
                raise
            raise failure from e

    def _failure(self, e: Exception) -> Exception:
        """What a call failing with ``e`` on this connection raises: CancelledJob when the connection was dropped at
        the job's cancel (_drop_reader), ``e`` itself when it says what failed (a TargetError), else the SmbError a
        person can act on (the connection marked lost when it is)."""
        if self.dropped:
            return CancelledJob("cancelled")
        if isinstance(e, TargetError):
            return e
        self._gone(e)
        return explain(e, self.remote)

    def _await_credits(self, conn: Any, need: int) -> int:
        """Wait until ``conn`` has ``need`` credits (the answers to other threads' requests give them back): how
        many it has; SmbError when the connection is lost or none come back for as long as its receive timeout."""
        wait = max(5.0, self.remote.timeout * 2)
        end = time.monotonic() + wait
        while (avail := _avail(conn)) < need:
            if self.cancelled():
                raise CancelledJob("cancelled")
            if not self.alive():
                raise SmbError(f"{self.remote.server}:{self.remote.port} connection lost")
            if time.monotonic() > end:
                raise SmbError(f"{self.remote.server} stopped answering: no credits for a request for {wait:g}s")
            time.sleep(0.002)
        return avail

    def _with_credits(self, need: int, fn: Callable, *a: Any, **kw: Any) -> Any:
        """fn(*a, **kw): requests charging ``need`` credits, sent once the connection has them. The second connection
        is shared by threads (the read-back beside the writes, the engine's read-backs): one sender at a time, so no
        other takes the credits between the look and the send (smbprotocol's "requires N credits" failure)."""
        with self._credit_lock:
            self._await_credits(self._cache_conn(), need)
            return fn(*a, **kw)

    def _drop_reader(self) -> None:
        """Close the second connection's socket at once, no log-off (a stalled server would not answer one): every
        request waiting there fails now (CancelledJob), not after the connection's receive timeout."""
        with self._reader_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.dropped = True
            cache, reader._cache = reader._cache, {}
            reader._connected = False
            _disconnect(cache, log_off=False)

    def _read_connection(self) -> "SmbTarget":
        """A second connected target on the same folder (its own TCP connection and smbd process); none after the
        job's cancel (CancelledJob: the one it had was dropped). The cancel is looked at under the lock the watcher
        drops it under: a cancel that came before the watcher's drop is seen here, one after it finds the connection
        made (looked at before the lock, the watcher could drop the one there was and end between the look and a
        new connection, which nothing dropped then: a NAS that stopped answering on it held the push until its
        receive timeout)."""
        with self._reader_lock:
            if self.cancelled():
                raise CancelledJob("cancelled")
            if self._reader is None or not self._reader.alive():
                if self._reader is not None:
                    self._reader.close()
                self._reader = None
                reader = SmbTarget(self.remote, password=self._password, name=self.name, cancelled=self.cancelled)
                reader.connect()
                self._reader = reader
                if self._watcher is None:
                    self._watcher = threading.Thread(target=self._heed_cancel, name="steno-smb-cancel", daemon=True)
                    self._watcher.start()
            return self._reader

    def _heed_cancel(self) -> None:
        """Beside the push while it has a second connection: at the job's cancel, that connection is dropped
        (_drop_reader). Whatever waits there (the read-back beside the writes, the engine's read-backs after a
        rename: a first read, an open, a pipelined read) ends at once, not after the connection's receive timeout
        when the server stopped answering on it."""
        while not self._closing.wait(0.05):
            if self.cancelled():
                self._drop_reader()
                return

    # -- the Target protocol ----------------------------------------------------------------------
    def lstat(self, rel: str) -> EntryStat | None:
        from smbprotocol import exceptions as ex
        from smbprotocol.open import CreateOptions, FilePipePrinterAccessMask
        try:
            # the CREATE answer carries attributes, size and times: no queries needed
            tr = self.transact(rel, mode="r", share_access="rwd",
                                desired_access=FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
                                create_options=CreateOptions.FILE_OPEN_REPARSE_POINT)
        except SmbError as e:
            cause = e.__cause__
            if isinstance(cause, (ex.ObjectNameNotFound, ex.ObjectPathNotFound)) or \
                    getattr(cause, "ntstatus", None) in _NOT_FOUND:
                return None
            raise
        fd = tr.raw.fd
        kind = _kind(fd.file_attributes)
        return EntryStat(kind, fd.end_of_file if kind == "file" else 0, fd.last_write_time.timestamp())

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    @_mapped
    def scandir(self, rel: str) -> dict[str, EntryStat]:
        """One round trip (open, list, close) unless the folder is too big for one answer."""
        from smbprotocol.file_info import FileInformationClass
        from smbprotocol.open import QueryDirectoryFlags
        limit = min(LIST_BYTES, self._cache_conn().max_transact_size)

        def query(tr: Any) -> None:
            tr += tr.raw.fd.query_directory("*", FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION,
                                            flags=QueryDirectoryFlags.SMB2_RESTART_SCANS, max_output=limit, send=False)
        entries = self.transact(rel, query, folder=True, share_access="rwd").results[0]
        # each entry: 80 bytes, its name, padding to 8 (without the padding, an answer full of short names looked
        # complete: a folder of 60,000 was listed as its first 10,920)
        if sum((80 + len(e["file_name"].get_value()) + 7) & ~7 for e in entries) > limit - 4096:
            return self._list_all(rel)          # maybe more than one answer holds: ask until the end
        return _stats(entries, rel)

    def folder_alive(self, rel: str) -> bool:
        """False when the folder cannot be read (the connection lost, the share or folder gone): one round trip
        asking for its first entry, not a listing of all (someone may keep thousands of files beside ours)."""
        from smbprotocol import exceptions as ex
        from smbprotocol.file_info import FileInformationClass
        from smbprotocol.header import NtStatus
        from smbprotocol.open import QueryDirectoryFlags

        def first(tr: Any) -> None:
            tr += tr.raw.fd.query_directory("*", FileInformationClass.FILE_NAMES_INFORMATION,
                                            flags=QueryDirectoryFlags.SMB2_RESTART_SCANS |
                                            QueryDirectoryFlags.SMB2_RETURN_SINGLE_ENTRY, max_output=4096,
                                            send=False)
        try:
            self.transact(rel, first, folder=True, share_access="rwd")
        except TargetError as e:        # (an empty folder, where a server lists no '.': read, nothing in it)
            cause = e.__cause__
            return isinstance(cause, ex.NoMoreFiles) or \
                getattr(cause, "ntstatus", None) == NtStatus.STATUS_NO_MORE_FILES
        except Exception:                   # noqa: BLE001 - whatever fails, the folder cannot be read
            return False
        return True

    def _list_all(self, rel: str) -> dict[str, EntryStat]:
        """A listing of many answers; TargetError past MAX_ENTRIES (someone else's folder may hold millions: each
        answer's entries are taken as they come, and the listing stops there)."""
        from smbclient._io import SMBDirectoryIO
        from smbprotocol.file_info import FileInformationClass

        def run(**kw: Any) -> dict[str, EntryStat]:
            with SMBDirectoryIO(self.unc(rel), share_access="rwd", **kw) as fd:
                return _stats(fd.query_directory("*", FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION), rel)
        return self._call(run)

    def _cache_conn(self) -> Any:
        return next(iter(self._cache.values()))

    def listdir(self, rel: str) -> list[str]:
        return sorted(self.scandir(rel))

    def mkdir(self, rel: str) -> None:
        """Make the folder (and missing parents); one request when only the last one is missing."""
        import smbclient
        parts = check_rel(rel)
        for i in range(len(parts), 0, -1):      # from the deepest: parents usually exist
            try:
                self._call(smbclient.mkdir, self.unc("/".join(parts[:i])))
            except SmbError as e:
                status = getattr(e.__cause__, "ntstatus", None)
                if status == _STATUS_OBJECT_PATH_NOT_FOUND and i > 1:
                    continue                    # a parent is missing: make it first
                if status != _STATUS_OBJECT_NAME_COLLISION:
                    raise
                sub = "/".join(parts[:i])
                st = self.lstat(sub)
                if st is None or st.kind != "dir":
                    raise TargetError(f"a {st.kind if st else 'entry'} is in the way of folder {sub}") from None
            for j in range(i + 1, len(parts) + 1):
                self._call(smbclient.mkdir, self.unc("/".join(parts[:j])))
            return

    def open_write(self, rel: str, *, resume: str | None = None) -> "_SmbWrite":
        return _SmbWrite(self, rel, resume)

    def open_read(self, rel: str, *, uncached: bool = False) -> "_SmbRead":
        # uncached: the read-back goes over a second connection (a second smbd process), so it runs
        # beside the upload of the next file and never shares a client-side cache with the writes
        return _SmbRead(self._read_connection() if uncached else self, rel)

    def rename(self, src: str, dst: str) -> None:
        """Rename; never replaces an existing ``dst`` (atomic on the server: of two racing, one wins).

        A folder with a file in it open in another program (a person browsing the NAS opened a recording of the
        session being finished) cannot be renamed: the server says "access denied". Tried again for up to
        RENAME_WAIT seconds (the person may close it); then a transient SmbError saying so (the push is tried again,
        the next one finishes the folder), not "no write permission". The server says "access denied" too when the
        rename is not permitted (the share's permissions): when no file in the folder is open elsewhere (_held_open),
        that permanent error at once, not a wait naming the wrong cause."""
        from smbprotocol.open import CreateOptions, FilePipePrinterAccessMask
        end = time.monotonic() + RENAME_WAIT
        looked = False
        while True:
            try:
                self.transact(src, lambda tr: _set_rename(tr, self.share_path(dst), False), mode="r",
                              share_access="rwd", desired_access=FilePipePrinterAccessMask.DELETE,
                              create_options=CreateOptions.FILE_OPEN_REPARSE_POINT)
                return
            except SmbError as e:
                status = getattr(e.__cause__, "ntstatus", None)
                if status == _STATUS_OBJECT_NAME_COLLISION:
                    raise _Exists(f"refusing to replace existing {dst}") from e
                if status != _STATUS_ACCESS_DENIED:
                    raise
                if not looked:
                    looked = True
                    if not self._held_open(src):
                        raise                   # "access denied ... (no write permission?)": permanent
                if time.monotonic() > end:
                    raise SmbError(f"{src} could not be renamed to {dst} on \\\\{self.remote.server}\\"
                                   f"{self.remote.share}: access denied, a file in it is probably open in another "
                                   f"program (someone browsing the NAS); tried for {RENAME_WAIT:g}s") from e
            if self.cancelled():
                raise CancelledJob("cancelled")
            time.sleep(0.5)

    def _held_open(self, rel: str) -> bool:
        """Whether a file in the folder ``rel`` is open in another program: an open of it for reading that shares
        nothing is refused "sharing violation" then (one listing, one round trip per file: the folder's own files; a
        session's folder has no deeper ones). False when the folder cannot be listed."""
        from smbprotocol.open import CreateOptions, FilePipePrinterAccessMask
        try:
            names = [n for n, st in self.scandir(rel).items() if st.kind == "file"]
        except TargetError:
            return False
        for name in names:
            try:
                self.transact(f"{rel}/{name}", mode="r", share_access=None,
                              desired_access=FilePipePrinterAccessMask.FILE_READ_DATA,
                              create_options=CreateOptions.FILE_OPEN_REPARSE_POINT)
            except SmbError as e:
                if getattr(e.__cause__, "ntstatus", None) == _STATUS_SHARING_VIOLATION:
                    return True
        return False

    def replace_error(self, e: SmbError, src: str, dst: str) -> TargetError:
        """What a failed rename of ``src`` over ``dst`` means: the server says "access denied" when
        another program holds ``dst`` open, and "name collision" when ``dst`` is a folder."""
        from smbprotocol.exceptions import SMBOSError
        from smbprotocol.open import FilePipePrinterAccessMask
        status = getattr(e.__cause__, "ntstatus", None)
        if status == _STATUS_OBJECT_NAME_COLLISION:
            st = self.lstat(dst)
            return TargetError(f"refusing to replace a {st.kind if st else 'folder'} on the target: {dst}")
        if status == _STATUS_ACCESS_DENIED:
            try:        # opening it as smbclient's rename does tells "in use" (a sharing violation) apart
                self.transact(dst, mode="r", share_access="rwd", desired_access=FilePipePrinterAccessMask.FILE_EXECUTE)
            except SmbError as probe:
                if getattr(probe.__cause__, "ntstatus", None) not in _NOT_FOUND:
                    return probe
        if status is not None:
            return explain(SMBOSError(status, self.unc(src), self.unc(dst)), self.remote)
        return e

    def remove(self, rel: str) -> None:
        import smbclient
        st = self.lstat(rel)
        if st is None:
            return
        self._call(smbclient.rmdir if st.kind == "dir" else smbclient.remove, self.unc(rel))

    def remove_tree(self, rel: str) -> None:
        targets.remove_tree(self, rel)

    @_mapped
    def free_space(self) -> int:
        import smbclient
        return self._call(smbclient.stat_volume, self.unc("")).caller_available_size

    def fsync_dir(self, rel: str) -> None:
        """Nothing to do: SMB has no folder flush; the server commits creates and renames itself."""

    def own_temp(self, name: str) -> bool:
        """Temp files this host's pushes leave after a drop (another host's, a person's, are not ours to remove): a
        name of _SmbWrite's temp names' shape, '<TEMP_PREFIX><host>-<pid>-<tag>-<final name>', with this host's name
        (pi-1-2's '.steno-tmp-pi-1-2-4011-beef00-x' is not pi-1's, nor '.steno-tmp-pi-1-notes.txt': their start
        alone is). The tag's first digit is a letter (_random_tag): pi-1-2's '...pi-1-2-123456-a12345-x' does not
        read as pi-1's pid 2 and tag 123456."""
        return re.fullmatch(rf"{re.escape(TEMP_PREFIX + self._host)}-\d+-[a-f][0-9a-f]{{5}}-.+", name, re.S) is not None

    # -- small files (the claim) ------------------------------------------------------------------
    def create_once(self, rel: str, data: bytes) -> bool:
        """Write a small file at ``rel`` unless one is there: False when another writer was first.

        Temp name, then a rename that never replaces: atomic on the server, so of several writers
        racing for one name exactly one gets it, and nobody ever sees it half written."""
        h = _SmbWrite(self, rel, None, replace=False)
        h.write(data)
        try:
            h.commit()
        except _Exists:
            return False
        return True


class _SmbWrite(targets.WriteHandle):
    """A file being written to a temp name, renamed over its final name on commit.

    A small file (up to SMALL) is kept in memory and goes in one round trip at commit: create,
    write, rename, close. A bigger one is written with up to PIPELINE x CHUNK bytes in flight:
    write() returns once its bytes are sent (copied into the socket), so the caller may reuse its
    buffer; the answers are collected as the window fills and by sync(), and the rename and close
    go in one round trip. A resumable handle's temp file is kept when the connection drops
    (nothing can remove it then); a resumed one continues that file from ``offset``.

    A big file written from its start is read back while it is written (_ReadBack, on the target's second
    connection), each range once the server has answered its WRITE; the commit waits for the last range and
    renames only when size and CRC-32 of what was read equal those of what was written (``crc``, the caller's CRC-32
    of the bytes it wrote: not hashed a second time here): then ``verified`` (the engine skips its read-back of the
    whole file after the rename). A small file and a resumed one (its kept part
    was not written through this handle) are read back by the engine as before.
    """

    def __init__(self, t: SmbTarget, rel: str, resume: str | None, replace: bool = True) -> None:
        self._t = t
        head, _, final = rel.rpartition("/")
        self._rel, self._replace = rel, replace
        ok = bool(resume) and resume.startswith(TEMP_PREFIX) and not {"/", "\\"} & set(resume) \
            and t.own_temp(resume)
        self.temp = resume if ok else f"{TEMP_PREFIX}{t.tag}-{final}"[:200]
        self.temp_rel = f"{head}/{self.temp}" if head else self.temp
        self.offset = 0
        self.verified = False
        self.done = False
        self._have = 0
        self._raw: Any = None
        self._sent = False                      # something may be on the server: abort() removes it
        self._small: bytearray | None = None if resume is not None else bytearray()
        self._inflight: collections.deque = collections.deque()
        self._inflight_bytes = 0
        self._back: _ReadBack | None = None     # the read-back beside the writes
        self.crc: int | None = None             # CRC-32 of every byte written, set by the caller before the commit
                                                # (the engine's, hashed beside the copy: checks_crc, WriteHandle)
        self._checked = False                   # the read-back matched: verified once renamed
        self.written_crc: int | None = None     # once verified: the CRC-32 of the whole file as written and read
        if ok:
            st = t.lstat(self.temp_rel)
            self._have = st.size if st is not None and st.kind == "file" else 0
            start = self._have - RESUME_BACKOFF
            self.offset = max(0, start - start % RESUME_ALIGN)
        self._pos = self.offset
        self.chunk = t.max_write                # 8 MiB writes: as many requests as smbclient sends
        if self._small is None:
            self._open()

    def _access(self) -> int:
        from smbprotocol.open import FilePipePrinterAccessMask as A
        access = A.FILE_WRITE_DATA | A.FILE_WRITE_ATTRIBUTES | A.FILE_WRITE_EA | A.DELETE   # DELETE: renamed open
        return access | (A.FILE_READ_DATA | A.FILE_READ_ATTRIBUTES if self.offset else 0)

    def _open(self) -> None:
        from smbclient._io import SMBRawIO

        back = not self.offset and self._t.reads_while_writing

        def open_raw(**kw: Any) -> Any:
            raw = SMBRawIO(self._t.unc(self.temp_rel), mode="r+b" if self.offset else "wb",
                           desired_access=self._access(), share_access="r" if back else None, **kw)
            raw.open()
            return raw
        self._sent = True
        self._raw = self._t._call(open_raw)
        fd = self._raw.fd
        self._fd, self._conn = fd, fd.connection
        self._sid, self._tid = fd.tree_connect.session.session_id, fd.tree_connect.tree_connect_id
        self._fast = FAST_WRITES and self._t.wire and smbwire.supported(self._raw)
        t = self._t
        self._step = t.throttle.chunk(t.max_write) if t.throttle else t.max_write
        if back:
            self._back = _ReadBack(t, self.temp_rel)

    @property
    def checks_crc(self) -> bool:
        """Read back beside the writes: the commit checks that against ``crc`` (WriteHandle)."""
        return self._back is not None

    def _avail(self) -> int:
        return self._conn.sequence_window["high"] - self._conn.sequence_window["low"]

    def _finish_one(self) -> None:
        req, recv, n = self._inflight.popleft()
        self._inflight_bytes -= n
        written = recv(req)
        if written != n:
            raise SmbError(f"short write: server took {written} of {n} bytes")
        if self._back is not None:              # answered, in order: the bytes up to here are the server's
            self._back.acked(self._pos - self._inflight_bytes)

    def from_file(self, src: Any, fd: int, st: os.stat_result) -> None:
        """Nothing: the bytes come through write() (pipelined here)."""

    def write(self, data: bytes | memoryview) -> None:
        if self._small is not None:
            if len(self._small) + len(data) <= min(SMALL, self._t.max_write):
                self._small += data             # a copy: the caller reuses its buffer
                if self._t.throttle:
                    self._t.throttle.spend(len(data))
                return
            pending, self._small = self._small, None
            self._open()
            if pending:
                self._send(pending)
        self._send(data)

    @_mapped
    def _send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        throttle = self._t.throttle
        while view:
            n = min(len(view), self._step)
            need = (n - 1) // 65536 + 1
            while self._inflight and (self._inflight_bytes + n > PIPELINE * CHUNK or self._avail() < need + 2):
                self._finish_one()       # (+2: the verifier's renames and closes share this connection)
            if self._avail() < need:     # window smaller than one full write: shrink it
                need = max(1, self._avail() - 2)
                n = min(n, need * 65536)
            grow = need if self._avail() - need < need * PIPELINE else 0
            try:
                if self._fast:
                    req = smbwire.send_write(self._raw, view[:n], self._pos, need + grow)
                    recv = self._fd._write_response
                else:
                    msg, recv = self._fd.write(bytes(view[:n]), offset=self._pos, send=False)
                    req = self._conn.send(msg, sid=self._sid, tid=self._tid, credit_request=need + grow)
            except ValueError:
                if not self._inflight:    # another thread took the credits meanwhile: wait for ours
                    raise
                self._finish_one()
                continue
            self._inflight.append((req, recv, n))
            self._inflight_bytes += n
            view = view[n:]
            self._pos += n
            if self._back is not None:          # answers already here: their ranges go to the read-back now
                while self._inflight and self._inflight[0][0].response_event.is_set():
                    self._finish_one()
            if throttle:
                throttle.spend(n)

    @_mapped
    def sync(self) -> None:
        """Wait until the server has taken every byte sent (its answers to the writes)."""
        if self._raw is None:
            return
        while self._inflight:
            self._finish_one()
        if self._have > self._pos:        # a resumed temp file longer than the source now is
            self._raw.truncate(self._pos)
            self._have = self._pos
        self._raw._offset = self._pos
        self._fd.end_of_file = max(self._fd.end_of_file, self._pos)

    def commit(self) -> None:
        """Rename over ``rel`` (an existing file is replaced, a folder never; with replace=False nothing
        is: _Exists); the temp file goes on failure."""
        from smbclient._io import SMBFileTransaction
        t = self._t
        dst = t.share_path(self._rel)
        try:
            if self._raw is None:       # create, write, rename, close: one round trip
                data = bytes(self._small or b"")

                def add(tr: Any) -> None:
                    if data:
                        tr += tr.raw.fd.write(data, 0, send=False)
                    _set_rename(tr, dst, self._replace)
                self._sent = True
                written = t.transact(self.temp_rel, add, mode="wb", desired_access=self._access()).results
                if data and written and written[0] != len(data):
                    raise SmbError(f"short write: server took {written[0]} of {len(data)} bytes")
            else:
                self.sync()
                self._check()
                tr = SMBFileTransaction(self._raw)
                _set_rename(tr, dst, self._replace)
                self._raw.close(transaction=tr)
                t._call(lambda **kw: tr.commit())
                self.verified = self._checked
                self.written_crc = self.crc if self._checked else None
            self.done = True
        except SmbError as e:
            if not self._replace and getattr(e.__cause__, "ntstatus", None) == _STATUS_OBJECT_NAME_COLLISION:
                raise _Exists(f"refusing to replace existing {self._rel}") from e
            meant = t.replace_error(e, self.temp_rel, self._rel)
            if meant is e:
                raise
            raise meant from e
        finally:
            if not self.done:
                self.abort()

    def _check(self) -> None:
        """The read-back's last ranges, then its size and CRC-32 against the writes' (``crc``, the caller's):
        VerifyError when they differ (the temp file is removed, nothing renamed). A read-back that failed (its
        connection lost), or one given no CRC-32 to check against, checks nothing: the engine reads the file back
        after the rename, as it does a file not read back here."""
        back, self._back = self._back, None
        if back is None:
            return
        try:
            size, crc = back.finish(self._pos)
        except (CancelledJob, InvalidArgument):
            raise
        except Exception as e:  # noqa: BLE001 - not a verdict on the bytes: the engine's read-back decides
            log.info("%s: read-back beside the writes failed (%s); read back after the rename", self._rel, e)
            return
        if self.crc is None:
            return
        if size != self._pos or crc != self.crc:
            raise VerifyError(f"{self._rel}: read back {size} bytes crc32 {crc:08x} while writing, wrote "
                              f"{self._pos} bytes crc32 {self.crc:08x}")
        self._checked = True

    def abort(self) -> None:
        """Close and remove the temp file; after a lost connection it stays (removed by the next run,
        or continued when resumable). Safe to call twice."""
        back, self._back = self._back, None
        if back is not None:
            back.stop()                         # its open of the temp file closed before the removal
        if self.done:
            return
        self.done = True
        self._inflight.clear()
        t = self._t
        if not self._sent or not t.alive():
            return          # nothing on the server yet; or smbclient would silently reconnect: don't
        try:
            if self._raw is not None and not self._raw.closed:
                self._raw.close()
        except Exception as e:  # noqa: BLE001 - the temp file is removed below (or by the next run)
            t._gone(e)
        if t.alive():
            import smbclient
            try:
                smbclient.remove(t.unc(self.temp_rel), **t._live_kw())
            except Exception as e:  # noqa: BLE001 - best effort: the next run removes our temp files
                log.debug("temp file %s not removed: %s", self.temp_rel, e)


class _ReadBack:
    """A file being written, read back beside the writes (a thread, "steno-smb-back", on the target's second
    connection: another smbd process, the other direction of the link): each range once the server answered its
    WRITE (acked()), in order, with up to PIPELINE reads of max_read bytes in flight, keeping the CRC-32 of what
    the server returns. finish(size): the rest, then (bytes read, CRC-32), its error raised; stop(): ends it (the
    reads in flight answered, the file's open closed). The temp file is opened sharing write and delete with the
    writer (which shares read); it is closed before the writer's rename or removal."""

    def __init__(self, t: SmbTarget, rel: str) -> None:
        self._t, self._rel = t, rel
        self._cond = threading.Condition()
        self._acked = 0
        self._end: int | None = None
        self._stop = False
        self.size = 0
        self.crc = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="steno-smb-back", daemon=True)
        self._thread.start()

    def acked(self, upto: int) -> None:
        """The server has taken every byte before ``upto``."""
        with self._cond:
            if upto > self._acked:
                self._acked = upto
                self._cond.notify()

    def finish(self, size: int) -> tuple[int, int]:
        """Read the rest of the ``size`` bytes written: (bytes read back, their CRC-32); the read's error raised."""
        with self._cond:
            self._acked = max(self._acked, size)
            self._end = size
            self._cond.notify()
        self._join(cancel=True)
        if self.error is not None:
            raise self.error
        return self.size, self.crc

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._join(cancel=False)

    def _join(self, cancel: bool) -> None:
        """Wait for the thread to end. At the job's cancel its connection is dropped first (a server that stopped
        answering holds a read there until the connection's receive timeout): then CancelledJob when ``cancel``."""
        while self._thread.is_alive():
            self._thread.join(0.05)
            if self._thread.is_alive() and self._t.cancelled():
                self._t._drop_reader()
                self._thread.join(5)
                if cancel:
                    raise CancelledJob("cancelled")
                return

    def _run(self) -> None:
        raw: Any = None
        rt: SmbTarget | None = None
        reads: _Reads | None = None
        try:
            rt = self._t._read_connection()
            raw = rt._call(rt._with_credits, 1, _open_read, rt.unc(self._rel), share_access="rwd")
            reads = _Reads(rt, raw)
            while True:
                with self._cond:
                    while not (self._stop or reads or reads.sent < self._acked or
                               (self._end is not None and reads.sent >= self._end)):
                        self._cond.wait()
                    if self._stop:
                        break
                    acked, end = self._acked, self._end
                if end is not None and self.size >= end and not reads:
                    self._past_end(reads)
                    break
                reads.ask(acked)
                if reads:
                    data = reads.take()
                    self.crc = crc32(data, self.crc)
                    self.size += len(data)
        except BaseException as e:  # noqa: BLE001 - handed to finish()
            if rt is not None and rt.dropped:       # its connection dropped at the job's cancel: not a failed read
                self.error = CancelledJob("cancelled")
            else:
                self.error = e if isinstance(e, (SmbError, CancelledJob)) or rt is None else _explained(e, rt)
        finally:
            if reads is not None:
                reads.drain()           # answered before the file is closed (nothing left on the connection)
            if raw is not None and rt is not None and rt.alive() and not raw.closed:
                try:
                    rt._with_credits(1, raw.close)
                except Exception as e:  # noqa: BLE001 - the writer's rename or removal says what went wrong
                    rt._gone(e)

    def _past_end(self, reads: "_Reads") -> None:
        """Nothing on the server past the bytes written (a longer file is not what was written)."""
        from smbprotocol.exceptions import EndOfFile
        reads.ask(reads.sent + 1)
        try:
            extra = reads.take()
        except EndOfFile:
            return
        self.size += len(extra)
        self.crc = crc32(extra, self.crc)


def _explained(e: BaseException, t: SmbTarget) -> BaseException:
    t._gone(e)
    return explain(e, t.remote) if isinstance(e, Exception) else e


class _SmbRead:
    """A remote file read in order: the first max_read bytes in one round trip with the open and
    close (all of a small file), the rest with up to PIPELINE READ requests in flight."""

    def __init__(self, t: SmbTarget, rel: str) -> None:
        self._t, self._rel = t, rel
        self._raw: Any = None
        self._reads: _Reads | None = None

        def first_read(tr: Any) -> None:
            tr += tr.raw.fd.read(0, t.max_read, send=False)
        tr = None
        try:
            tr = t.transact(rel, first_read, mode="rb", credits=(t.max_read - 1) // 65536 + 3)
            self._first = tr.results[0]
        except SmbError as e:
            if getattr(e.__cause__, "ntstatus", None) != _STATUS_END_OF_FILE:
                raise
            self._first = b""                   # an empty file (reading at its end is an error)
        self._size = max(len(self._first), self._size_of(tr))
        self._offset = len(self._first)
        self._rest = memoryview(b"")             # what readinto() did not take of the last chunk

    @staticmethod
    def _size_of(tr: Any) -> int:
        return tr.raw.fd.end_of_file if tr is not None else 0

    def readinto(self, buf: bytearray) -> int:
        """The next bytes (at most len(buf)) into buf; 0 at the end."""
        if not self._rest:
            self._rest = memoryview(self.read())
        n = min(len(buf), len(self._rest))
        buf[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n

    @_mapped
    def read(self, n: int = -1) -> bytes:
        """The next chunk of at most max_read bytes; b"" at the end."""
        if self._first is not None:
            first, self._first = self._first, None
            if first:
                return first
        if self._reads is None:
            if self._offset >= self._size:
                return b""
            # bigger than one read: open it for the rest
            self._raw = self._t._call(self._t._with_credits, 1, _open_read, self._t.unc(self._rel))
            self._size = self._raw.fd.end_of_file
            self._reads = _Reads(self._t, self._raw, self._offset)
        self._reads.ask(self._size)
        return self._reads.take() if self._reads else b""

    def close(self) -> None:
        if self._reads is not None:
            self._reads.drain()
        if self._raw is not None and self._t.alive() and not self._raw.closed:
            try:
                self._t._with_credits(1, self._raw.close)
            except Exception as e:  # noqa: BLE001 - a read handle's close never fails the caller
                self._t._gone(e)


class _Reads:
    """READ requests of one open file, in order, with up to PIPELINE of max_read bytes in flight: the pipelined reads of
    _SmbRead and _ReadBack. The connection may be shared with other threads (the second connection: the read-back
    beside the writes, the engine's read-backs): a read the credits do not cover waits for its own answers, or when
    none is in flight for the others' (SmbTarget._with_credits), instead of failing."""

    def __init__(self, t: SmbTarget, raw: Any, at: int = 0) -> None:
        fd = raw.fd
        self._t, self._fd, self._conn = t, fd, fd.connection
        self._sid, self._tid = fd.tree_connect.session.session_id, fd.tree_connect.tree_connect_id
        self._inflight: collections.deque = collections.deque()
        self.sent = at                          # the bytes before it are asked for

    def __bool__(self) -> bool:
        """Reads in flight."""
        return bool(self._inflight)

    def ask(self, upto: int) -> None:
        """Ask for the bytes from ``sent`` to ``upto``: as many reads as PIPELINE and the credits allow; at least one
        when none is in flight."""
        from smbprotocol.exceptions import SMBException
        t, conn = self._t, self._conn
        while self.sent < upto and len(self._inflight) < PIPELINE:
            k = min(t.max_read, upto - self.sent)
            need = (k - 1) // 65536 + 1
            if not t._credit_lock.acquire(blocking=not self._inflight):
                return                          # another thread is sending: take an answer of ours meanwhile
            try:
                avail = _avail(conn)
                if avail < need:
                    if self._inflight:
                        return                  # our answers first: they give credits back
                    avail = t._await_credits(conn, 1)
                    need = min(need, avail)
                    k = min(k, need * 65536)
                msg, recv = self._fd.read(self.sent, k, send=False)
                grow = need if avail - need < need * PIPELINE else 0
                try:
                    req = conn.send(msg, sid=self._sid, tid=self._tid, credit_request=need + grow)
                except SMBException as e:       # taken by a send that does not wait its turn (a writer's)
                    if "credits" not in str(e):
                        raise
                    if self._inflight:
                        return
                    req = None
            finally:
                t._credit_lock.release()
            if req is None:
                time.sleep(0.002)
                continue
            self._inflight.append((req, recv, k))
            self.sent += k

    def take(self) -> bytes:
        """The answer to the first read in flight: all the bytes it asked for."""
        req, recv, k = self._inflight.popleft()
        data = recv(req)
        if len(data) != k:
            raise SmbError(f"short read: {len(data)} of {k} bytes")
        return data

    def drain(self) -> None:
        """Wait for the answers to the reads in flight (stopping: their content is not wanted)."""
        while self._inflight:
            req, recv, _ = self._inflight.popleft()
            try:
                recv(req)
            except Exception:  # noqa: BLE001 - the connection failed: no answer will come
                self._inflight.clear()


def _avail(conn: Any) -> int:
    return conn.sequence_window["high"] - conn.sequence_window["low"]


def _open_read(path: str, share_access: str | None = None, **kw: Any) -> Any:
    import smbclient
    return smbclient.open_file(path, mode="rb", buffering=0, share_access=share_access, **kw)
