"""The bus socket as dbus-fast's reader sees it: a method call larger than MAX_CALL (SMALL for a signal, or for a
call anyone on the bus may send) never reaches its decoder whole.

dbus-fast decodes a message whole before any of our checks run, and the bus lets a message be 32 MiB: one call of
16 MB of tiny values (a steno-ui member's `CreateShareLink` with 4 million numbers under `hours`) took the daemon
from 41 to 339 MB and held its event loop for 2.2 s, over the unit's MemoryMax (256M): systemd killed it, and the
caller could do it again. Here the byte stream is read message by message (the 16-byte fixed header says each one's
length): a call over its limit is handed on as its header alone, its body read and dropped as it comes (never
held), and answered with a D-Bus error saying so; a signal over SMALL is dropped whole. Replies to our own calls (the bus,
udisks2) pass as they come. Any message of a shape this does not follow is handed on as it is, for dbus-fast to
refuse as before.
"""
from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Any, Callable

from dbus_fast import Message, MessageFlag, MessageType

log = logging.getLogger(__name__)

MAX_CALL = 4 * 1024 * 1024      # bytes of a method call of ours taken whole. The largest a caller needs: 10,000
                                # session ids (~120 KB); room for the calls refused by what they hold (200,000 ids,
                                # ~2.4 MB: "too many sessions"). Decoding 4 MB of the densest values costs ~70 MB
                                # and 0.7 s, within the unit's 256 MiB
TOO_LARGE = "org.freedesktop.DBus.Error.LimitsExceeded"
_HEAD = 16                      # a message's fixed header: endianness, type, flags, version, body length, serial,
                                # the header fields' length
_READ = 65536
_INTERFACE, _SENDER, _SIGNATURE, _UNIX_FDS = 2, 7, 8, 9
SMALL = 64 * 1024               # bytes of a signal, or of a call anyone on the bus may send (the bus policy: the
                                # interfaces below, none of whose methods takes an argument), or of a call with no
                                # interface named; every other user may send those, steno-ui members more
_ANYONES = ("", "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer")
WARN_EVERY = 10.0               # seconds between two lines about calls refused or dropped (the rest counted)
_CALL, _SIGNAL = MessageType.METHOD_CALL.value, MessageType.SIGNAL.value


def _pad8(n: int) -> int:
    return -n & 7


class CappedSocket:
    """``sock`` for dbus-fast's Unmarshaller (its ``recv``): the messages read from it, but a method call or signal
    over ``limit`` (see the module). ``cut``: (sender, serial) -> size of each call handed on without its body,
    for capped_process() to answer."""

    def __init__(self, sock: socket.socket, limit: int = MAX_CALL) -> None:
        self._sock = sock
        self.limit = limit
        self._in = bytearray()          # bytes read, not yet handed on: the start of the next message
        self._out = bytearray()         # bytes ready for the decoder
        self._skip = 0                  # bytes of a dropped body (or signal) still to come, read and dropped
        self._pass = 0                  # bytes of a large reply still to come, handed on as they come
        self._raw = False               # a stream of a shape this does not follow: handed on as it comes
        self.cut: dict[tuple[str, int], tuple[int, int]] = {}

    def recv(self, n: int) -> bytes:
        """The bytes ready for the decoder (``n`` or more); BlockingIOError when none are, b"" at the end."""
        while not self._out:
            data = self._sock.recv(max(n, _READ))      # (BlockingIOError passes on: the decoder waits for more)
            if not data:
                if self._in:                            # (a message cut by the end: the decoder says so)
                    self._out += self._in
                    self._in.clear()
                    break
                return b""
            self._take(data)
        # everything ready, whatever ``n``: dbus-fast's reader stops when its own buffer ends at a message's end and
        # is called again only when the socket has more, so a message kept here past ``n`` waited for unrelated
        # bus traffic, for ever on a quiet bus (a call ending on a multiple of 8 KiB, and the ones after it)
        out = bytes(self._out)
        self._out.clear()
        return out

    def _take(self, data: bytes) -> None:
        view = memoryview(data)
        if self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            view = view[n:]
        if self._pass:
            n = min(self._pass, len(view))
            self._out += view[:n]
            self._pass -= n
            view = view[n:]
        if self._raw:
            self._out += view
            return
        self._in += view
        while len(self._in) >= _HEAD and not self._skip and not self._pass and not self._raw and self._next():
            pass

    def _next(self) -> bool:
        """Hand on, or cut, the message at the start of ``_in``; False while more of it is needed to tell."""
        buf = self._in
        end = {ord("l"): "<", ord("B"): ">"}.get(buf[0])
        if end is None:
            self._raw = True
            self._out += buf
            buf.clear()
            return False
        kind = buf[1]
        body, serial, fields = struct.unpack_from(f"{end}III", buf, 4)
        start = _HEAD + fields + _pad8(_HEAD + fields)
        total = start + body
        if kind not in (_CALL, _SIGNAL) and total > self.limit:
            # a large reply to one of our own calls (the bus refuses replies nobody waits for): handed on as it
            # comes, not gathered here first
            n = min(total, len(buf))
            self._out += buf[:n]
            del buf[:n]
            self._pass = total - n
            return True
        if start > self.limit:                  # (its header alone is over: nothing of it is handed on)
            self._drop(total, None, serial, kind, self.limit)
            return True
        if len(buf) < start:
            return False
        header = self._header(bytes(buf[:start]), end, fields)
        limit = self.limit if kind == _CALL and header is not None and header[2] not in _ANYONES else SMALL
        if total <= limit:
            if len(buf) < total:
                return False
            self._out += buf[:total]
            del buf[:total]
            return True
        self._drop(total, header, serial, kind, limit)
        return True

    def _drop(self, total: int, header: tuple[bytes, str, str] | None, serial: int, kind: int, limit: int) -> None:
        """Read and drop the message of ``total`` bytes at the start of ``_in``; a call is handed on as ``header``
        (its header without its body), to be answered (capped_process)."""
        have = min(len(self._in), total)
        del self._in[:have]
        self._skip = total - have
        sender = header[1] if header is not None else ""
        if header is not None and kind == _CALL:
            self._out += header[0]
            self.cut[(sender, serial)] = (total, limit)
        else:
            _warn("D-Bus: a %s of %s bytes from %s dropped: over the %s bytes this service takes",
                  "signal" if kind == _SIGNAL else "call", f"{total:,}", sender or "a caller", f"{limit:,}")

    @staticmethod
    def _header(head: bytes, end: str, fields: int) -> tuple[bytes, str, str] | None:
        """(the message's fixed header and header fields with no body, no signature and no file descriptors; its
        sender; its interface) for a message whose header fields are of the kinds the bus sends; None otherwise."""
        pos, kept, sender, interface = _HEAD, [], "", ""
        stop = _HEAD + fields
        try:
            while pos < stop:
                pos += _pad8(pos)
                begin = pos
                code = head[pos]
                siglen = head[pos + 1]
                sig = head[pos + 2:pos + 2 + siglen]
                pos += 3 + siglen
                if sig in (b"s", b"o"):
                    pos += -pos & 3
                    (n,) = struct.unpack_from(f"{end}I", head, pos)
                    value = head[pos + 4:pos + 4 + n]
                    pos += 5 + n
                    if code == _SENDER:
                        sender = value.decode("ascii")
                    elif code == _INTERFACE:
                        interface = value.decode("ascii")
                elif sig == b"g":
                    pos += 2 + head[pos]
                elif sig == b"u":
                    pos += (-pos & 3) + 4
                else:
                    return None
                if pos > stop:
                    return None
                if code not in (_SIGNATURE, _UNIX_FDS):
                    kept.append(head[begin:pos])
        except (IndexError, struct.error, UnicodeDecodeError):
            return None
        array = b""
        for f in kept:
            array += b"\0" * _pad8(_HEAD + len(array)) + f
        fixed = head[:4] + struct.pack(f"{end}III", 0, struct.unpack_from(f"{end}I", head, 8)[0], len(array))
        return fixed + array + b"\0" * _pad8(_HEAD + len(array)), sender, interface


class _Quiet:
    """Lines about messages refused or dropped, at most one every WARN_EVERY seconds (a caller sending them in a
    loop does not fill the journal): the ones in between counted in the next line."""

    def __init__(self) -> None:
        self.at = 0.0       # when the last line was written (time.monotonic)
        self.more = 0       # lines held back since

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.at < WARN_EVERY:
            self.more += 1
            return
        more, self.more, self.at = self.more, 0, now
        log.warning(msg + (f" (and {more:,} more since the last such line)" if more else ""), *args)


_warn = _Quiet().warn       # one for the process: a flood over many connections is one line every WARN_EVERY


def capped_process(stream: CappedSocket, process: Callable[[Message], None], send: Callable[[Message], Any]
                   ) -> Callable[[Message], None]:
    """dbus-fast's ``process`` for messages read through ``stream``: a call it cut is answered TOO_LARGE (one log
    line), never run."""

    def each(msg: Message) -> None:
        cut = stream.cut.pop((msg.sender or "", msg.serial), None) if stream.cut else None
        if cut is None or msg.message_type != MessageType.METHOD_CALL:
            process(msg)
            return
        size, limit = cut
        _warn("D-Bus: a call of %s bytes from %s (%s.%s) refused: over the %s bytes this service takes",
              f"{size:,}", msg.sender or "a caller", msg.interface or "", msg.member or "", f"{limit:,}")
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            send(Message.new_error(msg, TOO_LARGE, f"the call is {size:,} bytes; this service takes calls of at "
                                                   f"most {limit:,} bytes"))
    return each
