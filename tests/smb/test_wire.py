"""smbwire's receive loop goes into smbprotocol's transport class only on the smbprotocol it was written for: on
another, smbprotocol's own loop stays and one warning line says what that costs."""
from __future__ import annotations

import importlib.metadata
import logging

import pytest
from smbprotocol import transport

from steno_exportd.smb import wire


def _own(self, length, timeout):
    """Stands for smbprotocol's own receive loop."""
    raise AssertionError("not called")


class _Tcp(transport.Tcp):
    _recv = _own


class _Stripped(transport.Tcp):
    """A Tcp whose instances lack a lock our loop takes (a smbprotocol that renamed it)."""
    _recv = _own

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self._close_lock


def _installed_twice(monkeypatch, caplog, tcp: type) -> list[str]:
    """install() as two pushes call it, smbprotocol's class being ``tcp``; the warnings it logged."""
    monkeypatch.setattr(transport, "Tcp", tcp)
    with caplog.at_level(logging.WARNING, logger=wire.__name__):
        wire.install()
        wire.install()
    return [r.getMessage() for r in caplog.records if r.name == wire.__name__]


@pytest.mark.parametrize("version", ["1.18.0", "2.0.1", "1.1.7"])
def test_an_smbprotocol_it_was_not_written_for_keeps_its_own_receive_loop_and_says_so_once(monkeypatch, caplog,
                                                                                           version):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == "smbprotocol" else real(name))
    tcp = type("Tcp", (_Tcp,), {})
    warned = _installed_twice(monkeypatch, caplog, tcp)
    assert tcp._recv is _own
    assert len(warned) == 1, warned
    assert f"smbprotocol {version} is installed" in warned[0]
    assert "select(), which fails on a socket numbered 1024 or more" in warned[0]


def test_a_transport_without_what_the_loop_uses_keeps_its_own_receive_loop_and_says_so_once(monkeypatch, caplog):
    tcp = type("Tcp", (_Stripped,), {})
    warned = _installed_twice(monkeypatch, caplog, tcp)
    assert tcp._recv is _own
    assert len(warned) == 1, warned
    assert "its Tcp has no _close_lock" in warned[0] and "select()" in warned[0]


def test_the_smbprotocol_it_was_written_for_gets_its_receive_loop_without_a_warning(monkeypatch, caplog):
    assert importlib.metadata.version("smbprotocol").startswith(wire._WRITTEN_FOR)
    tcp = type("Tcp", (_Tcp,), {})
    assert _installed_twice(monkeypatch, caplog, tcp) == []
    assert tcp._recv is wire._recv


def _thread_error(e: Exception) -> None:
    """smbprotocol's receive thread saying its end (log.exception, as in Connection._process_message_thread)."""
    from steno_exportd.smb import client  # noqa: F401 - its filter on smbprotocol's log
    try:
        raise e
    except Exception:  # noqa: BLE001 - logged as smbprotocol does
        logging.getLogger("smbprotocol.connection").exception("Exception in message thread")


def test_the_receive_threads_end_is_one_warning_line_its_traceback_at_debug(caplog):
    with caplog.at_level(logging.DEBUG):
        _thread_error(ConnectionResetError("reset by \x1b[2Jpeer"))
    said = [r for r in caplog.records if r.name == "smbprotocol.connection"]
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in said] == [
        (logging.WARNING, "Exception in message thread: ConnectionResetError: reset by \\x1b[2Jpeer", None)]
    traced = [r for r in caplog.records if r.exc_info]
    assert [(r.name, r.levelno, type(r.exc_info[1])) for r in traced] == [
        ("steno_exportd.smb.client", logging.DEBUG, ConnectionResetError)]


def test_an_error_whose_words_cannot_be_read_never_raises_in_the_receive_thread(caplog):
    """An exception whose str() fails: the filter raised inside smbprotocol's receive thread, which then ended
    without a word (and without closing: the requests sent on waited for ever). Now the record goes as it came."""
    class Unsayable(Exception):
        def __str__(self) -> str:
            raise ValueError("no words")
    with caplog.at_level(logging.INFO):
        _thread_error(Unsayable())                    # (raised here before)
    assert [r.getMessage() for r in caplog.records if r.name == "smbprotocol.connection"] == [
        "Exception in message thread"]
