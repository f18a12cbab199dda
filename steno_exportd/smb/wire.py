"""Zero-copy SMB2 WRITE requests on an smbprotocol connection (the hot path of smbpush).

smbprotocol packs each 4 MiB write through several byte-string concatenations (message, header,
signature splice, TCP frame) and signs a fresh copy; on a Pi that costs more than the network.
Here the 112-byte header+WRITE body is packed by hand, the signature is computed incrementally
over (header, body, data) and the parts go out with one ``sendmsg``. Responses are still matched
and checked by smbprotocol's receive thread (we register a normal ``Request``). Encrypted
sessions, DFS trees and unknown dialect/signing set-ups use smbprotocol's own path.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import inspect
import logging
import struct
import threading
import time

from steno_exportd import sockwait

_HDR = struct.Struct("<4sHHHHHHIIQIIQ16s")      # SMB2 sync header, 64 bytes
_WRITE = struct.Struct("<HHIQ16sIIHHI")        # SMB2 WRITE request without buffer, 48 bytes
_CMD_WRITE = 9
_FLAG_SIGNED = 0x00000008
_PAYLOAD = 65536

log = logging.getLogger(__name__)


def supported(raw) -> bool:
    """True when the fast path can send on this open file."""
    fd = raw.fd
    tree, session = fd.tree_connect, fd.tree_connect.session
    return not (session.encrypt_data or tree.encrypt_data or tree.is_dfs_share) and _sign_id(fd.connection,
                                                                                          session) is not None


def _sign_id(conn, session):
    if not (session.signing_required and session.signing_key):
        return "none"
    return _algorithm(conn)


def _algorithm(conn):
    """The signing algorithm of the connection (as smbprotocol's _generate_signature picks it)."""
    from smbprotocol.connection import Dialects, SigningAlgorithms

    if conn.dialect >= Dialects.SMB_3_1_1 and conn.signing_algorithm_id is not None:
        return conn.signing_algorithm_id
    if conn.dialect >= Dialects.SMB_3_0_0:
        return SigningAlgorithms.AES_CMAC
    return SigningAlgorithms.HMAC_SHA256


def _signature(sign_id, key: bytes, message_id: int, parts, message_info: int = 0) -> bytes:
    from smbprotocol.connection import SigningAlgorithms

    if sign_id == SigningAlgorithms.AES_GMAC:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        nonce = message_id.to_bytes(8, "little") + message_info.to_bytes(4, "little")
        enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        for p in parts:
            enc.authenticate_additional_data(p)
        enc.finalize()
        return enc.tag
    if sign_id == SigningAlgorithms.AES_CMAC:
        from cryptography.hazmat.primitives import cmac
        from cryptography.hazmat.primitives.ciphers import algorithms
        c = cmac.CMAC(algorithms.AES(key))
        for p in parts:
            c.update(p)
        return c.finalize()
    import hashlib
    import hmac
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.digest()[:16]


def send_write(raw, data, offset: int, credit_request: int):
    """Send one WRITE of ``data`` (bytes-like, <= max write size) at ``offset``; returns the Request."""
    from smbprotocol.connection import Request
    from smbprotocol.header import Commands, SMB2HeaderRequest

    fd = raw.fd
    conn = fd.connection
    tree = fd.tree_connect
    session = tree.session
    n = len(data)
    charge = (max(n, 1) - 1) // _PAYLOAD + 1 if conn.supports_multi_credit else 0
    with conn.sequence_lock:
        avail = conn.sequence_window["high"] - conn.sequence_window["low"]
        if max(charge, 1) > avail:
            raise ValueError(f"write needs {charge} credits, {avail} available")
        mid = conn.sequence_window["low"]
        conn.sequence_window["low"] += charge if charge > 0 else 1
    sign_id = _sign_id(conn, session)
    flags = _FLAG_SIGNED if sign_id != "none" else 0
    credit_request = credit_request or charge
    hdr = _HDR.pack(b"\xfeSMB", 64, charge, 0, 0, _CMD_WRITE, credit_request, flags, 0, mid, 0,
                    tree.tree_connect_id, session.session_id, b"\x00" * 16)
    body = _WRITE.pack(49, 64 + 48, n, offset, fd.file_id, 0, 0, 0, 0, 0)
    if flags:
        sig = _signature(sign_id, session.signing_key, mid, (hdr, body, data))
        hdr = hdr[:48] + sig
    else:
        sig = b"\x00" * 16

    header = SMB2HeaderRequest()
    header["credit_charge"] = charge
    header["command"] = Commands.SMB2_WRITE
    header["credit_request"] = credit_request
    header["message_id"] = mid
    header["tree_id"] = tree.tree_connect_id
    header["session_id"] = session.session_id
    header["flags"] = flags
    header["signature"] = sig
    header["data"] = b""
    request = Request(header, None, conn, session_id=session.session_id)
    conn.outstanding_requests[mid] = request
    conn._check_worker_running()
    timeout = getattr(conn, "_receive_timeout", 30)
    _sendmsg(conn.transport, [struct.pack(">I", 112 + n), hdr, body, data], timeout)
    return request


class TooSlow(TimeoutError):
    """The server stopped taking a message we send, or took it too slowly: the connection is closed. Its words
    name what happened, not the server (client.explain puts its address before them)."""


def _sendmsg(transport, parts, timeout: float = 30.0) -> None:
    """Send all parts (one message); a server that stops reading for twice ``timeout`` (the receive timeout), or has
    not taken them all within message_time(), closes the connection (no hang): TooSlow. Without the second a server
    taking a few bytes every few seconds (each resetting the stall timeout) held the write, and the socket's lock
    with it, so the receive loop could not send its keep-alive either: a 1 MiB write at 4 KiB/s, four minutes; an
    8 MiB one, over half an hour."""
    import socket

    views = [memoryview(p).cast("B") for p in parts]
    total = sum(len(v) for v in views)
    stall_timeout = 2.0 * timeout
    why = ""
    with transport._sock_lock:
        sock = transport._sock
        begun = time.monotonic()
        deadline = begun + stall_timeout
        end = begun + message_time(timeout, total)
        while views:
            try:
                sent = sock.sendmsg(views, [], socket.MSG_DONTWAIT)
            except BlockingIOError:
                now = time.monotonic()
                left = min(deadline, end) - now
                if left <= 0:
                    taken = total - sum(len(v) for v in views)
                    if now >= deadline:
                        why = f"stopped taking an SMB message for {stall_timeout:.0f} s ({taken:,} of {total:,} bytes)"
                    else:
                        why = (f"took {taken:,} of {total:,} bytes of an SMB message in {now - begun:.0f} s, too "
                               f"slowly (one must go within {max(timeout, 1):g} s plus its length at "
                               f"{MIN_RATE // 1024} KiB/s)")
                    break
                sockwait.ready(sock, min(left, 1.0), write=True)
                continue
            deadline = time.monotonic() + stall_timeout
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0
    if why:
        # A reset, not a FIN after what the server has yet to take: that stayed queued (2.5 MB of socket buffer on
        # loopback), trickling to it for ten minutes at 4 KiB/s, and the server kept the file open meanwhile, so
        # the push's next try found it in use and could not resume it
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()       # wakes smbprotocol's receive thread and every waiter
        raise TooSlow(why)


def write_response(raw, request) -> int:
    """Wait for the WRITE response; the count the server wrote (errors raise as smbprotocol's)."""
    return raw.fd._write_response(request)


_WRITTEN_FOR = "1.17."                  # the smbprotocol versions whose Tcp _recv replaces (packaging/requirements.lock)
_ATTRS = ("_sock", "_sock_lock", "_close_lock", "connected", "timeout", "MAX_SIZE")   # what ours use of a Tcp
_METHODS = ("recv", "_recv", "send", "close")
MAX_MESSAGE = 0x00FFFFFF               # SMB2 over TCP: a 24-bit length, its first byte zero (MS-SMB2 2.1)
MIN_MESSAGE = 64                        # an SMB2 header (an encrypted message is longer: a transform header, then it)
MIN_RATE = 16 * 1024                    # bytes/s a message must come or go at, beyond the receive timeout (a 2 MiB
                                        # read's answer, or write: 128 s more, a 512 kbit/s link sends it in 32 s)
_installed: dict[type, bool] = {}      # install()'s decision for each class (one warning, not one per push)
_decided = threading.Lock()


def message_time(timeout: float, length: int) -> float:
    """Seconds one SMB message of ``length`` bytes may take to come, or to go, whole: the remote's timeout (its
    receive timeout) plus its length at MIN_RATE. A peer never still for the timeout but slower than that (a byte
    every second) is cut off here, not trusted for as long as it pleases."""
    return max(timeout, 1) + length / MIN_RATE


class _Stalled(Exception):
    """A message stopped coming part-way (or came too slowly): the connection is closed, not read on mid-message."""


def _recv_message(self, timeout):
    """smbprotocol's Tcp.recv: one message (its 4-byte length, then the message), b"" when the connection is closed.
    A length over SMB's MAX_MESSAGE closes the connection before a byte of the message is kept: its buffer was made,
    zeroed, at the length the server said, and a server saying 2 GiB had the daemon's 256 MiB (its unit's
    MemoryMax) killed at every push. A message must come whole within ``timeout`` (the receive timeout) plus its
    length at MIN_RATE: a server sending a byte every second was never idle long enough for the timeout, and held
    the push for as long as it pleased (a 2 MiB read's answer: twelve days). Either closes the connection, one line
    saying why; the requests waiting fail as for any connection lost."""
    where = f"{getattr(self, 'server', 'the server')}:{getattr(self, 'port', '?')}"
    if getattr(self, "timeout", None):  # the connection's timeout (smbclient's connection_timeout) bounds it too: the
        timeout = min(timeout, max(5, 2 * self.timeout))  # receive timeout is set after log-on, when this thread
    full = timeout                      # already waits with smbprotocol's 600 s for the first answer after it
    try:                                # (full: the message's own, not what a long idle wait for its length left)
        head, timeout = _recv(self, 4, timeout)
        if not head:
            return b""
        length = struct.unpack(">L", head)[0]
        if length > MAX_MESSAGE or length < MIN_MESSAGE:
            # Under a header's length: smbprotocol took the b"" that _recv returns for it as the connection's end and
            # its receive thread stopped, the connection still saying connected, every later request waiting for ever.
            log.warning("%s sent an SMB message of %s bytes, %s (%s): connection closed", where, f"{length:,}",
                        *(("more than SMB allows", f"{MAX_MESSAGE:,}") if length > MAX_MESSAGE
                          else ("less than an SMB2 header", MIN_MESSAGE)))
            self.close()
            return b""
        return _recv(self, length, full, time.monotonic() + message_time(full, length))[0] or b""
    except _Stalled as e:
        log.warning("%s stopped sending an SMB message part-way (%s): connection closed", where, e)
        self.close()
        return b""


def _send_message(self, header):
    """smbprotocol's Tcp.send: one message (its 4-byte length, then it) through _sendmsg, within the same bounds as
    our WRITEs. smbprotocol's own waited on a blocking socket without a timeout, holding the socket's lock: a
    server that stopped reading held every request not sent by send_write (an encrypted push's writes, a file's
    close, the keep-alive) and the job's cancel (close() takes that lock) for ever. Its timeout is the receive
    timeout a connection gets once logged on (target.py: twice the connection's own, at least 5 s). An encrypted
    message comes as smbprotocol's transform header structure, not bytes: packed here, as its DirectTCPPacket did."""
    data = header if isinstance(header, (bytes, bytearray, memoryview)) else header.pack()
    if len(data) > self.MAX_SIZE:
        raise ValueError(f"Data to be sent over Direct TCP size {len(data)} exceeds the max length allowed "
                         f"{self.MAX_SIZE}")
    _sendmsg(self, [struct.pack(">I", len(data)), data], max(5, 2 * self.timeout) if self.timeout else 60)


def _recv(self, length, timeout, deadline=None):
    """smbprotocol's Tcp._recv without its per-chunk logging and copies, waiting with poll() (sockwait), not
    select(), which refuses a socket numbered past 1024; _Stalled when the bytes stop part-way, or ``deadline``
    passes first (TimeoutError, as before, when none came: the connection idle, which its keep-alive handles)."""
    buffer = bytearray(length)
    view = memoryview(buffer)
    offset = 0
    sock = self._sock
    begun = time.monotonic()
    while offset < length:
        start = time.monotonic()
        # With a deadline, each wait is the full timeout (capped by the deadline), not what earlier waits left of it:
        # counted down, after ``timeout`` seconds inside one message any pause over 1 s closed the connection well
        # before its deadline (a 2 MiB answer on a slow link, 5 s into it).
        wait = max(timeout, 1) if deadline is None else min(max(timeout, 1), deadline - start)
        with self._close_lock:
            if not self.connected:
                return None, timeout
            if wait <= 0 or not sockwait.ready(sock, max(wait, 0)):
                if offset or deadline is not None:
                    raise _Stalled(f"{offset:,} of {length:,} bytes in {time.monotonic() - begun:.1f}s")
                raise TimeoutError(f"recv idle for {time.monotonic() - start:.1f}s ({offset}/{length} bytes)")
            if deadline is None:
                timeout -= time.monotonic() - start
            try:
                n = sock.recv_into(view[offset:])
            except OSError as e:
                if e.errno not in (errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED):
                    raise
                n = 0
        if n == 0:
            self.close()
            return None, timeout
        offset += n
    return bytes(buffer), timeout


def install() -> bool:
    """Our receive loop and send in smbprotocol's transport class, before a session is registered: its negotiate
    and log-on wait on the socket too (smbprotocol's own loop used select(); its send had no bound). Only on the
    smbprotocol they were written for: on another (a version, or a class, that differs) smbprotocol's own stay and
    one warning says so. True when ours are in."""
    from smbprotocol import transport
    tcp = transport.Tcp
    with _decided:
        if tcp not in _installed:
            why = _unknown(tcp)
            if why:
                log.warning("smbprotocol's own receive loop, send, signature check and writes are kept (%s; "
                            "steno-exportd's were written for smbprotocol %sx): its loop waits with select(), which fails on a socket numbered 1024 or more, so an SMB "
                            "push can fail while the daemon has many connections open", why, _WRITTEN_FOR)
            else:
                tcp._recv = _recv
                tcp.recv = _recv_message
                tcp.send = _send_message
            _installed[tcp] = not why
        return _installed[tcp]


def _unknown(tcp: type) -> str:
    """What differs from the smbprotocol _recv was written for ('' when nothing does)."""
    try:
        version = importlib.metadata.version("smbprotocol")
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    if not version.startswith(_WRITTEN_FOR):
        return f"smbprotocol {version} is installed"
    try:
        probe = tcp("127.0.0.1", 445)       # (1.17's __init__ only stores its arguments)
    except Exception as e:
        return f"its {tcp.__name__}() failed: {e}"
    missing = [a for a in _ATTRS if not hasattr(probe, a)] + [m for m in _METHODS if not callable(getattr(tcp, m, None))]
    if missing:
        return f"its {tcp.__name__} has no {', '.join(missing)}"
    for method, ours in (("_recv", ["self", "length", "timeout"]), ("recv", ["self", "timeout"]),
                         ("send", ["self", "header"])):
        params = list(inspect.signature(getattr(tcp, method)).parameters)
        if params != ours:
            return f"its {tcp.__name__}.{method} takes ({', '.join(params)})"
    return ""


def tune(connection) -> None:
    """Give this connection a signature check without copies (the receive loop is the class's: install())."""
    import types

    if hasattr(connection, "verify_signature") and hasattr(connection, "_generate_signature"):
        connection.verify_signature = types.MethodType(_verify_signature, connection)


_HEADER_FIELDS = ("protocol_id", "structure_size", "credit_charge", "status", "command", "credit_response",
                  "flags", "next_command", "message_id", "reserved", "tree_id", "session_id")


def _verify_signature(self, header, session_id, force=False):
    """smbprotocol's check, without re-packing (copying) an 8 MiB READ response to sign it."""
    import binascii

    from smbprotocol.connection import Commands, NtStatus, Smb2Flags
    from smbprotocol.exceptions import SMBException

    message_id = header["message_id"].get_value()
    flags = header["flags"]
    status = header["status"].get_value()
    command = header["command"].get_value()
    if not force and (message_id == 0xFFFFFFFFFFFFFFFF or not flags.has_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
                      or status == NtStatus.STATUS_PENDING or command == Commands.SMB2_SESSION_SETUP):
        return
    session = self.session_table.get(session_id, None)
    if session is None:
        raise SMBException(f"Failed to find session {session_id} for message verification")
    head = b"".join(header[f].pack() for f in _HEADER_FIELDS) + b"\x00" * 16
    data = header["data"].get_value()
    if len(head) != 64:
        return type(self).verify_signature(self, header, session_id, force)
    response = flags.has_flag(Smb2Flags.SMB2_FLAGS_SERVER_TO_REDIR)
    info = (1 if response else 0) | (2 if command == Commands.SMB2_CANCEL else 0)
    expected = _signature(_algorithm(self), session.signing_key, message_id, (head, data), info)
    actual = header["signature"].get_value()
    if actual != expected:
        raise SMBException("Server message signature could not be verified: "
                           f"{binascii.hexlify(actual).decode()} != {binascii.hexlify(expected).decode()}")
