"""MIME messages written to a spool file: readable text + HTML body, attachments streamed in base64.

The stdlib's email package (policy SMTP) writes every header, so no text of ours can add a header
line; each attachment's body is then streamed from its file or bytes in ~1 MiB blocks, so a
recording is never held in memory whole. Sizes are exact before anything is written.
"""
from __future__ import annotations

import base64
import dataclasses
import email.policy
import email.utils
import mimetypes
import os
import re
import secrets
import time
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any, Sequence

from steno_exportd import safeparse
from steno_exportd.recordings import SourceRef

POLICY = email.policy.SMTP               # CRLF line ends; refuses CR/LF inside a header value
BLOCK = 57 * 16 * 1024                   # base64 input per block: whole 76-character lines (57 bytes each)
TEMPLATES = Path(__file__).parent / "templates"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclasses.dataclass(frozen=True)
class Attachment:
    name: str
    media_type: str
    body: bytes | SourceRef             # a rendered document's bytes, or a file sent as it is (a recording) as the
                                        # library checked it: opened through the data folder, no symlink followed
    size: int = 0
    recording: bool = False

    @property
    def encoded_size(self) -> int:
        """Bytes of the base64 body as written: 76-character lines, each ending in CRLF."""
        full, rest = divmod(self.size, 57)
        return full * 78 + ((rest + 2) // 3 * 4 + 2 if rest else 0)


@dataclasses.dataclass(frozen=True)
class Draft:
    """One message before it is written: header values are plain text, checked by the policy."""

    sender: str
    recipients: tuple[str, ...]
    subject: str
    text: str
    html: str
    attachments: tuple[Attachment, ...] = ()
    auto: bool = False                  # a notification: Auto-Submitted, so no vacation auto-replies


def one_line(text: str, limit: int = 200) -> str:
    """Header-safe text: control characters (CR/LF included) become spaces, runs of spaces one."""
    return safeparse.shorten(" ".join(_CONTROL.sub(" ", text or "").split()), limit)


def media_type(name: str, fallback: str = "application/octet-stream") -> str:
    return mimetypes.guess_type(name)[0] or fallback


def fit(attachments: Sequence[Attachment], budget: int) -> tuple[list[Attachment], list[Attachment]]:
    """(kept, left out) so the kept ones fit in budget: recordings go first, then the largest others."""
    kept = list(attachments)
    left: list[Attachment] = []
    order = sorted(kept, key=lambda a: (not a.recording, -a.encoded_size))
    for a in order:
        if sum(x.encoded_size for x in kept) <= budget:
            break
        kept.remove(a)
        left.append(a)
    return kept, left


_env: Any = None


def body(name: str, **context: object) -> tuple[str, str]:
    """(plain text, HTML) of templates/<name>.txt.j2 and .html.j2 (HTML autoescaped)."""
    global _env
    if _env is None:
        import jinja2      # only when a message is composed: not at the daemon's start
        _env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True,
                                  lstrip_blocks=True, autoescape=jinja2.select_autoescape(["html.j2"]),
                                  undefined=jinja2.StrictUndefined)
    text = _env.get_template(f"{name}.txt.j2").render(**context)
    html = _env.get_template(f"{name}.html.j2").render(**context)
    return text, html


def _skeleton(draft: Draft, domain: str) -> tuple[bytes, list[bytes]]:
    """The message with a unique marker line where each attachment's body goes, and those markers."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = draft.sender
    msg["To"] = ", ".join(draft.recipients)
    msg["Subject"] = one_line(draft.subject, 400)
    msg["Date"] = email.utils.formatdate(time.time(), localtime=False)
    msg["Message-ID"] = f"<{secrets.token_hex(16)}.steno@{domain}>"     # fixed width: size_of() is exact
    if draft.auto:
        msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(draft.text, cte="quoted-printable")        # 7-bit: no 8BITMIME needed
    msg.add_alternative(draft.html, subtype="html", cte="quoted-printable")
    markers = []
    for a in draft.attachments:
        marker = secrets.token_hex(24).encode()
        maintype, _, subtype = a.media_type.partition("/")
        msg.add_attachment(marker, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=one_line(a.name, 180))
        markers.append(base64.b64encode(marker) + b"\r\n")
    data = msg.as_bytes(policy=POLICY)
    for m in markers:
        if data.count(m) != 1:                      # cannot happen with 192 random bits; never guess
            raise RuntimeError("attachment marker not unique in the message skeleton")
    return data, markers


def size_of(draft: Draft, domain: str) -> int:
    """Exact bytes of the message as write() writes it for the same domain."""
    data, markers = _skeleton(draft, domain)
    return len(data) - sum(len(m) for m in markers) + sum(a.encoded_size for a in draft.attachments)


def _stream_base64(a: Attachment, out: IO[bytes]) -> None:
    if isinstance(a.body, bytes):
        for i in range(0, len(a.body), BLOCK):
            out.write(base64.encodebytes(a.body[i:i + BLOCK]).replace(b"\n", b"\r\n"))
        return
    source = a.body
    with source.open() as src:          # the very file checked
        fd = os.dup(src.fileno())
    with os.fdopen(fd, "rb") as f:
        left = a.size
        while left > 0:
            block = f.read(min(BLOCK, left))
            if not block:
                raise OSError(f"{source.path} became shorter while it was attached")
            left -= len(block)
            out.write(base64.encodebytes(block).replace(b"\n", b"\r\n"))
        if f.read(1):
            raise OSError(f"{source.path} grew while it was attached")


def write(draft: Draft, path: Path, domain: str) -> int:
    """Write the message to path (temp name, fsync, rename); return its size in bytes."""
    data, markers = _skeleton(draft, domain)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            pos = 0
            for a, m in zip(draft.attachments, markers):
                at = data.index(m, pos)
                out.write(data[pos:at])
                _stream_base64(a, out)
                pos = at + len(m)
            out.write(data[pos:])
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return size
