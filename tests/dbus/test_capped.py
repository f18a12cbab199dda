"""The bus socket as dbus-fast's decoder reads it (dbus/capped.py): messages over the limit never reach the decoder
whole. dbus-fast's own marshaller and decoder, over a real socket pair, the stream cut into the pieces the kernel
hands over."""
from __future__ import annotations

import asyncio
import select
import socket
import threading

from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.unmarshaller import Unmarshaller
from dbus_fast.aio.message_reader import build_message_reader

from steno_exportd.dbus.capped import MAX_CALL, SMALL, CappedSocket


def _through(msgs: list[Message]) -> tuple[list[Message], CappedSocket]:
    """``msgs`` sent on one end of a socket pair, read through CappedSocket on the other until the end."""
    a, b = socket.socketpair()
    b.setblocking(False)
    data = b"".join(m._marshall(False) for m in msgs)
    sender = threading.Thread(target=lambda: (a.sendall(data), a.close()))
    sender.start()
    stream = CappedSocket(b)
    reader = Unmarshaller(None, stream, False)
    got: list[Message] = []
    try:
        while True:
            select.select([b], [], [], 5)
            try:
                while (m := reader.unmarshall()) is not None:
                    got.append(m)
            except EOFError:
                return got, stream
    finally:
        sender.join(10)
        b.close()


def _call(member: str, sig: str, body: list, serial: int) -> Message:
    return Message(destination="org.silentsteno.Export1", path="/", interface="org.silentsteno.Export1.Manager",
                   member=member, signature=sig, body=body, serial=serial)


def test_a_call_over_the_limit_reaches_the_decoder_as_its_header_alone_and_what_follows_whole():
    big = {"hours": Variant("ai", list(range(MAX_CALL // 4 + 10)))}
    msgs = [_call("ListSessions", "a{sv}", [{"limit": Variant("u", 1)}], 1),
            _call("CreateShareLink", "sa{sv}", ["1", big], 2),
            Message(message_type=MessageType.SIGNAL, path="/", interface="org.x.I", member="Flood", signature="ay",
                    body=[b"x" * (MAX_CALL + 1)], serial=3),
            Message(message_type=MessageType.METHOD_RETURN, reply_serial=9, destination=":1.1", signature="ay",
                    body=[b"y" * (MAX_CALL + 1)], serial=4),
            _call("GetSession", "s", ["42"], 5)]
    got, stream = _through(msgs)
    assert [(m.message_type, m.member, m.serial) for m in got] == [
        (MessageType.METHOD_CALL, "ListSessions", 1), (MessageType.METHOD_CALL, "CreateShareLink", 2),
        (MessageType.METHOD_RETURN, None, 4), (MessageType.METHOD_CALL, "GetSession", 5)]   # the signal: dropped
    assert got[0].body == [{"limit": Variant("u", 1)}]
    cut = got[1]
    assert cut.signature == "" and cut.body == [] and cut.interface == "org.silentsteno.Export1.Manager"
    assert stream.cut == {("", 2): (len(msgs[1]._marshall(False)), MAX_CALL)}
    assert got[2].body == [b"y" * (MAX_CALL + 1)] and got[2].reply_serial == 9         # a reply to our own call
    assert got[3].body == ["42"]


def test_calls_at_the_limit_pass_whole():
    size = len(_call("CreateShareLink", "sa{sv}", ["1", {"h": Variant("ay", b"")}], 1)._marshall(False))
    fits = _call("CreateShareLink", "sa{sv}", ["1", {"h": Variant("ay", b"z" * (MAX_CALL - size))}], 1)
    assert len(fits._marshall(False)) == MAX_CALL
    got, stream = _through([fits, _call("GetSession", "s", ["7"], 2)])
    assert [m.serial for m in got] == [1, 2] and got[0].body[1]["h"].value == b"z" * (MAX_CALL - size)
    assert stream.cut == {}


def test_calls_anyone_may_send_and_signals_are_taken_whole_only_when_small():
    """The bus lets every local user call Introspectable and Peer on the service (none takes an argument), and a
    signal may come from anyone the bus lets send one: those are taken whole up to SMALL, a call of ours up to
    MAX_CALL."""
    pad = {"x": Variant("ay", b"p" * SMALL)}
    msgs = [Message(destination="org.silentsteno.Export1", path="/", interface="org.freedesktop.DBus.Introspectable",
                    member="Introspect", signature="a{sv}", body=[pad], serial=1),
            Message(message_type=MessageType.SIGNAL, path="/", interface="org.x.I", member="Big", signature="a{sv}",
                    body=[pad], serial=2),
            Message(destination="org.silentsteno.Export1", path="/", member="NoInterface", signature="a{sv}",
                    body=[pad], serial=3),
            _call("ListSessions", "a{sv}", [pad], 4)]
    got, stream = _through(msgs)
    assert [(m.member, m.signature) for m in got] == [("Introspect", ""), ("NoInterface", ""),
                                                      ("ListSessions", "a{sv}")]
    assert {k: v[1] for k, v in stream.cut.items()} == {("", 1): SMALL, ("", 3): SMALL}


async def test_a_message_ending_where_the_decoders_read_ends_does_not_hold_back_the_next():
    """dbus-fast's reader stops when its buffer ends at a message's end, and runs again only when the socket has
    more: a call of exactly 8,192 bytes (its read's size) followed by another in one write left the second kept
    here, never processed on a quiet bus. Through dbus-fast's own reader on the loop, as the service reads."""
    first = _call("ListSessions", "a{sv}", [{"x": Variant("ay", b"")}], 1)
    pad = 8192 - len(first._marshall(False))
    first = _call("ListSessions", "a{sv}", [{"x": Variant("ay", b"p" * pad)}], 1)
    while len(first._marshall(False)) != 8192:       # (the padding's own length field moves its alignment)
        pad -= len(first._marshall(False)) - 8192
        first = _call("ListSessions", "a{sv}", [{"x": Variant("ay", b"p" * pad)}], 1)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    loop = asyncio.get_running_loop()
    seen: list[int] = []
    done = asyncio.Event()

    def process(m: Message) -> None:
        seen.append(m.serial)
        if len(seen) == 2:
            done.set()
    loop.add_reader(b.fileno(), build_message_reader(CappedSocket(b), process, lambda e: done.set(), False))
    try:
        a.sendall(first._marshall(False) + _call("GetSession", "s", ["42"], 2)._marshall(False))
        try:
            await asyncio.wait_for(done.wait(), 5)
        except asyncio.TimeoutError:
            pass
        assert seen == [1, 2]
    finally:
        loop.remove_reader(b.fileno())
        a.close()
        b.close()
