"""The one place that checks what callers send: keys, selectors, formats, templates, options, filters."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from steno_exportd import request
from steno_exportd.engine.options import ExportOptions
from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.formats import FORMATS
from steno_exportd.library import SessionListing
from steno_exportd.model import SessionSummary

NOW = dt.datetime.now(dt.timezone.utc)


def summary(i: int, uuid: str, status: str = "completed", days_ago: int = 0) -> SessionSummary:
    t = NOW - dt.timedelta(days=days_ago)
    return SessionSummary(id=i, uuid=uuid, title=f"Meeting {i}", status=status, start_time=t, end_time=t,
                          duration_seconds=60, updated_at=t, created_at=t, location=None, participant_count=1,
                          audio_format=None, audio_size=None)


@pytest.fixture
def listing() -> SessionListing:
    return SessionListing((
        summary(1, "aaaaaaaa-0000-4000-8000-000000000001"),
        summary(2, "bbbbbbbb-0000-4000-8000-000000000002", days_ago=40),
        summary(3, "cccccccc-0000-4000-8000-000000000003", status="recording"),
        summary(4, "12345678-0000-4000-8000-000000000004"),
        summary(5, "dddddddd-0000-4000-8000-000000000005"),
        summary(6, "DDDDDDDD-1111-4000-8000-000000000006"),
    ))


def resolve(ids, listing, **options):
    return request.resolve_sessions(request.session_keys(ids), listing, ExportOptions(**options))


def test_keys_one_rule(listing):
    assert resolve(["1", 2, "BBBBBBBB-0000-4000-8000-000000000002", "cccccccc", " 4 "], listing) == (1, 2, 3, 4)
    assert resolve("1,aaaaaaaa, 5", listing) == (1, 5)              # de-duplicated, in order
    assert resolve(["12345678"], listing) == (4,)                   # digits: an id first, else a short id
    with pytest.raises(NotFoundError, match="short id dddddddd is ambiguous"):
        resolve(["dddddddd"], listing)
    for prefix in ("aaaa", "aaaaaaaa-0000", "aaaaaaaa0000"):
        with pytest.raises(NotFoundError, match="no session"):
            resolve([prefix], listing)
    with pytest.raises(NotFoundError, match=r"unknown session\(s\): 98, 99"):
        resolve(["98", "1", "99"], listing)


def test_selectors(listing):
    assert resolve("all", listing) == (1, 2, 4, 5, 6)               # exportable ones (3 is still recording)
    assert resolve("new", listing) == (1, 2, 4, 5, 6)
    assert resolve("since_days", listing, since_days=30) == (1, 4, 5, 6)
    assert resolve("all", listing, sessions="since_days", since_days=30) == (1, 4, 5, 6)


def test_key_sizes_are_bounded():
    with pytest.raises(InvalidArgument, match="too many sessions: 10,001 given, at most 10,000"):
        request.session_keys(["1"] * 10_001)
    assert request.session_keys(["1"] * 10_000) == ("1",)
    with pytest.raises(InvalidArgument, match=r"session id too long \(100,000 characters"):
        request.session_keys(["9" * 100_000])
    with pytest.raises(InvalidArgument, match="too many sessions"):
        request.session_keys(",".join(["1"] * 100_000))
    for bad in ([], ["", "1"], [" "]):
        with pytest.raises(InvalidArgument):
            request.session_keys(bad)
    for bad in ([True], [1.5], [None], [["1"]], {"1": 1}, 7):
        with pytest.raises(InvalidArgument):
            request.session_keys(bad)


def test_formats():
    assert request.format_names(["txt", "pdf", "txt", " pdf "]) == ("txt", "pdf")
    assert request.format_names("txt,audio") == ("txt", "audio")
    assert request.format_names([]) == () and request.format_names(None) == ()
    with pytest.raises(NotFoundError, match="unknown format 'nope'; valid: " + ", ".join(FORMATS)):
        request.format_names(["txt", "nope"])
    with pytest.raises(InvalidArgument, match="too many formats: 100,000 given, at most 100"):
        request.format_names(["txt"] * 100_000)
    with pytest.raises(InvalidArgument):
        request.format_names([1])


def test_templates_builtin_and_user(tmp_path):
    assert request.template_name("summary", None) == "summary"
    (tmp_path / "templates.toml").write_text('[board]\nsections = ["header", "summary"]\n')
    (tmp_path / "txt.j2").write_text("a format template, not a document template")
    assert "board" in request.template_names(str(tmp_path))
    assert request.template_name("board", str(tmp_path)) == "board"
    with pytest.raises(NotFoundError, match="unknown template 'txt'"):
        request.template_name("txt", str(tmp_path))
    with pytest.raises(NotFoundError, match="unknown template 'board'"):
        request.template_name("board", None)
    with pytest.raises(InvalidArgument, match="too long"):
        request.template_name("x" * 1000, None)


def test_options_strict_types():
    assert request.export_options({}) == ExportOptions()
    assert request.export_options(None) == ExportOptions()
    opts = request.export_options({"include_audio": False, "priority": 5, "template": "summary",
                                   "naming": "id", "pattern": "{date} {title}", "since_days": 7})
    assert (opts.include_audio, opts.priority, opts.naming, opts.since_days) == (False, 5, "id", 7)
    bad = {"include_audio": "yes", "merge": 1, "priority": "5", "since_days": 0, "naming": "nope",
           "sessions": "some", "verify": "false", "template": 3, "pattern": "{nope}", "target_name": "x" * 300}
    for key, value in bad.items():
        with pytest.raises(InvalidArgument, match=f"option '{key}'"):
            request.export_options({key: value})
    with pytest.raises(InvalidArgument, match="unknown option: 'bogus'; valid: template, merge"):
        request.export_options({"bogus": True})
    with pytest.raises(InvalidArgument, match="too many options"):
        request.export_options({f"k{i}": 1 for i in range(1000)})
    # an ExportOptions built in-process gets the same checks
    with pytest.raises(InvalidArgument, match="option 'merge' must be true or false, not the text 'yes'"):
        request.export_options(ExportOptions(merge="yes"))  # type: ignore[arg-type]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ExportOptions)])
def test_every_option_has_a_type_rule(field):
    """A new ExportOptions field cannot slip through unchecked: a list is wrong for each of them."""
    with pytest.raises(InvalidArgument, match=f"option '{field}' must be"):
        request.export_options({field: ["a list"]})


def test_session_query(listing):
    q = request.session_query({"exportable_only": True, "query": "MEETING", "offset": 1, "limit": 2})
    assert [s.id for s in q.apply(listing.sessions)] == [2, 4]
    since = (NOW - dt.timedelta(days=30)).date().isoformat()
    assert [s.id for s in request.session_query({"since": since}).apply(listing.sessions)] == [1, 3, 4, 5, 6]
    for bad, message in [({"limit": "ten"}, "filter 'limit' must be a whole number, not the text 'ten'"),
                         ({"offset": -1}, "filter 'offset' must be a whole number from 0 to 1,000,000"),
                         ({"limit": 10**30}, "not a number too large"),
                         ({"exportable_only": "yes"}, "filter 'exportable_only' must be true or false"),
                         ({"query": "x" * 201}, "filter 'query' is too long"),
                         ({"since": "yesterday"}, "filter 'since': not an ISO date/time"),
                         ({"nope": 1}, "unknown filter key: 'nope'")]:
        with pytest.raises(InvalidArgument) as e:
            request.session_query(bad)
        assert message in str(e.value)
