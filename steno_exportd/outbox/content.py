"""What a message says: a meeting (or several) with its documents, or notifications."""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from steno_exportd.engine.identity import host_name
from steno_exportd.engine.naming import resolve_collision, safe_name
from steno_exportd.errors import NotAllowedError
from steno_exportd.engine.plan import plan_session, render_file, source_ref
from steno_exportd.render.base import RenderOptions
from steno_exportd.outbox.compose import Attachment, Draft, body, fit, media_type, one_line, size_of
from steno_exportd.render.common import date_text, session_context

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Notice:
    """One event worth telling someone about."""

    event: str                # one of config.NOTIFY_EVENTS
    subject: str
    lines: tuple[str, ...]
    at: float

    def to_json(self) -> dict:
        return dict(event=self.event, subject=self.subject, lines=list(self.lines), at=self.at)

    @classmethod
    def from_json(cls, d: dict) -> "Notice":
        return cls(str(d["event"]), str(d["subject"]), tuple(str(x) for x in d["lines"]), float(d["at"]))


@dataclasses.dataclass(frozen=True)
class Links:
    """Share links for files too large for a message (email.oversize = "link"): made by the core's access store."""

    url: Callable[[str], str]           # a token -> the link's full address (access.share_url)
    hours: float                        # each link's lifetime
    uses: int                           # downloads each link allows
    make: Callable[[int, str], str]     # (session id, its uuid) -> a new link's token for that meeting only
                                        # (blocking: a row in access.db)
    token_chars: int = 24               # every token has this length: the body's size is known before any link exists


ENDED_LOGIN = ("the login on the recorder's web page that asked for this message ended before its links were "
               "made")


def _mb(n: float) -> str:
    return f"{n / MiB:.1f} MB"


def sessions_subject(titles: Sequence[str]) -> str:
    first = one_line(titles[0]) or "Untitled session" if titles else ""
    if len(titles) == 1:
        return f"Meeting: {first}"
    return f"{len(titles)} meetings: {first} and {len(titles) - 1} more"


def domain_of(sender: str) -> str:
    """The Message-ID domain: the sender's (a recorder's own host name is rarely a real domain)."""
    return sender.rpartition("@")[2].strip(">") or "localhost"


def sessions_draft(sessions: Sequence[Any], formats: Sequence[str], options: RenderOptions, sender: str,
                   recipients: Sequence[str], limit: int,
                   links: Links | str | None = None, *, data_dir: Path) -> tuple[Draft, tuple[str, ...]]:
    """The message for sessions with their documents (rendered like an export's files); and what was left out.

    Files over the limit are named in the body; with ``links`` (email.oversize = "link") each meeting concerned gets
    a share link there, or ``links`` is the reason why it cannot (a text). A recording is attached as the file the
    library checked, opened through ``data_dir`` (the recorder's data folder) without following a symlink.
    """
    attachments: list[Attachment] = []
    problems: list[str] = []
    taken: set[str] = set()
    whose: dict[str, Any] = {}          # attachment name -> its session
    for s in sessions:
        prefix = f"{s.summary.short_id} " if len(sessions) > 1 else ""
        for pf in plan_session(s, tuple(formats), options, True):
            if pf.error:
                problems.append(f"{one_line(s.title)}: {pf.fmt}: {pf.error}")
                continue
            name = resolve_collision(safe_name(prefix + pf.name), taken)
            taken.add(name)
            whose[name] = s
            if pf.source is not None:
                attachments.append(Attachment(name, media_type(name), source_ref(pf, s, data_dir), size=pf.size,
                                              recording=pf.fmt == "audio"))
            else:
                data = render_file(pf, s)
                attachments.append(Attachment(name, media_type(name), data, size=len(data)))
    subject = sessions_subject([s.title for s in sessions])
    share = links if isinstance(links, Links) else None
    context = dict(sessions=[session_context(s) for s in sessions], subject=subject, problems=problems,
                   limit=_mb(limit), host=host_name(), no_link=links if isinstance(links, str) else "",
                   link_until=_until(share.hours) if share else "", link_uses=share.uses if share else 0)

    def draft(kept: Sequence[Attachment], left: Sequence[Attachment], tokens: dict[int, str]) -> Draft:
        shared = []
        for s in sessions:
            mine = [a for a in left if whose[a.name] is s]
            if mine and share and s.id in tokens:
                page = share.url(tokens[s.id])
                shared.append(dict(title=one_line(s.title) or "Untitled session", page=page, files=[
                    dict(name=f"{a.name} ({_mb(a.size)})", url=f"{page}/audio?dl=1" if a.recording else page)
                    for a in mine]))
        text, html = body("sessions", attached=[f"{a.name} ({_mb(a.size)})" for a in kept],
                          left_out=[f"{a.name} ({_mb(a.size)})" for a in left], shared=shared, **context)
        return Draft(sender, tuple(recipients), subject, text, html, tuple(kept))

    # the body without attachments (and a link of the very length a real one has for each meeting), plus room for
    # the longest "left out" note, bounds what they may use
    placeholders = {s.id: "x" * share.token_chars for s in sessions} if share else {}
    bare = size_of(draft([], attachments, placeholders), domain_of(sender))
    kept, left = fit(attachments, limit - bare - 200 * len(attachments))
    tokens: dict[int, str] = {}
    if share:
        try:
            for s in sessions:
                if any(whose[a.name] is s for a in left):
                    tokens[s.id] = share.make(s.id, s.uuid)     # the meeting read, not whatever has its id now
        except NotAllowedError:
            # the browser login that asked for the message ended before its links were made (a logout, a new
            # password): the message goes without links, saying why (any made already ended with that login);
            # never links made at the recorder instead, which would outlive "log out everywhere"
            tokens, share = {}, None
            context.update(no_link=ENDED_LOGIN, link_until="", link_uses=0)
    return draft(kept, left, tokens), tuple(a.name for a in left)


def _until(hours: float) -> str:
    """When a link made now expires, as the recorder's local time."""
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(time.time() + hours * 3600))


def notices_draft(notices: Sequence[Notice], sender: str, recipients: Sequence[str]) -> Draft:
    """One notification, or a digest of several."""
    if len(notices) == 1:
        subject = notices[0].subject
    else:
        kinds: dict[str, int] = {}
        for n in notices:
            kinds[n.event] = kinds.get(n.event, 0) + 1
        subject = f"{len(notices)} events: " + ", ".join(f"{k.replace('_', ' ')} x{v}" for k, v in kinds.items())
    shown = [dict(subject=n.subject, lines=list(n.lines),
                  when=date_text(dt.datetime.fromtimestamp(n.at, dt.timezone.utc))) for n in notices]
    text, html = body("notice", notices=shown, subject=subject, host=host_name())
    return Draft(sender, tuple(recipients), f"[steno] {subject}", text, html, auto=True)
