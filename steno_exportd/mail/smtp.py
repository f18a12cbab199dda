"""One SMTP delivery with aiosmtplib: implicit TLS or STARTTLS, AUTH, and DATA streamed from the spool file.

aiosmtplib only takes a message as one bytes object (and copies it twice to fix line ends and
dot-stuff), so DATA is sent here in blocks through its protocol's flow control: a 50 MB recording
costs about a megabyte of memory, not three copies of its 68 MB of base64.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import ssl
from typing import AsyncIterator, BinaryIO

import aiosmtplib

from steno_exportd import safeparse
from steno_exportd.access.passwords import read_password_file
from steno_exportd.config import EmailConfig
from steno_exportd.mail import said as _said
from steno_exportd.outbox.queue import Delivery, Outgoing

log = logging.getLogger(__name__)

BLOCK = 1024 * 1024            # bytes of the spool file read and written at a time
FINAL_REPLY_TIMEOUT = 600.0    # RFC 5321 4.5.3.2.6: a server may take 10 minutes to accept the data
# One try, from the connect to the message's final dot, must end within TRY_ALLOWANCE plus the stored message's
# size at TRY_MIN_RATE (try_limit()). Each step has its own timeout, but a server answering every one just within
# it (its replies a line at a time, the message taken a block just within email.timeout) held the try, and the
# outbox, which sends one message at a time, for the sum: with email.timeout = 600, a 50 MB recording (a 68 MB
# spool file) over 12 hours, each RCPT 10 minutes more. The allowance is RFC 5321's for MAIL or one RCPT (5
# minutes); the rate is the SMB push's floor (smb/wire.py): that 68 MB file gets 69 minutes more. The final reply
# keeps its own 10 minutes beyond the limit: the server has the whole message then, and a try cut while it decides
# is a message it may have kept, sent again at the next try. At the default 30 s the steps' own timeouts end most
# tries first (a small message's before its final dot: about 5 minutes); this bounds what they did not.
TRY_ALLOWANCE = 300.0
TRY_MIN_RATE = 16 * 1024       # bytes/s


class Refused(Exception):
    """The try failed; transient says whether another may succeed."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


def _code(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {_said(e.message)}"


def _transient_code(code: int) -> bool:
    return 400 <= code < 500


@functools.lru_cache(maxsize=1)
def _local_hostname() -> str:
    return socket.getfqdn() or "localhost"


def _tls_context(cfg: EmailConfig) -> ssl.SSLContext:
    """(blocking) The system's CAs (or email.ca_file), certificate and host name checked."""
    return ssl.create_default_context(cafile=cfg.ca_file or None)


def _password(cfg: EmailConfig) -> str:
    """The SMTP password (email.password_file's first line); a file other users can read is refused, as the SMB
    push refuses its own: the message waits (transient) until the admin makes the file private."""
    try:
        password = read_password_file(cfg.password_file)
    except ValueError as e:
        raise Refused(f"email.password_file: {e}", transient=True) from None
    if not password:
        raise Refused(f"email.password_file {cfg.password_file} is empty", transient=True)
    return password


def _stuffed(block: bytes, at_line_start: bool) -> bytes:
    """RFC 5321 4.5.2: a line that starts with '.' gets another one."""
    out = block.replace(b"\n.", b"\n..")
    return b"." + out if at_line_start and out.startswith(b".") else out


class _Writer(asyncio.StreamWriter):
    """A StreamWriter over aiosmtplib's transport that leaves it open when it goes: the connection is aiosmtplib's
    (QUIT, then close). StreamWriter.__del__ closes its transport: the server had the message, never a QUIT."""

    def __del__(self) -> None:
        pass


async def _send_data(smtp: aiosmtplib.SMTP, f: BinaryIO, timeout: float, limit: asyncio.Timeout) -> None:
    """DATA, the file in blocks (each written after the transport drained), the final dot, the reply (without the
    try's ``limit``: see TRY_ALLOWANCE)."""
    reply = await smtp.execute_command(b"DATA", timeout=timeout)
    if reply.code != 354:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    loop = asyncio.get_running_loop()
    # aiosmtplib's protocol implements the flow control asyncio.StreamWriter.drain() waits on
    writer = _Writer(smtp.transport, smtp.protocol, None, loop)
    at_line_start, tail = True, b"\r\n"
    while True:
        block = await asyncio.to_thread(f.read, BLOCK)
        if not block:
            break
        writer.write(_stuffed(block, at_line_start))
        at_line_start = block.endswith(b"\n")
        tail = (tail + block)[-2:]
        try:
            async with asyncio.timeout(timeout):
                await writer.drain()
        except asyncio.TimeoutError:
            raise Refused(f"{smtp.hostname}:{smtp.port} stopped reading the message (nothing taken for {timeout:g} s)",
                          transient=True) from None
    writer.write((b"" if tail == b"\r\n" else b"\r\n") + b".\r\n")
    limit.reschedule(None)
    reply = await smtp.protocol.read_response(timeout=max(timeout, FINAL_REPLY_TIMEOUT))
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


async def _session(cfg: EmailConfig, out: Outgoing, smtp: aiosmtplib.SMTP, f: BinaryIO,
                   limit: asyncio.Timeout) -> Delivery:
    await smtp.connect()
    if cfg.security == "starttls" or (cfg.security == "none" and cfg.starttls):
        await smtp.ehlo()
        if not smtp.supports_extension("starttls"):
            raise Refused(f"{cfg.smtp_host} does not offer STARTTLS (email.security = 'starttls')", transient=False)
        await smtp.starttls(tls_context=await asyncio.to_thread(_tls_context, cfg))
    if cfg.username:
        if not smtp.supports_extension("auth"):
            await smtp.ehlo()      # the first EHLO (or the one after STARTTLS) may not have happened yet
        if not smtp.supports_extension("auth"):
            raise Refused(f"{cfg.smtp_host} does not offer AUTH, but email.username is set", transient=False)
        if not smtp.supported_auth_methods:
            # aiosmtplib's "No suitable authentication method found." was tried again for email.give_up_hours:
            # the next EHLO says the same
            offered = _said(" ".join(m.upper() for m in smtp.server_auth_methods)) or "none"
            raise Refused(f"{cfg.smtp_host} offers AUTH only as {offered}; the daemon speaks "
                          f"{', '.join(m.upper() for m in smtp.AUTH_METHODS)} (email.username is set)", transient=False)
        password = await asyncio.to_thread(_password, cfg)
        await smtp.login(cfg.username, password)
    await smtp.mail(out.sender)
    delivered: list[str] = []
    refused: list[tuple[str, str]] = []
    deferred: list[tuple[str, str]] = []
    for rcpt in out.recipients:
        try:
            await smtp.rcpt(rcpt)
        except aiosmtplib.SMTPRecipientRefused as e:
            (deferred if _transient_code(e.code) else refused).append((rcpt, _code(e)))
        else:
            delivered.append(rcpt)
    if not delivered:
        await smtp.rset()
        return Delivery(refused=tuple(refused), deferred=tuple(deferred))
    await _send_data(smtp, f, cfg.timeout, limit)
    return Delivery(delivered=tuple(delivered), refused=tuple(refused), deferred=tuple(deferred))


def _tls_problem(e: BaseException) -> ssl.SSLError | None:
    while e is not None:
        if isinstance(e, ssl.SSLError):
            return e
        e = e.__cause__ or e.__context__
    return None


@contextlib.asynccontextmanager
async def delivery(cfg: EmailConfig, out: Outgoing) -> AsyncIterator[Delivery]:
    """Send one stored message; yield how it went (every failure a Delivery with its reason, never an exception)
    as soon as the server answered, and say QUIT (up to 5 s) only when the caller is done with it: the caller
    records the answer first, so a stop while a server holds its answer to QUIT never leaves a message the server
    took 'sending', to go out a second time at the next start."""
    try:
        f = await asyncio.to_thread(open, out.path, "rb")      # before connecting: no half message on a miss
    except OSError as e:
        yield Delivery(error=f"the stored message cannot be read: {e}", transient=False)
        return
    try:
        hostname = await asyncio.to_thread(_local_hostname)   # getfqdn may wait on DNS: never on the loop
        tls = await asyncio.to_thread(_tls_context, cfg) if cfg.security == "tls" else None   # reads the CA files
        smtp = aiosmtplib.SMTP(hostname=cfg.smtp_host, port=cfg.smtp_port, use_tls=cfg.security == "tls",
                               start_tls=False, tls_context=tls, timeout=cfg.timeout, local_hostname=hostname)
        try:
            result = await _deliver(cfg, out, smtp, f)
            yield result
        except asyncio.CancelledError:
            # a stop: no QUIT (mid-DATA it would be a line of the message, and the stop waited up to 5 s for
            # its answer); the connection just closes, without a final dot the server keeps nothing
            smtp.close()
            raise
        except BaseException:
            await _close(smtp)
            raise
        else:
            await _close(smtp)
    finally:
        await asyncio.to_thread(f.close)


def try_limit(size: int) -> float:
    """Seconds one try of a stored message of ``size`` bytes may take in all."""
    return TRY_ALLOWANCE + size / TRY_MIN_RATE


async def _deliver(cfg: EmailConfig, out: Outgoing, smtp: aiosmtplib.SMTP, f: BinaryIO) -> Delivery:
    """One try within try_limit() up to the final dot: past it the connection is closed at once (no QUIT, which
    the server would hold too) and the try failed, to be made again later (the server never had the whole
    message)."""
    size = (await asyncio.to_thread(os.fstat, f.fileno())).st_size
    seconds = try_limit(size)
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await _answered(cfg, out, smtp, f, limit)
    except TimeoutError:        # (_answered turns its own timeouts into a Delivery: this is the try's limit)
        smtp.close()
        return Delivery(error=_said(f"{cfg.smtp_host}:{cfg.smtp_port} took more than {seconds:.0f} s over one try "
                                    f"({TRY_ALLOWANCE:.0f} s plus the message's {size:,} bytes at "
                                    f"{TRY_MIN_RATE // 1024} KiB/s): answering too slowly"), transient=True)


async def _answered(cfg: EmailConfig, out: Outgoing, smtp: aiosmtplib.SMTP, f: BinaryIO,
                    limit: asyncio.Timeout) -> Delivery:
    where = f"{cfg.smtp_host}:{cfg.smtp_port}"
    try:
        return await _session(cfg, out, smtp, f, limit)
    except Refused as e:
        return Delivery(error=str(e), transient=e.transient)
    except aiosmtplib.SMTPResponseException as e:
        if e.code == aiosmtplib.SMTPStatus.invalid_response:      # aiosmtplib's code for what is no SMTP reply
            said = safeparse.shorten(_said(e.message), 120)
            return Delivery(error=f"{where} does not answer like an SMTP server ({said}); check email.smtp_host "
                                  "and email.smtp_port", transient=False)
        return Delivery(error=f"{where} answered {_code(e)}", transient=_transient_code(e.code))
    except aiosmtplib.SMTPNotSupported as e:
        return Delivery(error=f"{where}: {_said(e)}", transient=False)
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as e:
        tls = _tls_problem(e)
        if isinstance(tls, ssl.SSLCertVerificationError):
            return Delivery(error=f"the certificate of {where} is not trusted ({tls.verify_message}); "
                                  "set email.ca_file to its CA", transient=False)
        return Delivery(error=f"{where}: {_said(e) or type(e).__name__}", transient=True)


async def _close(smtp: aiosmtplib.SMTP) -> None:
    """QUIT, then close; closed also when a stop cancels the wait for the answer."""
    try:
        if smtp.is_connected:
            async with asyncio.timeout(5):
                await smtp.quit()
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
        pass
    finally:
        smtp.close()
