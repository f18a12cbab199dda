"""CreateShareLink over D-Bus: the real daemon on a private bus serving its web page; the link it makes has the
full URL the touchscreen shows as a QR code, and a guest downloads through it over HTTP."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import urllib.error
import urllib.request

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from steno_exportd.dbus import BUS_NAME, MANAGER_IFACE, ROOT_PATH
from tests.parts.daemon import make_library, require_core, write_config
from tests.web.helpers import free_port

INVALID = "org.silentsteno.Export1.Error.InvalidArgs"
NOT_FOUND = "org.silentsteno.Export1.Error.NotFound"


@pytest.fixture
def sharing(tmp_path, private_bus, daemon_factory):
    require_core()
    make_library(tmp_path, sessions=3)
    (tmp_path / "exports").mkdir()
    port = free_port()
    d = daemon_factory(write_config(tmp_path / "config.toml", tmp_path, private_bus, **{
        "http.enabled": "true", "http.bind": '["127.0.0.1"]', "http.port": str(port), "http.auth.mode": '"none"'}))
    d.wait_ready(timeout=30)
    return private_bus, port


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


async def create(bus, key: str, **options):
    return await bus.call(Message(destination=BUS_NAME, path=ROOT_PATH, interface=MANAGER_IFACE,
                                  member="CreateShareLink", signature="sa{sv}", body=[key, options]))


async def test_create_share_link_returns_the_full_url_a_guest_opens(sharing, tmp_path):
    address, port = sharing
    bus = await MessageBus(bus_address=address).connect()
    try:
        r = await create(bus, "1", hours=Variant("d", 2.0), max_downloads=Variant("u", 2))
        assert r.message_type == MessageType.METHOD_RETURN, r.body
        link = {k: v.value for k, v in r.body[0].items()}
        assert link["url"] == f"http://{socket.gethostname().lower()}.local:{port}/s/{link['token']}"
        assert (link["session_id"], link["max_downloads"], link["pin"]) == (1, 2, False)
        # made for the meeting numbered 1 now, by its uuid: it opens that meeting only, whatever takes the number
        with contextlib.closing(sqlite3.connect(f"file:{tmp_path}/state/access.db?mode=ro", uri=True)) as db:
            [(made_for,)] = db.execute("SELECT session_uuid FROM share_links WHERE token = ?", (link["token"],))
        with contextlib.closing(sqlite3.connect(f"file:{tmp_path}/library/silent_steno.db?mode=ro", uri=True)) as db:
            [(uuid,)] = db.execute("SELECT uuid FROM sessions WHERE id = 1")
        assert made_for == uuid, (made_for, uuid)
        # the same link, reached at the address this test can use: the share page, then its downloads
        page = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/s/{link['token']}")
        assert "This link allows 2 more downloads" in page
        for key, options, error in (("1", {"hours": Variant("d", 0.0)}, INVALID),
                                    ("1", {"max_downloads": Variant("u", 5000)}, INVALID),
                                    ("1", {"pin": Variant("s", "12")}, INVALID),
                                    ("1", {"colour": Variant("s", "red")}, INVALID),
                                    ("1", {"pin": Variant("u", 1234567)}, INVALID),
                                    ("99999", {}, NOT_FOUND)):
            r = await create(bus, key, **options)
            assert r.message_type == MessageType.ERROR and r.error_name == error, (options, r.error_name, r.body)
        r = await create(bus, "1", pin=Variant("s", "493817"))
        assert r.message_type == MessageType.METHOD_RETURN and r.body[0]["pin"].value is True
        with pytest.raises(urllib.error.HTTPError) as e:         # a guest without the PIN gets no file
            await asyncio.to_thread(get, f"http://127.0.0.1:{port}/s/{r.body[0]['token'].value}/zip")
        assert e.value.code == 403
    finally:
        bus.disconnect()
