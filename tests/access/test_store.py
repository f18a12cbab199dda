"""The access store: share-link uses and PIN guesses raced from many threads, logins that end, a bounded table,
the move from web.db."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from steno_exportd.access.store import MAX_LOGINS, MAX_PIN_GRANTS, AccessStore
from steno_exportd.errors import NotAllowedError, NotFoundError


@pytest.fixture
def store(tmp_path):
    s = AccessStore(tmp_path / "access.db")
    s.open()
    yield s
    s.close()


def race(fn, n: int) -> int:
    ok, barrier = [], threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        if fn():
            ok.append(1)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ok)


def test_a_link_gives_out_exactly_its_uses_to_concurrent_downloads(store):
    link = store.create_link(1, 1.0, 3)
    assert race(lambda: store.reserve_use(link.token), 50) == 3
    assert store.link(link.token).state == "used up"
    store.release_use(link.token)                       # one failed before its first byte
    assert race(lambda: store.reserve_use(link.token), 50) == 1
    store.revoke(link.token)
    store.release_use(link.token)
    assert not store.reserve_use(link.token)            # revoked: nothing more


def test_a_link_locks_itself_after_its_wrong_pins(store):
    link = store.create_link(1, 1.0, 5, pin_hash="scrypt$x", max_wrong_pins=8)
    assert race(lambda: store.reserve_pin_guess(link.token), 40) == 8
    assert store.link(link.token).state == "locked (wrong PINs)" and not store.reserve_use(link.token)
    other = store.create_link(1, 1.0, 5, pin_hash="scrypt$x", max_wrong_pins=2)
    assert store.reserve_pin_guess(other.token)
    store.pin_was_right(other.token)                    # a right PIN is not a wrong one
    assert store.reserve_pin_guess(other.token) and store.reserve_pin_guess(other.token)
    assert not store.reserve_pin_guess(other.token)


def test_logins_end_one_by_one_everywhere_and_with_their_password(store):
    a, token_a = store.create_login("password", "tag1", 3600, "10.0.0.1", "Firefox")
    b, token_b = store.create_login("password", "tag1", 3600, "10.0.0.2", "Chromium")
    share, token_s = store.create_login("share", "pin", 3600, scope="tok")
    assert store.login_for(token_a, "tag1").id == a.id
    assert store.login_for(token_s, "pin") is None and store.login_for(token_s, "pin", "tok").id == share.id
    assert {x.id for x in store.logins("password")} == {a.id, b.id}
    assert "token" not in str(store.logins()) and token_a not in str(store.logins())   # the secret is not kept
    store.revoke_login(a.id)
    assert store.login_for(token_a, "tag1") is None and store.login_for(token_b, "tag1") is not None
    with pytest.raises(NotFoundError):
        store.revoke_login(a.id)
    assert store.login_for(token_b, "tag2") is None                            # the password changed
    assert store.login_for(token_b, "tag1") is None                            # ... and it stays ended
    c, token_c = store.create_login("password", "tag2", 3600)
    assert store.end_logins("password") == 1 and store.login_for(token_c, "tag2") is None
    assert store.login_for(token_s, "pin", "tok") is not None                  # share grants are not logins
    short, token_short = store.create_login("password", "tag2", 0.05)
    time.sleep(0.1)
    assert store.login_for(token_short, "tag2") is None


def test_the_logins_table_is_bounded(store):
    for i in range(MAX_LOGINS + 50):
        store.create_login("password", "t", 3600, f"10.0.{i // 256}.{i % 256}")
    assert len(store.logins()) == MAX_LOGINS


def test_pin_grants_crowd_out_neither_browsers_nor_another_links_guests(store):
    """A link's right PIN entered again and again: the oldest PIN grants of that link go, nothing else."""
    browser = store.create_login("password", "t", 3600)[1]
    other_guest = store.create_login("share", "pin", 3600, scope="other")[1]
    for _ in range(MAX_LOGINS + 10):
        store.create_login("share", "pin", 3600, scope="flooded")
    assert store.login_for(browser, "t") is not None
    assert store.login_for(other_guest, "pin", "other") is not None
    kept = [x for x in store.logins("share") if x.scope == "flooded"]
    assert len(kept) == MAX_PIN_GRANTS
    for _ in range(MAX_LOGINS + 10):                    # and browsers' logins end no PIN grant
        store.create_login("password", "t", 3600)
    assert store.login_for(other_guest, "pin", "other") is not None
    assert len(store.logins("password")) == MAX_LOGINS


def test_links_and_audit_move_over_from_the_old_web_db(tmp_path):
    old = sqlite3.connect(tmp_path / "web.db")
    old.executescript("""
        CREATE TABLE share_links (token TEXT PRIMARY KEY, session_id INTEGER NOT NULL, created REAL NOT NULL,
            expires REAL NOT NULL, max_downloads INTEGER NOT NULL, downloads INTEGER NOT NULL DEFAULT 0,
            pin_hash TEXT NOT NULL DEFAULT '', revoked REAL NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '');
        CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL, at REAL NOT NULL,
            addr TEXT NOT NULL, what TEXT NOT NULL, via TEXT NOT NULL);""")
    old.execute("INSERT INTO share_links (token, session_id, created, expires, max_downloads, downloads) "
                "VALUES ('abc', 7, 1, ?, 5, 2)", (time.time() + 3600,))
    old.execute("INSERT INTO audit (session_id, at, addr, what, via) VALUES (7, 1, '10.0.0.9', 'zip', 'page')")
    old.commit()
    old.close()
    s = AccessStore(tmp_path / "access.db")
    s.open()
    try:
        link = s.link("abc")
        assert (link.session_id, link.downloads, link.state) == (7, 2, "active")
        assert s.audit_log(7) == [{"at": 1.0, "addr": "10.0.0.9", "what": "zip", "via": "page"}]
    finally:
        s.close()


def test_an_older_store_loads_and_its_links_of_unknown_maker_go_with_browser_links(tmp_path):
    """A store from before links kept their maker: it opens, its link works and says its maker is unknown; it is
    revoked with the links browsers made (it may have been one), never by a single browser's revocation."""
    path = tmp_path / "access.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE share_links (token TEXT PRIMARY KEY, session_id INTEGER NOT NULL, created REAL NOT NULL,
            expires REAL NOT NULL, max_downloads INTEGER NOT NULL, downloads INTEGER NOT NULL DEFAULT 0,
            pin_hash TEXT NOT NULL DEFAULT '', revoked REAL NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '',
            wrong_pins INTEGER NOT NULL DEFAULT 0, max_wrong_pins INTEGER NOT NULL DEFAULT 0);""")
    old.execute("INSERT INTO share_links (token, session_id, created, expires, max_downloads) "
                "VALUES ('old', 7, 1, ?, 5)", (time.time() + 3600,))
    old.commit()
    old.close()
    s = AccessStore(path)
    s.open()
    try:
        link = s.link("old")
        assert (link.state, link.made_by, link.made_by_login) == ("active", "", "")
        assert "unknown" in link.public()["made_by_text"]
        assert s.reserve_use("old")
        made_here = s.create_link(7, 1.0, 5)                                    # the touchscreen's
        assert (made_here.made_by, s.revoke_made_by(login_id="some-browser")) == ("device", 0)
        assert s.revoke_made_by(("password",)) == 0 and s.link("old").state == "active"
        assert s.revoke_made_by(("password", "pairing", "")) == 1
        assert s.link("old").state == "revoked" and s.link(made_here.token).state == "active"
    finally:
        s.close()


def test_a_link_asked_for_while_its_login_ends_is_refused_or_revoked(store):
    """A copied cookie makes links as fast as it can while the owner logs out everywhere: afterwards no link it
    made is usable, whichever came first (each was refused, or made and then revoked)."""
    login, _ = store.create_login("password", "tag", 3600)
    other, _ = store.create_login("pairing", "pairing", 3600)
    made, refused, tries, start, done = [], [], [], threading.Barrier(9), threading.Event()

    def thief() -> None:
        start.wait()
        for _ in range(20000):                  # until a few tries after the owner is done
            tries.append(1)
            try:
                made.append(store.create_link(1, 1.0, 1000, made_by="password", login_id=login.id).token)
            except NotAllowedError:
                refused.append(1)
                if done.is_set() and len(refused) > 20:
                    return

    def owner() -> None:
        start.wait()
        time.sleep(0.02)
        store.end_logins("password")
        store.end_logins("pairing")
        store.revoke_made_by(("password", "pairing", ""))
        done.set()
    threads = [threading.Thread(target=thief) for _ in range(8)] + [threading.Thread(target=owner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made and refused, (len(made), len(refused))                          # the race did happen
    assert [t for t in made if store.reserve_use(t)] == []
    assert {store.link(t).state for t in made} == {"revoked"}
    assert len(made) + len(refused) == len(tries)
    with pytest.raises(NotAllowedError):                                        # a login that never was
        store.create_link(1, 1.0, 1, made_by="pairing", login_id=other.id + "x")
