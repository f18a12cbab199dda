"""Push exports to an SMB share (smbprotocol): temp name, rename, read-back verify, incremental, resumable.

Several recorders share one remote share safely because each writes only below its own folder,
``<remote.path>/<recorder_folder>/`` (cfg.smb.recorder_folder, default the host name). The folder's
claim file names the recorder that owns it (recorder_id()); it is made by a rename that never replaces,
so of two recorders with one host name exactly one gets the folder and the other fails before writing
anything instead of mixing files. Temp names also carry host, pid and a random tag.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import queue
import socket
import stat as stat_mod
import threading
import time
import uuid
from typing import Callable, Iterable, Iterator

from steno_exportd.config import Config, SmbRemote
from steno_exportd.errors import CancelledJob, NotFoundError, TargetError, VerifyError

log = logging.getLogger(__name__)
for _name in ("smbprotocol", "smbclient", "spnego"):     # one INFO line per SMB message otherwise
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

from steno_exportd.engine.targets import TEMP_PREFIX  # noqa: E402  the engine's temp names: vetoed on our share
MANIFEST_NAME = ".steno-push.json"  # remote record of verified files: incremental + resume
CLAIM_NAME = ".steno-push-owner.json"  # the recorder owning the folder: made once (first wins), never replaced
SUMS_NAME = "SHA256SUMS"
CHUNK = 8 * 1024 * 1024            # write size (capped by the server's max write)
READ_CHUNK = 2 * 1024 * 1024       # read-back size: 8 MiB responses cost 5x the system time here
                                   # (each is a fresh allocation: page faults), 1-2 MiB are cheapest
MANIFEST_FLUSH_SECONDS = 1.0
RESUME_MIN = 64 * 1024 * 1024      # a file this big cut by a drop is resumed where it stopped, not re-sent
RESUME_ALIGN = 1024 * 1024         # resume offsets are whole MiB
PIPELINE = 4                       # requests in flight per file (4 x 8 MiB: as fast as 8 here, half the memory)
FAST_WRITES = True                 # smbwire: hand-packed, zero-copy WRITE requests
RESUME_BACKOFF = 2 * PIPELINE * CHUNK   # resume this far before a cut temp file's end: the writes in flight
                                        # at the drop (PIPELINE x CHUNK) may have landed out of order (holes)


_FILE_ATTRIBUTE_REPARSE_POINT = 0x400
_STATUS_OBJECT_NAME_COLLISION = 0xC0000035


class _NameTaken(Exception):
    """create_once: the name was already there (another writer was first)."""


class SmbError(TargetError):
    """An SMB push failed; ``permanent`` errors (logon, access, missing share) are not retried."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclasses.dataclass(frozen=True)
class PushResult:
    sent: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_sent: int
    seconds: float
    bytes_resumed: int = 0          # bytes of files cut by an earlier drop that were not sent again


RECORDER_ID_FILE = "recorder-id"


def recorder_id(state_dir: str, machine_id_path: str = "/etc/machine-id") -> str:
    """This recorder's identity for remote manifests: derived from the machine id (never the id itself),
    else a random id kept in ``state_dir``; "" when neither is available (no ownership check then)."""
    try:
        mid = pathlib.Path(machine_id_path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        mid = ""
    if mid and mid != "uninitialized":
        return hashlib.sha256(f"steno-exportd recorder {mid}".encode()).hexdigest()[:32]
    path = pathlib.Path(state_dir or "/var/lib/steno-exportd") / RECORDER_ID_FILE
    try:
        saved = path.read_text(encoding="ascii").strip()
        if saved:
            return saved
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        log.warning("recorder id %s unreadable (%s): remote folders are not checked for ownership", path, e)
        return ""
    new = uuid.uuid4().hex
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(new + "\n", encoding="ascii")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("recorder id not saved in %s (%s): remote folders are not checked for ownership", path, e)
        return ""
    return new


def read_password(path: str) -> str:
    """The password in ``path`` (first line); refuses a file other users can read."""
    if not path:
        return ""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SmbError(f"password file {path}: {e.strerror}", permanent=True) from e
    if not stat_mod.S_ISREG(st.st_mode):
        raise SmbError(f"password file {path} is not a regular file", permanent=True)
    if st.st_mode & (stat_mod.S_IRWXG | stat_mod.S_IRWXO):
        raise SmbError(f"password file {path} is readable by others (chmod 600 it)", permanent=True)
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise SmbError(f"password file {path} cannot be read: {e.strerror or e}", permanent=True) from e
    except UnicodeDecodeError as e:
        raise SmbError(f"password file {path} cannot be read: not UTF-8 text", permanent=True) from e


def explain(exc: BaseException, remote: SmbRemote) -> SmbError:
    """Turn an smbprotocol/socket exception into a clear SmbError."""
    from smbprotocol import exceptions as ex

    where = f"\\\\{remote.server}\\{remote.share}"
    if isinstance(exc, SmbError):
        return exc
    chain = exc
    while chain is not None:
        if isinstance(chain, ex.BadNetworkName):
            return SmbError(f"share {where} not found", True)
        if isinstance(chain, socket.gaierror):
            if chain.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)):
                return SmbError(f"server name {remote.server!r} could not be looked up (DNS not answering)")
            return SmbError(f"server name {remote.server!r} not found (DNS)", True)
        chain = chain.__cause__ or chain.__context__
    # A status the server answered with: mapped by status, never "unreachable" (SMBOSError is an OSError).
    status = getattr(exc, "ntstatus", None)
    if status is None and isinstance(exc, ex.SMBResponseException):
        status = exc.status
    if status is not None:
        mapped = _explain_status(status, exc, remote, where)
        if mapped is not None:
            return mapped
    if isinstance(exc, (ex.LogonFailure, ex.WrongPassword, ex.PasswordExpired)):
        return SmbError(f"logon failed for user {remote.username or '(guest)'!r} on {remote.server}", True)
    if isinstance(exc, ex.BadNetworkName):
        return SmbError(f"share {where} not found", True)
    if isinstance(exc, (ex.ObjectPathNotFound, ex.ObjectNameNotFound)):
        return SmbError(f"path not found on {where}: {getattr(exc, 'filename', '') or remote.path}", True)
    if isinstance(exc, ex.AccessDenied):
        return SmbError(f"access denied on {where} (no write permission?)", True)
    if isinstance(exc, ex.DiskFull):
        return SmbError(f"share {where} is full", True)
    if isinstance(exc, ex.SMBAuthenticationError):
        return SmbError(f"logon failed on {remote.server}: {exc}", True)
    msg = str(exc)
    if isinstance(exc, ValueError) and "failed to connect" in msg.lower():
        return SmbError(f"{remote.server}:{remote.port} unreachable: {msg.split(': ', 1)[-1]}")
    if isinstance(exc, (ex.SMBUnsupportedFeature,)) or "dialect" in msg.lower() or "SMB1" in msg:
        return SmbError(f"{remote.server} does not speak SMB2 or later (SMB2+ needed): {msg}", True)
    if isinstance(exc, (TimeoutError, socket.timeout)) or "timeout" in msg.lower() or "timed out" in msg.lower():
        return SmbError(f"{remote.server}:{remote.port} unreachable: timed out after {remote.timeout:g}s")
    if isinstance(exc, ex.SMBOSError):
        return SmbError(f"SMB error on {where}: {msg}")
    if isinstance(exc, (ConnectionError, OSError, ex.SMBConnectionClosed)):
        return SmbError(f"{remote.server}:{remote.port} unreachable or connection lost: {msg or type(exc).__name__}")
    if isinstance(exc, ValueError) and "negotiate" in msg.lower():
        return SmbError(f"{remote.server} negotiation failed (SMB2+ needed): {msg}", True)
    return SmbError(f"SMB error on {where}: {type(exc).__name__}: {msg}")


_IN_USE = (0xC0000043, 0xC0000054, 0xC0000055)   # sharing violation, file lock conflict, lock not granted
_SESSION_GONE = (0xC00000C9, 0xC0000203, 0xC000035C)  # network name / user session deleted, session expired


def _remote_name(exc: BaseException, remote: SmbRemote) -> str:
    """The file an SMB error is about, relative to the share (the rename target when there is one)."""
    name = getattr(exc, "filename2", None) or getattr(exc, "filename", None) or ""
    prefix = f"\\\\{remote.server}\\{remote.share}"
    if name.lower().startswith(prefix.lower()):
        name = name[len(prefix):].lstrip("\\")
    return name


def _explain_status(status: int, exc: BaseException, remote: SmbRemote, where: str) -> SmbError | None:
    """A message for an NT status the server answered with; None to fall through to the exception type."""
    name = _remote_name(exc, remote)
    if status == 0xC0000022:
        return SmbError(f"access denied on {where} (no write permission?)" + (f": {name}" if name else ""), True)
    if status in (0xC0000034, 0xC000003A):
        return SmbError(f"path not found on {where}: {name or remote.path}", True)
    name = name or "a file"
    if status == 0xC000007F:
        return SmbError(f"share {where} is full", True)
    if status in _IN_USE:
        return SmbError(f"{name} on {where} is in use by another program")
    if status == 0xC0000056:
        return SmbError(f"{name} on {where} is being deleted by another program")
    if status == 0xC00000BA:
        return SmbError(f"{name} on {where} is a folder where a file should be", True)
    if status == 0xC0000103:
        return SmbError(f"{name} on {where} is a file where a folder should be", True)
    if status == 0xC000009A:
        return SmbError(f"{remote.server} is out of resources (busy): {name}")
    if status in _SESSION_GONE:
        return SmbError(f"{remote.server}:{remote.port} connection lost: the server ended the session")
    return None


def _probe_smb1_only(remote: SmbRemote) -> bool:
    """True when the server answers an SMB2 negotiate with an SMB1 reply or drops it (SMB1-only)."""
    # SMB1 negotiate offering only "SMB 2.???": an SMB2-capable server answers with an SMB2 header.
    dialects = b"\x02NT LM 0.12\x00\x02SMB 2.002\x00\x02SMB 2.???\x00"
    hdr = (b"\xffSMB" + b"\x72" + b"\x00" * 4 + b"\x18" + b"\x53\xc8" + b"\x00" * 2 + b"\x00" * 8
           + b"\x00" * 2 + b"\x00" * 2 + b"\xff\xfe" + b"\x00" * 4)   # 32-byte SMB1 header
    body = b"\x00" + len(dialects).to_bytes(2, "little") + dialects
    pkt = hdr + body
    try:
        with socket.create_connection((remote.server, remote.port), timeout=remote.timeout) as s:
            s.settimeout(remote.timeout)
            s.sendall(len(pkt).to_bytes(4, "big") + pkt)
            data = s.recv(8)
    except OSError:
        return False
    return len(data) >= 8 and data[4:8] == b"\xffSMB"


def _mapped(method):
    """Map any smbprotocol/socket error escaping ``method`` (e.g. from a file's close) to SmbError."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *a, **kw):
        try:
            return method(self, *a, **kw)
        except (SmbError, VerifyError, CancelledJob, _NameTaken):
            raise
        except Exception as e:
            if _is_connection_error(e):
                self._connected = False
            raise explain(e, self.remote) from e
    return wrapper


class SmbTarget:
    """One remote share folder (remote.path/recorder_folder) reached with smbprotocol."""

    def __init__(self, remote: SmbRemote, recorder_folder: str = "", password: str | None = None,
                 recorder_id: str = "") -> None:
        self.remote = remote
        self.folder = recorder_folder or socket.gethostname()
        self.recorder_id = recorder_id       # written to / checked against the folder's manifest
        self._password = password
        self._cache: dict = {}
        self._connected = False
        self._password_value = password
        self.max_write = CHUNK
        self.max_read = READ_CHUNK
        self.tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    @property
    def label(self) -> str:
        return f"smb:{self.remote.name}" if self.remote.name else self.unc("")

    def unc(self, rel: str) -> str:
        """UNC path of ``rel`` below the recorder folder."""
        parts = [p for p in (self.remote.path.replace("/", "\\").strip("\\"), self.folder) if p]
        if rel:
            parts.append(rel.replace("/", "\\").strip("\\"))
        return f"\\\\{self.remote.server}\\{self.remote.share}" + "".join("\\" + p for p in parts)

    def _kw(self) -> dict:
        return {"port": self.remote.port, "connection_cache": self._cache,
                "connection_timeout": self.remote.timeout}

    def _live_kw(self) -> dict:
        """Keyword arguments for a call on the live connection; never lets smbclient reconnect silently."""
        if self._connected and not all(c.transport.connected and c._t_exc is None for c in self._cache.values()):
            self._connected = False
        if not self._connected:
            raise SmbError(f"{self.remote.server}:{self.remote.port} connection lost")
        return self._kw()

    # -- connection -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, log on and make sure the recorder folder exists; SmbError on failure."""
        if self._connected:
            return
        import smbclient
        from smbclient import ClientConfig

        r = self.remote
        password = self._password if self._password is not None else read_password(r.password_file)
        self._password_value = password
        if not r.username:
            # Guest sessions cannot sign, so the negotiate check must be off (process-wide setting).
            ClientConfig().require_secure_negotiate = False
        user = (f"{r.domain}\\{r.username}" if r.domain and r.username else r.username) or "guest"
        try:
            session = smbclient.register_session(
                r.server, username=user, password=password or "", port=r.port,
                encrypt=True if r.require_encryption else None, connection_timeout=r.timeout,
                connection_cache=self._cache, auth_protocol="ntlm",
                require_signing=bool(r.username))
            conn = session.connection
            from steno_exportd.smb import wire as smbwire
            smbwire.tune(conn)
            # A server that stops answering (not closing) is declared dead after ~2x this, not 20 min.
            conn._receive_timeout = max(5, int(r.timeout * 2))
            self.max_write = max(64 * 1024, min(CHUNK, conn.max_write_size))
            self.max_read = max(64 * 1024, min(READ_CHUNK, conn.max_read_size))
            if r.require_encryption and not session.encrypt_data:
                raise SmbError(f"{r.server} did not agree to SMB3 encryption (require_encryption = true)", True)
            share_root = f"\\\\{r.server}\\{r.share}"
            sub = r.path.replace("/", "\\").strip("\\")
            try:
                smbclient.stat(share_root + ("\\" + sub if sub else ""), **self._kw())
            except Exception as e:
                raise explain(e, r) from e
            smbclient.makedirs(self.unc(""), exist_ok=True, **self._kw())
        except SmbError:
            self.close()
            raise
        except Exception as e:
            self.close()
            if _is_silent(e):
                # TCP accepted, no SMB reply: not an SMB1 server (those answer or hang up), nothing to
                # probe, and not retried within this job (each try would wait the whole timeout again).
                raise SmbError(f"{r.server}:{r.port} is not answering: it accepted the connection but sent "
                               f"no SMB reply (timed out after {r.timeout:g}s)", True) from e
            if _is_negotiate_failure(e) and "timeout" not in str(e).lower() and _probe_smb1_only(r):
                raise SmbError(f"{r.server} speaks only SMB1; SMB2 or later is needed", True) from e
            raise explain(e, r) from e
        self._connected = True

    def close(self) -> None:
        from smbclient import reset_connection_cache
        reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
        self._connected = False

    def sibling(self) -> "SmbTarget":
        """Another connected target on the same folder (its own TCP connection and smbd process)."""
        other = SmbTarget(self.remote, self.folder, password=self._password_value, recorder_id=self.recorder_id)
        other.connect()
        return other

    # -- file layer -------------------------------------------------------------------------------
    def _call(self, fn: Callable, *a, **kw):
        try:
            return fn(*a, **kw, **self._live_kw())
        except (SmbError, CancelledJob):
            raise
        except Exception as e:
            self._connected = False if _is_connection_error(e) else self._connected
            raise explain(e, self.remote) from e

    def _io(self, fn: Callable, *a):
        """Call a method of an open SMB file, mapping errors."""
        try:
            return fn(*a)
        except CancelledJob:
            raise
        except Exception as e:
            self._connected = False if _is_connection_error(e) else self._connected
            raise explain(e, self.remote) from e

    def makedirs(self, rel: str) -> None:
        import smbclient
        self._call(smbclient.makedirs, self.unc(rel), exist_ok=True)

    @_mapped
    def listdir(self, rel: str = "") -> list[tuple[str, bool, int]]:
        """(name, is_dir, size) of entries in ``rel``."""
        import smbclient
        out = []
        for e in self._call(smbclient.scandir, self.unc(rel)):
            # the entry's own info: e.stat() would reconnect without our port
            info = e.smb_info
            if info.file_attributes & _FILE_ATTRIBUTE_REPARSE_POINT:
                continue                      # a symlink/junction on the server: never followed
            out.append((e.name, e.is_dir(follow_symlinks=False), info.end_of_file))
        return out

    def size(self, rel: str) -> int | None:
        """Size of a remote file, None when missing."""
        import smbclient
        from smbprotocol import exceptions as ex
        try:
            return smbclient.stat(self.unc(rel), **self._live_kw()).st_size
        except (ex.ObjectNameNotFound, ex.ObjectPathNotFound):
            return None
        except ex.SMBOSError as e:
            if e.ntstatus in (0xC0000034, 0xC000003A):
                return None
            raise explain(e, self.remote) from e
        except Exception as e:
            raise explain(e, self.remote) from e

    @_mapped
    def free_space(self) -> int:
        import smbclient
        return self._call(smbclient.stat_volume, self.unc("")).caller_available_size

    def remove(self, rel: str) -> None:
        import smbclient
        self._call(smbclient.remove, self.unc(rel))

    @_mapped
    def read_bytes(self, rel: str) -> bytes | None:
        import smbclient
        if self.size(rel) is None:
            return None
        with self._call(smbclient.open_file, self.unc(rel), mode="rb", buffering=0) as f:
            chunks = []
            while True:
                b = f.read(self.max_read)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file under a temp name, then rename it over ``rel``."""
        self.write_stream(rel, iter([data]))

    def temp_name(self, rel: str) -> str:
        head, _, name = rel.replace("\\", "/").rpartition("/")
        tmp = f"{TEMP_PREFIX}{self.tag}-{name}"[:200]
        return f"{head}/{tmp}" if head else tmp

    def create_once(self, rel: str, data: bytes) -> bool:
        """Write a small file at ``rel`` unless one is there: False when another writer was first.

        Temp name, then a rename that never replaces: atomic on the server, so of several writers
        racing for one name exactly one gets it, and nobody ever sees it half written."""
        try:
            self.write_stream(rel, iter([data]), replace=False)
        except _NameTaken:
            return False
        return True

    @_mapped
    def write_stream(self, rel: str, chunks: Iterable[bytes], throttle: "Throttle | None" = None,
                     on_bytes: Callable[[int], None] | None = None, replace: bool = True,
                     tmp: str | None = None, start: int = 0) -> int:
        """Write chunks to a temp name, then rename over ``rel``; returns the file's size.

        With ``replace=False`` an existing ``rel`` is kept and _NameTaken raised (temp removed).
        ``tmp`` names the temp file (default: a new one); with ``start`` > 0 that temp file is kept
        up to ``start`` and the chunks are written from there (a resumed upload)."""
        import smbclient
        tmp = tmp or self.temp_name(rel)
        total = 0
        try:
            mode = "r+b" if start else "wb"
            with self._call(smbclient.open_file, self.unc(tmp), mode=mode, buffering=0) as f:
                total = self._io(_pipelined_write, f, chunks, self.max_write, throttle, on_bytes, start)
            try:
                self._call(smbclient.replace if replace else smbclient.rename, self.unc(tmp), self.unc(rel))
            except SmbError as e:
                if getattr(e.__cause__, "ntstatus", None) == _STATUS_OBJECT_NAME_COLLISION and not replace:
                    raise _NameTaken(rel) from e
                raise
        except BaseException as e:
            # after a lost connection smbclient would silently reconnect (default 60 s timeout): don't
            if self._connected and not _lost_connection(e):
                try:
                    smbclient.remove(self.unc(tmp), **self._live_kw())
                except Exception:
                    pass
            else:
                self._connected = False
            raise
        return total

    @_mapped
    def read_hash(self, rel: str) -> tuple[int, str]:
        """(size, sha256) of the remote file as read back over SMB now."""
        import smbclient
        h = hashlib.sha256()
        with self._call(smbclient.open_file, self.unc(rel), mode="rb", buffering=0) as f:
            size = self._io(_pipelined_read, f, self.max_read, h)
        return size, h.hexdigest()

    def cleanup_temp(self, rel_dir: str = "", keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Remove this host's stale temp files (left by a dropped connection) in ``rel_dir``, except
        the names in ``keep`` (uploads to resume)."""
        mine = f"{TEMP_PREFIX}{socket.gethostname()}-"
        try:
            entries = self.listdir(rel_dir)
        except SmbError:
            return
        for name, is_dir, _ in entries:
            if not is_dir and name.startswith(mine) and name not in keep:
                try:
                    self.remove(f"{rel_dir}/{name}" if rel_dir else name)
                except SmbError as e:
                    log.debug("stale temp %s not removed: %s", name, e)


def _pipelined_write(raw, chunks: Iterable[bytes], max_write: int, throttle: "Throttle | None",
                     on_bytes: Callable[[int], None] | None, start: int = 0) -> int:
    """Write chunks at increasing offsets from ``start`` with up to PIPELINE write requests in flight.

    smbclient's raw write waits for each response; keeping several requests outstanding hides the
    round trip and the server's disk write (like Samba's own smbclient does).
    """
    import collections

    from steno_exportd.smb import wire as smbwire

    fd = raw.fd
    conn = fd.connection
    sid, tid = fd.tree_connect.session.session_id, fd.tree_connect.tree_connect_id
    fast = FAST_WRITES and smbwire.supported(raw)
    inflight: collections.deque = collections.deque()
    offset = start

    def avail() -> int:
        return conn.sequence_window["high"] - conn.sequence_window["low"]

    def finish_one() -> None:
        req, recv, n = inflight.popleft()
        written = recv(req)
        if written != n:
            raise SmbError(f"short write: server took {written} of {n} bytes")
        if on_bytes:
            on_bytes(n)

    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = min(len(view), max_write)
                need = (n - 1) // 65536 + 1
                while inflight and (len(inflight) >= PIPELINE or avail() < need):
                    finish_one()
                if avail() < need:              # window smaller than one full write: shrink it
                    need = max(1, avail())
                    n = min(n, need * 65536)
                grow = need if avail() - need < need * PIPELINE else 0
                if fast:
                    req = smbwire.send_write(raw, view[:n], offset, need + grow)
                    recv = fd._write_response
                else:
                    msg, recv = fd.write(bytes(view[:n]), offset=offset, send=False)
                    req = conn.send(msg, sid=sid, tid=tid, credit_request=need + grow)
                inflight.append((req, recv, n))
                view = view[n:]
                offset += n
                if throttle:
                    throttle.spend(n)
        while inflight:
            finish_one()
    finally:
        raw._offset = offset
        fd.end_of_file = max(fd.end_of_file, offset)
        raw._flush = True
    return offset


def _pipelined_read(raw, max_read: int, h) -> int:
    """Read the whole open file with up to PIPELINE READ requests in flight, hashing in order."""
    import collections

    fd = raw.fd
    conn = fd.connection
    sid, tid = fd.tree_connect.session.session_id, fd.tree_connect.tree_connect_id
    size = fd.end_of_file
    inflight: collections.deque = collections.deque()
    offset = total = 0

    def avail() -> int:
        return conn.sequence_window["high"] - conn.sequence_window["low"]

    while offset < size or inflight:
        while offset < size and len(inflight) < PIPELINE:
            n = min(max_read, size - offset)
            need = (n - 1) // 65536 + 1
            if avail() < need:
                if inflight:
                    break
                need = max(1, avail())
                n = min(n, need * 65536)
            msg, recv = fd.read(offset, n, send=False)
            grow = need if avail() - need < need * PIPELINE else 0
            inflight.append((conn.send(msg, sid=sid, tid=tid, credit_request=need + grow), recv, n))
            offset += n
        req, recv, n = inflight.popleft()
        data = recv(req)
        if len(data) != n:
            raise SmbError(f"short read: {len(data)} of {n} bytes")
        h.update(data)
        total += n
    return total


class Throttle:
    """Token bucket: keep the average rate at or below ``kib_per_s``."""

    def __init__(self, kib_per_s: int) -> None:
        self.rate = kib_per_s * 1024
        self.start = time.monotonic()
        self.spent = 0

    def chunk(self, max_write: int) -> int:
        """A write size of about 1/8 s at the limit (64 KiB steps): progress and cancel stay prompt."""
        return max(65536, min(max_write, self.rate // 8 // 65536 * 65536))

    def spend(self, n: int) -> None:
        self.spent += n
        ahead = self.spent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


READ_DEPTH = 3                     # chunks read ahead of the SMB writes


class _Buffers:
    """Read buffers reused from file to file: a fresh 8 MiB bytes object per read costs ~2,000 page
    faults (zeroing, unmapping), more CPU than the read itself.

    A chunk is handed on as a memoryview and is overwritten READ_DEPTH + 2 reads later: the reader
    runs at most READ_DEPTH + 1 chunks ahead of the consumer, and the writer has sent (copied into
    the socket) each chunk before it asks for the next one.
    """

    def __init__(self) -> None:
        self.pool: list[bytearray] = []
        self.next = 0

    def reader(self, f, size: int) -> Callable[[], memoryview]:
        if not self.pool or len(self.pool[0]) != size:
            self.pool = [bytearray(size) for _ in range(READ_DEPTH + 2)]

        def read() -> memoryview:
            buf = self.pool[self.next % len(self.pool)]
            self.next += 1
            return memoryview(buf)[:f.readinto(buf)]
        return read


def _local_chunks(path: pathlib.Path, size: int, h, buffers: _Buffers | None = None,
                  start: int = 0) -> Iterable[bytes]:
    """Read ``path`` from ``start`` in a thread beside the SMB writes, hashing as it goes (the engine's
    reader); the first ``start`` bytes are only hashed (a resumed upload)."""
    from steno_exportd.engine.writer import pipelined_reads
    with open(path, "rb", buffering=0) as f:
        if start and h is not None:
            _hash_into(f, h, start)
        elif start:
            f.seek(start)
        yield from pipelined_reads(buffers.reader(f, size) if buffers else lambda: f.read(size), h,
                                   depth=READ_DEPTH)


def _until_cancelled(chunks: Iterable[bytes], cancelled: Callable[[], bool]) -> Iterator[bytes]:
    """The chunks, raising CancelledJob before the next one once the job is cancelled (mid-file)."""
    it = iter(chunks)
    try:
        for c in it:
            if cancelled():
                raise CancelledJob("push cancelled")
            yield c
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


def _local_files(root: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """(relative posix path, path) of regular files under root; symlinks and our temp files skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = pathlib.Path(dirpath) / name
            if name.startswith(TEMP_PREFIX) or name.endswith(".partial") or name == MANIFEST_NAME:
                continue
            if p.is_symlink() or not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            if rel != SUMS_NAME:                 # rebuilt on the remote from what was verified
                out.append((rel, p))
    return out


class _Verifier:
    """Reads pushed files back on a second connection (a second smbd process) beside the upload."""

    def __init__(self, target: SmbTarget) -> None:
        self.target = target
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.lock = threading.Lock()
        self.done: list[tuple[str, dict]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="smbpush-verify", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            rel, path, size, digest, known, entry = item
            try:
                rsize, rdigest = self.target.read_hash(rel)
                if (rsize, rdigest) != (size, digest) and known:
                    digest = _hash_file(path)        # SHA256SUMS may be older than the file
                if (rsize, rdigest) != (size, digest):
                    try:
                        self.target.remove(rel)
                    finally:
                        raise VerifyError(f"{self.target.label}/{rel}: read-back differs from what was written")
                with self.lock:
                    self.done.append((rel, {**entry, "sha256": digest}))
            except BaseException as e:  # handed to the uploading thread
                self.error = e

    def submit(self, item) -> None:
        self.check()
        self.queue.put(item)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def take(self) -> list[tuple[str, dict]]:
        with self.lock:
            out, self.done = self.done, []
        return out

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def abort(self) -> None:
        if self.error is None:
            self.error = SmbError("push aborted")
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.queue.put(None)
        self.thread.join(60)
        self.target.close()


def push_dir(target: SmbTarget, local_root: pathlib.Path, *, files: list[str] | None = None,
             bandwidth_limit_kbps: int = 0, verify: bool = True,
             progress: Callable[[str, int], None] | None = None,
             cancelled: Callable[[], bool] = lambda: False,
             on_plan: Callable[[int, int], None] | None = None) -> PushResult:
    """Mirror an export folder (layout, SHA256SUMS, manifest) onto the target; skip verified files.

    ``on_plan(bytes, files)`` is told what will be sent once the remote manifest has been read.

    The remote manifest records every verified file with its source size and mtime, and is saved
    at least every second, so a run cut short resumes without re-sending what was verified.
    """
    t0 = time.monotonic()
    target.connect()
    local = _local_files(local_root)
    if files is not None:
        wanted = set(files)
        local = [(r, p) for r, p in local if r in wanted]
    manifest, unclaimed, old_partial = _load_manifest(target)   # SmbError: names another recorder
    _claim_folder(target)            # before writing anything: SmbError when another recorder owns it
    local_sums = _read_sums(local_root / SUMS_NAME)
    remote_sizes = _remote_sizes(target)
    throttle = Throttle(bandwidth_limit_kbps) if bandwidth_limit_kbps else None
    chunk = throttle.chunk(target.max_write) if throttle else target.max_write
    sent: list[str] = []
    skipped: list[str] = []
    nbytes = 0
    # unclaimed: the manifest gets our recorder id too (read by people looking at the NAS)
    state = {"last_flush": time.monotonic(), "dirty": unclaimed}
    made_dirs: set[str] = set()
    verifier: _Verifier | None = None
    buffers = _Buffers()

    def record(rel: str, entry: dict) -> None:
        manifest[rel] = entry
        sent.append(rel)
        state["dirty"] = True

    def collect() -> None:
        if verifier:
            for item in verifier.take():
                record(*item)
        if state["dirty"] and time.monotonic() - state["last_flush"] >= MANIFEST_FLUSH_SECONDS:
            _save_manifest(target, manifest, partial)
            state["dirty"], state["last_flush"] = False, time.monotonic()

    todo = []
    resume: dict[str, tuple[str, int]] = {}
    for rel, path in local:
        st = path.stat()
        entry = manifest.get(rel)
        if (entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns
                and remote_sizes.get(rel) == st.st_size):
            skipped.append(rel)
        else:
            todo.append((rel, path, st))
            if st.st_size >= RESUME_MIN and (point := _resume_point(old_partial, rel, st, remote_sizes))[1]:
                resume[rel] = point
    keep = {tmp.rpartition("/")[2] for tmp, _ in resume.values()}
    # big files being sent: their temp files are kept after a drop (and still named if this run drops too)
    partial: dict[str, dict] = {rel: old_partial[rel] for rel in resume}
    target.cleanup_temp("", keep)    # a manifest/SHA256SUMS write cut short by a drop (folders: below)
    if on_plan:
        on_plan(sum(st.st_size for _, _, st in todo), len(todo))
    resumed = 0
    try:
        for rel, path, st in todo:
            if cancelled():
                raise CancelledJob("push cancelled")
            parent = rel.rpartition("/")[0]
            if parent and parent not in made_dirs:
                target.makedirs(parent)
                target.cleanup_temp(parent, keep)
                made_dirs.add(parent)
            known = local_sums.get(rel)          # the export's own SHA256SUMS: no second hash pass
            h = None if known else hashlib.sha256()
            tmp, start = resume.get(rel, ("", 0))
            if start:
                log.info("%s/%s: resuming at %d of %d bytes (cut short by an earlier drop)",
                         target.label, rel, start, st.st_size)
                resumed += start
                if progress:
                    progress(rel, start)
            elif st.st_size >= RESUME_MIN:       # kept after a drop: named in the manifest first
                tmp = target.temp_name(rel)
            if tmp:
                partial[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "temp": tmp.rpartition("/")[2]}
                _save_manifest(target, manifest, partial)
                state["dirty"], state["last_flush"] = False, time.monotonic()
            chunks = _until_cancelled(_local_chunks(path, chunk, h, buffers, start), cancelled)
            try:
                size = target.write_stream(rel, chunks, throttle,
                                           (lambda n, rel=rel: progress(rel, n)) if progress else None,
                                           tmp=tmp or None, start=start)
            finally:
                chunks.close()      # a write cut mid-file stops the reader thread now, not when the error is freed
            nbytes += size - start
            if partial.pop(rel, None) is not None:
                state["dirty"] = True
            digest = known or h.hexdigest()
            if size != st.st_size:
                raise SmbError(f"{rel}: source changed while pushing ({size} != {st.st_size} bytes)")
            new = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest,
                   "verified": verify, "at": time.time()}
            if verify:
                if verifier is None:
                    verifier = _Verifier(target.sibling())
                verifier.submit((rel, path, size, digest, known, new))
            else:
                record(rel, new)
            collect()
        if verifier:
            verifier.finish()
            verifier.check()
            collect()
        if state["dirty"] or sent or not remote_sizes.get(SUMS_NAME):
            _save_manifest(target, manifest)
            state["dirty"] = False
            if files is None:
                target.write_bytes(SUMS_NAME, _sums(manifest).encode())
    finally:
        if verifier:
            verifier.abort()
            for item in verifier.take():
                record(*item)
        if state["dirty"] and target._connected:
            try:
                _save_manifest(target, manifest, partial)
            except SmbError as e:
                log.debug("manifest not saved after failure: %s", e)
    return PushResult(tuple(sent), tuple(skipped), nbytes, time.monotonic() - t0, resumed)


def _read_sums(path: pathlib.Path) -> dict[str, str]:
    """rel -> sha256 from a sha256sum-format file; empty when missing or unreadable."""
    out = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return out
    for line in text.splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep:
            digest, sep, rel = line.partition(" *")
        if sep and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            out[rel] = digest
    return out


def _hash_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        _hash_into(f, h)
    return h.hexdigest()


def _hash_into(f, h, limit: int | None = None) -> None:
    """Feed ``f`` from its position to the end (or ``limit`` bytes) into ``h``."""
    left = limit
    while left is None or left > 0:
        b = f.read(4 * 1024 * 1024 if left is None else min(left, 4 * 1024 * 1024))
        if not b:
            return
        h.update(b)
        if left is not None:
            left -= len(b)


def _sums(manifest: dict) -> str:
    return "".join(f"{v['sha256']}  {k}\n" for k, v in sorted(manifest.items())
                   if k != SUMS_NAME and v.get("sha256"))


def _claim_folder(target: SmbTarget) -> None:
    """Make sure the recorder folder is ours; SmbError (permanent) when another recorder owns it.

    The first push writes CLAIM_NAME with create_once: two recorders with one host name making their
    first push at the same moment cannot both get the folder. A folder pushed by a version without
    claim files is checked by its manifest's id (_load_manifest, called first) and adopted when that
    has none.
    """
    if not target.recorder_id:
        return                      # no id on this system: no ownership check (logged by recorder_id)
    raw = target.read_bytes(CLAIM_NAME)
    if raw is None:
        body = json.dumps({"recorder_id": target.recorder_id, "host": socket.gethostname(),
                           "claimed": time.time()}, indent=1, sort_keys=True).encode()
        if target.create_once(CLAIM_NAME, body):
            log.info("%s: folder claimed for this recorder", target.label)
            return
        raw = target.read_bytes(CLAIM_NAME) or b""      # another recorder was first
    try:
        data = json.loads(raw)
        owner = str(data["recorder_id"])
    except (ValueError, TypeError, KeyError):
        where = f"\\\\{target.remote.server}\\{target.remote.share}"
        raise SmbError(f"folder {target.folder} on {where}: {CLAIM_NAME} is unreadable, so the owner of the folder "
                       f"is unknown; delete that file if this recorder owns the folder", True) from None
    _check_owner(target, owner, data.get("host"))


def _check_owner(target: SmbTarget, owner: str, host) -> None:
    if owner and target.recorder_id and owner != target.recorder_id:
        where = f"\\\\{target.remote.server}\\{target.remote.share}"
        raise SmbError(f"folder {target.folder} on {where} belongs to another recorder "
                       f"({host or 'unknown host'}, id {owner[:8]}); set smb.recorder_folder", True)


def _load_manifest(target: SmbTarget) -> tuple[dict, bool, dict]:
    """(files, unclaimed, partial) of the remote manifest; SmbError when it names another recorder.

    A manifest without a recorder id (older versions) is adopted: ``unclaimed`` asks to save ours.
    ``partial``: big files cut short by a drop (rel -> source size, mtime and temp file name).
    """
    raw = target.read_bytes(MANIFEST_NAME)
    if not raw:
        return {}, bool(target.recorder_id), {}
    try:
        data = json.loads(raw)
        files = data.get("files", {})
        partial = data.get("partial", {})
        owner = data.get("recorder_id") or ""
    except (ValueError, AttributeError):
        log.warning("%s: unreadable %s, pushing everything again", target.label, MANIFEST_NAME)
        return {}, bool(target.recorder_id), {}
    _check_owner(target, owner, data.get("host"))
    return ((files if isinstance(files, dict) else {}), bool(target.recorder_id) and not owner,
            (partial if isinstance(partial, dict) else {}))


def _resume_point(partial: dict, rel: str, st: os.stat_result, remote_sizes: dict[str, int]) -> tuple[str, int]:
    """(temp rel, offset) to resume ``rel`` from, or ("", 0): the temp file of an upload cut by a drop,
    when the source is unchanged (size, mtime), backed off past the writes that were in flight."""
    p = partial.get(rel)
    if not isinstance(p, dict) or p.get("size") != st.st_size or p.get("mtime_ns") != st.st_mtime_ns:
        return "", 0
    name = str(p.get("temp") or "")
    head = rel.rpartition("/")[0]
    tmp = f"{head}/{name}" if head else name
    have = remote_sizes.get(tmp, 0) if name.startswith(TEMP_PREFIX) and not {"/", "\\"} & set(name) else 0
    if have > st.st_size:
        return "", 0                # not what we wrote: sent again from the start
    start = have - RESUME_BACKOFF
    start -= start % RESUME_ALIGN
    return (tmp, start) if start > 0 else ("", 0)


def _save_manifest(target: SmbTarget, manifest: dict, partial: dict | None = None) -> None:
    data = {"version": 1, "recorder": target.folder, "updated": time.time(), "files": manifest}
    if partial:
        data["partial"] = partial
    if target.recorder_id:
        data.update(recorder_id=target.recorder_id, host=socket.gethostname())
    target.write_bytes(MANIFEST_NAME, json.dumps(data, indent=1, sort_keys=True).encode())


def _remote_sizes(target: SmbTarget) -> dict[str, int]:
    """Relative path -> size of every file under the recorder folder (one walk)."""
    out: dict[str, int] = {}
    stack = [""]
    while stack:
        d = stack.pop()
        for name, is_dir, size in target.listdir(d):
            rel = f"{d}/{name}" if d else name
            if is_dir:
                stack.append(rel)
            else:
                out[rel] = size
    return out


def push_with_retries(target: SmbTarget, local_root: pathlib.Path, *, attempts: int = 3,
                      backoff: float = 2.0, sleep: Callable[[float], None] = time.sleep, **kw) -> PushResult:
    """push_dir, retried with exponential backoff for transient errors (never for logon/access)."""
    delay = backoff
    for i in range(1, attempts + 1):
        try:
            return push_dir(target, local_root, **kw)
        except SmbError as e:
            target.close()
            if e.permanent or i == attempts:
                raise
            log.warning("%s: attempt %d/%d failed: %s; retrying in %.0fs", target.label, i, attempts, e, delay)
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _is_connection_error(e: BaseException) -> bool:
    from smbprotocol import exceptions as ex
    return isinstance(e, (OSError, ex.SMBConnectionClosed)) and not isinstance(e, ex.SMBOSError)


def _lost_connection(e: BaseException | None) -> bool:
    """True when e (or what caused it) means the connection is gone."""
    from smbprotocol import exceptions as ex
    while e is not None:
        if isinstance(e, SmbError) and not e.permanent and not isinstance(e.__cause__, ex.SMBOSError):
            return True     # (a status the server answered with, e.g. a file in use, is no lost connection)
        if _is_connection_error(e) or isinstance(e, TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _is_silent(e: BaseException) -> bool:
    """True when the server took the TCP connection but never answered the SMB negotiate (message 0)."""
    from smbprotocol import exceptions as ex
    return (isinstance(e, ex.SMBException) and "timeout" in str(e).lower()
            and "message id 0 " in str(e).lower())


def _is_negotiate_failure(e: BaseException) -> bool:
    from smbprotocol import exceptions as ex
    return isinstance(e, (ex.SMBConnectionClosed, ConnectionError, ValueError, ex.SMBException, TimeoutError))


def target_for(cfg: Config, name: str) -> SmbTarget:
    """The SmbTarget for remote ``name`` (from "smb:<name>"); NotFoundError lists the configured ones."""
    name = name.removeprefix("smb:")
    for r in cfg.smb.remotes:
        if r.name == name:
            return SmbTarget(r, cfg.smb.recorder_folder, recorder_id=recorder_id(cfg.state.dir))
    known = ", ".join(r.name for r in cfg.smb.remotes) or "none configured"
    raise NotFoundError(f"no SMB remote {name!r} (known: {known})")


def push_remote(cfg: Config, name: str, local_root: pathlib.Path, *, files: list[str] | None = None,
                progress: Callable[[str, int], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False,
                on_plan: Callable[[int, int], None] | None = None) -> PushResult:
    """Blocking: push an export folder to remote ``name`` with its bandwidth limit, retries and verify.

    For a job: ``await asyncio.to_thread(smbpush.push_remote, cfg, "office", staging_dir)``.
    """
    target = target_for(cfg, name)
    try:
        return push_with_retries(target, local_root, files=files, progress=progress, cancelled=cancelled,
                                 on_plan=on_plan, bandwidth_limit_kbps=target.remote.bandwidth_limit_kbps)
    finally:
        target.close()
