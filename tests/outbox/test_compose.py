"""MIME messages: exact sizes, attachments that decode to their bytes, headers only the email package writes."""
from __future__ import annotations

import email
import email.policy
import hashlib
import os

import pytest

from steno_exportd.outbox.compose import Attachment, Draft, fit, size_of, write
from steno_exportd.recordings import reference


def draft(attachments=(), subject="Meeting: Weekly sync", sender="steno@recorder.example",
          recipients=("Alice <alice@example.org>",)) -> Draft:
    return Draft(sender, tuple(recipients), subject, "Hello\n.leading dot\n", "<p>Hello</p>", tuple(attachments))


def parse(path):
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def test_sizes_are_exact_and_attachments_decode_to_their_bytes(tmp_path):
    atts = []
    for n in list(range(0, 120)) + [57 * 16 * 1024 - 1, 57 * 16 * 1024, 57 * 16 * 1024 * 2 + 5]:
        data = os.urandom(n)
        if n % 2:
            p = tmp_path / f"in{n}.bin"
            p.write_bytes(data)
            atts.append(Attachment(f"f{n}.bin", "application/octet-stream", reference(p, tmp_path), size=n))
        else:
            atts.append(Attachment(f"f{n}.bin", "application/octet-stream", data, size=n))
    d = draft(atts)
    out = tmp_path / "m.eml"
    size = write(d, out, 'recorder.example')
    assert size == out.stat().st_size == size_of(d, 'recorder.example')
    msg = parse(out)
    got = {p.get_filename(): p.get_payload(decode=True) for p in msg.iter_attachments()}
    for a in atts:
        want = a.body if isinstance(a.body, bytes) else a.body.path.read_bytes()
        assert hashlib.sha256(got[a.name]).digest() == hashlib.sha256(want).digest(), a.name
    raw = out.read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")          # CRLF only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert not list(tmp_path.glob(".*.tmp"))


def test_header_values_never_carry_a_line_break(tmp_path):
    d = draft([Attachment("a\r\nContent-Type: text/html\r\n\r\n<script>.txt", "text/plain", b"x", size=1)],
              subject="Board\r\nBcc: mallory@evil.example")
    write(d, tmp_path / "m.eml", "recorder.example")
    msg = parse(tmp_path / "m.eml")
    assert msg["Bcc"] is None and msg["Subject"].strip() == "Board Bcc: mallory@evil.example"
    [part] = list(msg.iter_attachments())
    assert part.get_filename() == "a Content-Type: text/html <script>.txt"
    assert part.get_content_type() == "text/plain"
    # below the sanitising, the stdlib's SMTP policy refuses CR/LF in any header value it is given
    with pytest.raises(ValueError):
        write(draft(sender="steno@recorder.example\r\nBcc: mallory@evil.example"), tmp_path / "x.eml", "recorder.example")
    assert not (tmp_path / "x.eml").exists()


def test_non_ascii_names_and_subjects_are_encoded(tmp_path):
    d = draft([Attachment("Protokoll Müller – März.txt", "text/plain", "ä".encode(), size=2)],
              subject="Besprechung: Größe & Budget ✓", recipients=("Jürgen Groß <j@example.org>",))
    write(d, tmp_path / "m.eml", "recorder.example")
    raw = (tmp_path / "m.eml").read_bytes()
    assert raw.isascii()
    msg = parse(tmp_path / "m.eml")
    assert msg["Subject"] == "Besprechung: Größe & Budget ✓"
    assert msg["To"].addresses[0].display_name == "Jürgen Groß"
    assert [p.get_filename() for p in msg.iter_attachments()] == ["Protokoll Müller – März.txt"]


def test_fit_leaves_out_recordings_first_then_the_largest():
    rec = Attachment("audio.flac", "audio/flac", bytes(3000), size=3000, recording=True)
    big = Attachment("report.pdf", "application/pdf", bytes(2000), size=2000)
    small = Attachment("t.txt", "text/plain", bytes(100), size=100)
    assert fit([rec, big, small], 10_000) == ([rec, big, small], [])
    assert fit([rec, big, small], 3000) == ([big, small], [rec])
    assert fit([rec, big, small], 1000) == ([small], [rec, big])
    assert fit([rec, big, small], 10) == ([], [rec, big, small])


def test_a_recording_whose_folder_is_swapped_for_a_symlink_after_its_check_is_not_attached(tmp_path):
    """THREATS.md: whoever writes the recorder's data folder may swap a folder for a symlink at any moment. A mail
    was composed from the session the library checked; its recording's folder is then swapped for a symlink to a
    folder of the daemon's own holding a file of the same name. The message must not carry that file."""
    from steno_exportd.engine.plan import render_options
    from steno_exportd.outbox import content
    from steno_exportd.recordings import SourceError
    from tests.configs import make_config
    from tests.fakes import FakeLibrary, make_session
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    rec = data / "audio" / "s1.wav"
    rec.write_bytes(os.urandom(64 * 1024))
    secret_dir = tmp_path / "state"
    secret_dir.mkdir()
    (secret_dir / "s1.wav").write_bytes((b"SECRET-OF-THE-DAEMON " * 4000)[:64 * 1024])     # the very same size
    lib = FakeLibrary([make_session(1, rec)], data_dir=data)
    cfg = make_config(tmp_path)
    d, _ = content.sessions_draft([lib.get_session(1)], ["audio"], render_options(cfg, None), "steno@r.example",
                                  ["alice@example.org"], 10 << 20, data_dir=lib.data_dir)
    os.rename(data / "audio", data / "audio.real")           # the swap, at the worst moment: after the check
    os.symlink(secret_dir, data / "audio")
    out = tmp_path / "m.eml"
    with pytest.raises((OSError, SourceError)) as e:
        write(d, out, "r.example")
        raise AssertionError("the message was written: " + ("with the daemon's file attached" if b"U0VDUkVU" in
                             out.read_bytes() or b"SECRET" in parse(out).as_bytes() else "without it"))
    assert "symlink" in str(e.value) or "changed" in str(e.value), e.value
    assert not out.exists() and not list(tmp_path.glob(".m.eml*")), "a part of the message was left behind"


def test_a_mail_whose_browser_login_ended_before_its_links_were_made_goes_without_links_saying_why(tmp_path):
    """A browser asked for a mail of a meeting too large to attach (email.oversize = "link") and its user logged out
    before the outbox composed it: the access store refuses the link (a link of a login that ended would outlive
    it). The mail still goes, without a link, saying why; it does not fail whole."""
    from steno_exportd.engine.plan import render_options
    from steno_exportd.errors import NotAllowedError
    from steno_exportd.outbox import content
    from tests.configs import make_config
    from tests.fakes import library

    def ended(session_id: int, uuid: str) -> str:
        raise NotAllowedError("the login that asked for this link has ended (logout, a new password or revoked): "
                              "log in again")
    lib = library(tmp_path, 1, audio_size=300_000)
    links = content.Links(lambda token: f"http://steno.local:8080/s/{token}", 24.0, 3, ended)
    d, left = content.sessions_draft([lib.get_session(1)], ["txt", "audio"], render_options(make_config(tmp_path), None),
                                     "steno@r.example", ["alice@example.org"], 200_000, links,
                                     data_dir=lib.data_dir)
    out = tmp_path / "m.eml"
    write(d, out, "r.example")
    text = parse(out).get_body(("plain",)).get_content()
    assert left == ("audio.wav",) and "audio.wav" in text
    assert "/s/" not in text and content.ENDED_LOGIN in text, text
    assert [a.get_filename() for a in parse(out).iter_attachments()] == ["transcript.txt"]


@pytest.mark.parametrize("kind", ["notice", "sessions"])
def test_a_mail_from_a_host_whose_name_is_not_utf8_is_written_and_names_it(tmp_path, monkeypatch, kind):
    """A message says which recorder sent it ("Sent by the Silent Steno recorder <host>"); the kernel takes any bytes
    as a host name, and one not UTF-8 (Python's surrogate escapes) made every message unwritable: a notice or a mail
    of meetings failed as "cannot be composed: UnicodeEncodeError". Now it names the host as text
    (identity.host_name())."""
    import socket
    import time
    from steno_exportd.engine.plan import render_options
    from steno_exportd.outbox import content
    from tests.configs import make_config
    from tests.fakes import library
    monkeypatch.setattr(socket, "gethostname", lambda: "desk\udcff42")
    if kind == "notice":
        d = content.notices_draft([content.Notice("export_failed", "Export failed", ("a line",), time.time())],
                                  "steno@r.example", ["alice@example.org"])
    else:
        lib = library(tmp_path, 1)
        d, _ = content.sessions_draft([lib.get_session(1)], ["txt"], render_options(make_config(tmp_path), None),
                                      "steno@r.example", ["alice@example.org"], 10 << 20, data_dir=lib.data_dir)
    out = tmp_path / "m.eml"
    write(d, out, "r.example")
    msg = parse(out)
    assert "recorder desk\ufffd42" in msg.get_body(("plain",)).get_content()
    assert "recorder desk\ufffd42" in msg.get_body(("html",)).get_content()
