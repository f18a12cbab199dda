"""SMB connections and their faults: clear messages (SmbError), the password file.

Everything here talks smbprotocol/socket terms into what a person can act on; the push itself
(steno_exportd/smb/push.py) and the share as a Target (steno_exportd/smb/target.py) use it.
"""
from __future__ import annotations

import logging
import socket
import time

from steno_exportd.access.passwords import read_password_file
from steno_exportd.config import SmbRemote
from steno_exportd.errors import TargetError
from steno_exportd.safeparse import printable, shorten
from steno_exportd.smb import wire as smbwire

log = logging.getLogger(__name__)
for _name in ("smbprotocol", "smbclient", "spnego"):     # one INFO line per SMB message otherwise
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


class _OneLine(logging.Filter):
    """smbprotocol's receive thread logs its end with a traceback (log.exception: an ERROR and two chained
    exceptions in the journal whenever a NAS goes silent or drops), though its exception reaches the request
    waiting, which says it as an SmbError: said in one line instead, with the exception's words, printable (a
    server's bytes may be in them). The traceback goes to this module's log at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Never raises: it runs in smbprotocol's receive thread, which a filter's exception ended unrecorded, the
        # requests sent on waiting for ever (an exception whose words cannot be read: the record goes as it came).
        try:
            if record.exc_info and record.exc_info[1] is not None:
                e = record.exc_info[1]
                # (its words read before its format changes)
                said = record.getMessage()
                line = shorten(printable(f"{type(e).__name__}: {e}"), 300)
                log.debug("smbprotocol's receive thread ended", exc_info=record.exc_info)
                record.msg, record.args = "%s: %s", (said, line)
                record.exc_info = record.exc_text = None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        except Exception:  # noqa: BLE001 - see above
            pass
        return True


logging.getLogger("smbprotocol.connection").addFilter(_OneLine())


class SmbError(TargetError):
    """An SMB push failed; ``permanent`` errors (logon, access, missing share) are not retried; ``kind`` is what
    a person acts on (TargetError.kind: "permission" for access denied, "full" for a full share)."""

    def __init__(self, message: str, permanent: bool = False, kind: str | None = None) -> None:
        super().__init__(message, kind=kind)
        self.permanent = permanent


def read_password(path: str) -> str:
    """The password in ``path`` (first line); refuses a file other users can read."""
    if not path:
        return ""
    try:
        return read_password_file(path)
    except ValueError as e:
        raise SmbError(str(e), permanent=True) from None


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
        return SmbError(f"access denied on {where} (no write permission?)", True, kind="permission")
    if isinstance(exc, ex.DiskFull):
        return SmbError(f"share {where} is full", True, kind="full")
    if isinstance(exc, ex.SMBAuthenticationError):
        return SmbError(f"logon failed on {remote.server}: {exc}", True)
    msg = str(exc)
    if isinstance(exc, ValueError) and "failed to connect" in msg.lower():
        return SmbError(f"{remote.server}:{remote.port} unreachable: {msg.split(': ', 1)[-1]}")
    if isinstance(exc, (ex.SMBUnsupportedFeature,)) or "dialect" in msg.lower() or "SMB1" in msg:
        return SmbError(f"{remote.server} does not speak SMB2 or later (SMB2+ needed): {msg}", True)
    if isinstance(exc, smbwire.TooSlow):       # (a write the server stopped taking, or took too slowly)
        return SmbError(f"{remote.server}:{remote.port} {msg}: connection closed")
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
        return SmbError(f"access denied on {where} (no write permission?)" + (f": {name}" if name else ""), True,
                        kind="permission")
    if status in (0xC0000034, 0xC000003A):
        return SmbError(f"path not found on {where}: {name or remote.path}", True)
    name = name or "a file"
    if status == 0xC000007F:
        return SmbError(f"share {where} is full", True, kind="full")
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


def probe_smb1_only(remote: SmbRemote) -> bool:
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


def is_connection_error(e: BaseException) -> bool:
    from smbprotocol import exceptions as ex
    return isinstance(e, (OSError, ex.SMBConnectionClosed)) and not isinstance(e, ex.SMBOSError)


def is_silent(e: BaseException) -> bool:
    """True when the server took the TCP connection but never answered the SMB negotiate (message 0)."""
    from smbprotocol import exceptions as ex
    return (isinstance(e, ex.SMBException) and "timeout" in str(e).lower()
            and "message id 0 " in str(e).lower())


def is_negotiate_failure(e: BaseException) -> bool:
    from smbprotocol import exceptions as ex
    return isinstance(e, (ex.SMBConnectionClosed, ConnectionError, ValueError, ex.SMBException, TimeoutError))


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

