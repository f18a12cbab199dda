"""What callers send, checked once: session keys and selectors, formats, templates, options, listing filters.

Every adapter hands the raw values it received to these functions (through ``Core.check_export``,
``Core.session`` and ``Core.listing``) and only translates their errors (D-Bus error names, HTTP
4xx). Each size has a limit, checked before any work starts; errors are ``InvalidArgument`` or
``NotFoundError`` with a message meant for a person. The limits are documented in docs/dbus-api.md.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from typing import Any, Mapping, Sequence

from steno_exportd.config import check_pattern
from steno_exportd.engine.options import ExportOptions
from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.formats import FORMATS
from steno_exportd.library import SessionKeys, SessionListing
from steno_exportd.model import SessionSummary

MAX_SESSIONS = 10_000         # session keys in one export request (before de-duplication)
MAX_FORMATS = 100             # format names in one request (before de-duplication)
MAX_KEY_CHARS = SessionKeys.MAX_CHARS   # one session key: ids, uuids (36) and short ids (8) are shorter
MAX_TEMPLATE_CHARS = 64
MAX_TEXT_CHARS = 255          # any other text option (pattern, target_name, device_id)
MAX_TARGET_CHARS = 4096       # a target path or smb:<remote> (PATH_MAX)
MAX_QUERY_CHARS = 200         # ListSessions' title search
MAX_LISTED = 1_000_000        # ListSessions' offset and limit
MAX_OPTIONS = 64              # keys in one options/filter dictionary
SELECTORS = ("new", "all", "since_days")
NAMINGS = ("pattern", "id", "title", "sequential")

# option -> (lowest, highest) for whole numbers, or the allowed words for text
_RANGES: dict[str, tuple[int, int]] = {"priority": (-100, 100), "since_days": (1, 36_500)}
_CHOICES: dict[str, tuple[str, ...]] = {"naming": NAMINGS, "sessions": SELECTORS}
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    name: tuple(typing.get_args(hint) or (hint,)) for name, hint in typing.get_type_hints(ExportOptions).items()}


# ---- sessions ---------------------------------------------------------------------------

def session_keys(ids: Any) -> str | tuple[int | str, ...]:
    """A selector ("new", "all", "since_days") or the de-duplicated keys of a list or "1,2,uuid" text."""
    if isinstance(ids, str):
        if ids in SELECTORS:
            return ids
        if len(ids) > MAX_SESSIONS * (MAX_KEY_CHARS + 1):
            raise InvalidArgument(f"too many sessions: at most {MAX_SESSIONS:,} in one export")
        ids = [x for x in ids.split(",") if x.strip()]
    if not isinstance(ids, (list, tuple)):
        raise InvalidArgument('sessions: a list of ids, uuids or short ids, or "new", "all" or "since_days"')
    if len(ids) > MAX_SESSIONS:
        raise InvalidArgument(f"too many sessions: {len(ids):,} given, at most {MAX_SESSIONS:,} in one export")
    if not ids:
        raise InvalidArgument("no sessions given")
    return tuple(dict.fromkeys(session_key(k) for k in ids))


def session_key(key: Any) -> int | str:
    """One session key, stripped and bounded (not yet looked up)."""
    if isinstance(key, int) and not isinstance(key, bool):
        if not 0 <= key < 2**63:
            raise InvalidArgument(f"no session has the id {_shown(key)}: ids are positive")
        return key
    if not isinstance(key, str):
        raise InvalidArgument(f"a session is named by its id, uuid or short id, not by {_shown(key)}")
    k = key.strip()
    if not k:
        raise InvalidArgument("empty session id")
    if len(k) > MAX_KEY_CHARS:
        raise InvalidArgument(f"session id too long ({len(k):,} characters; ids, uuids and short ids "
                              f"have at most {MAX_KEY_CHARS})")
    return k


def outbox_id(value: Any) -> int:
    """An outbox message's id as a caller sends it (a number, or its digits as text): 1 or more."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**63:
        raise InvalidArgument(f"{_shown(value)} is no outbox message id: ids are whole numbers from 1 "
                              "(steno-exportctl outbox lists them)")
    return value


def resolve_sessions(keys: str | tuple[int | str, ...], listing: SessionListing,
                     options: ExportOptions) -> tuple[int, ...]:
    """Session ids for checked keys (see ``session_keys``), from the listing: no transcript is read."""
    if isinstance(keys, str):
        summaries: Sequence[SessionSummary] = [s for s in listing.sessions if s.exportable]
        if keys == "since_days" or options.sessions == "since_days":
            cut = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=options.since_days)
            summaries = [s for s in summaries if s.start_time and s.start_time >= cut]
        return tuple(s.id for s in summaries)
    out: dict[int, None] = {}
    unknown: list[str] = []
    first_error = ""
    for key in keys:
        try:
            out[listing.resolve(key)] = None
        except NotFoundError as e:
            unknown.append(str(key))
            first_error = first_error or str(e)
    if len(unknown) == 1:
        raise NotFoundError(first_error)
    if unknown:
        more = f" and {len(unknown) - 10:,} more" if len(unknown) > 10 else ""
        raise NotFoundError(f"unknown session(s): {', '.join(unknown[:10])}{more}")
    return tuple(out)


# ---- formats and templates --------------------------------------------------------------

def format_names(names: Any) -> tuple[str, ...]:
    """Known format names, de-duplicated in order; () for none given (the caller's default applies)."""
    if names is None:
        return ()
    if isinstance(names, str):
        if len(names) > MAX_FORMATS * 16:
            raise InvalidArgument(f"too many formats: at most {MAX_FORMATS} names")
        names = [x for x in names.split(",") if x.strip()]
    if not isinstance(names, (list, tuple)):
        raise InvalidArgument(f"formats: a list of format names ({', '.join(FORMATS)})")
    if len(names) > MAX_FORMATS:
        raise InvalidArgument(f"too many formats: {len(names):,} given, at most {MAX_FORMATS} "
                              f"(there are {len(FORMATS)}: {', '.join(FORMATS)})")
    out: dict[str, None] = {}
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgument(f"a format is a name, not {_shown(name)}")
        name = name.strip()
        if name not in FORMATS:
            raise NotFoundError(f"unknown format {_clip(name)!r}; valid: {', '.join(FORMATS)}")
        out[name] = None
    return tuple(out)


def template_names(template_dir: str | None) -> list[str]:
    """The document templates: the built-in ones and the user's (render.template_dir/templates.toml)."""
    from steno_exportd.render.doctemplates import available
    return list(available(template_dir or None)[0])


def template_name(name: Any, template_dir: str | None) -> str:
    """A known document template name; NotFoundError lists the valid ones."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument("template: a template name")
    if len(name) > MAX_TEMPLATE_CHARS:
        raise InvalidArgument(f"template name too long ({len(name):,} characters; at most {MAX_TEMPLATE_CHARS})")
    valid = template_names(template_dir)
    if name not in valid:
        raise NotFoundError(f"unknown template {name!r}; valid: {', '.join(valid)}")
    return name


# ---- options ----------------------------------------------------------------------------

def export_options(values: ExportOptions | Mapping[str, Any] | None) -> ExportOptions:
    """ExportOptions from a caller's dictionary (or a checked copy of an ExportOptions): strict types."""
    if values is None:
        return ExportOptions()
    if isinstance(values, ExportOptions):
        items = {f.name: getattr(values, f.name) for f in dataclasses.fields(ExportOptions)}
    elif isinstance(values, Mapping):
        items = dict(_known_keys("option", values, _OPTION_TYPES))
    else:
        raise InvalidArgument("options: a dictionary of option names and values")
    for name, value in items.items():
        _check_option(name, value)
    return values if isinstance(values, ExportOptions) else ExportOptions(**items)


def _check_option(name: str, value: Any) -> None:
    kinds = _OPTION_TYPES[name]
    if value is None and type(None) in kinds:
        return
    if type(value) not in kinds:
        raise InvalidArgument(f"option {name!r} must be {_wanted(name, kinds)}, not {_shown(value)}")
    if type(value) is int and name in _RANGES:
        lo, hi = _RANGES[name]
        if not lo <= value <= hi:
            raise InvalidArgument(f"option {name!r} must be from {lo} to {hi}, not {_shown(value)}")
    if type(value) is str:
        limit = MAX_TEMPLATE_CHARS if name == "template" else MAX_TEXT_CHARS
        if len(value) > limit:
            raise InvalidArgument(f"option {name!r} is too long ({len(value):,} characters; at most {limit})")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise InvalidArgument(f"option {name!r} must be one of {', '.join(_CHOICES[name])}, not {value!r}")
        if name == "pattern":
            problem = check_pattern(value)
            if problem:
                raise InvalidArgument(f"option 'pattern': {problem}")


# ---- listing filters --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SessionQuery:
    """A filter over the session listing (ListSessions, the web's list)."""

    exportable_only: bool = False
    query: str = ""                       # the title contains it, case-insensitive
    since: dt.datetime | None = None      # started at or after
    offset: int = 0
    limit: int = 0                        # 0: no limit

    def apply(self, sessions: Sequence[SessionSummary]) -> list[SessionSummary]:
        out = list(sessions)
        if self.exportable_only:
            out = [s for s in out if s.exportable]
        if self.query:
            q = self.query.casefold()
            out = [s for s in out if q in (s.title or "").casefold()]
        if self.since is not None:
            out = [s for s in out if s.start_time and s.start_time >= self.since]
        out = out[self.offset:]
        return out[:self.limit] if self.limit else out


_QUERY_TYPES: dict[str, tuple[type, ...]] = {"exportable_only": (bool,), "query": (str,), "since": (str,),
                                             "offset": (int,), "limit": (int,)}


def session_query(values: Mapping[str, Any]) -> SessionQuery:
    """A SessionQuery from a caller's dictionary: strict types, bounded sizes."""
    if not isinstance(values, Mapping):
        raise InvalidArgument("filter: a dictionary of filter keys and values")
    items = dict(_known_keys("filter key", values, _QUERY_TYPES))
    for name, value in items.items():
        if type(value) not in _QUERY_TYPES[name]:
            raise InvalidArgument(f"filter {name!r} must be {_wanted(name, _QUERY_TYPES[name])}, not {_shown(value)}")
    for name in ("offset", "limit"):
        if name in items and not 0 <= items[name] <= MAX_LISTED:
            raise InvalidArgument(f"filter {name!r} must be a whole number from 0 to {MAX_LISTED:,}, "
                                  f"not {_shown(items[name])}")
    if len(items.get("query", "")) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"filter 'query' is too long ({len(items['query']):,} characters; "
                              f"at most {MAX_QUERY_CHARS})")
    text, since = items.pop("since", ""), None
    if text:
        try:
            if len(text) > 64:
                raise ValueError(text)
            since = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(f"filter 'since': not an ISO date/time: {_clip(text)!r}") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
    return SessionQuery(since=since, **items)


# ---- messages ---------------------------------------------------------------------------

def _known_keys(what: str, values: Mapping[str, Any], known: Mapping[str, Any]) -> Mapping[str, Any]:
    if len(values) > MAX_OPTIONS:
        raise InvalidArgument(f"too many {what}s: {len(values):,} given, at most {MAX_OPTIONS}")
    unknown = [k for k in values if k not in known]
    if unknown:
        names = ", ".join(repr(_clip(str(k))) for k in unknown[:5])
        raise InvalidArgument(f"unknown {what}{'s' if len(unknown) > 1 else ''}: {names}; "
                              f"valid: {', '.join(known)}")
    return values


_WORDS = {bool: "true or false", int: "a whole number", str: "a text", float: "a number"}


def _wanted(name: str, kinds: tuple[type, ...]) -> str:
    words = [_WORDS[k] for k in kinds if k is not type(None)]
    if name in _RANGES:
        lo, hi = _RANGES[name]
        words = [f"a whole number from {lo} to {hi}"]
    elif name in _CHOICES:
        words = [f"one of {', '.join(_CHOICES[name])}"]
    text = " or ".join(words)
    return f"{text} (or left out)" if type(None) in kinds else text


def _shown(value: Any) -> str:
    """How a wrong value is named in a message: its kind and a short excerpt."""
    if isinstance(value, bool):
        return f"the truth value {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {_clip(value)!r}"
    if isinstance(value, int) and value.bit_length() > 64:
        return "a number too large"
    if isinstance(value, (int, float)):
        return f"the number {_clip(str(value))}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a dictionary"
    return "a value of another kind"


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."
