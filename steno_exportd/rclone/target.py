"""A folder on an rclone remote as an export Target: the engine writes into it as into a folder.

Every operation is one request to the push's ``rclone rcd`` (process.Rcd). A recording is copied by
rclone from the file the engine opened (``operations/copyfile`` of ``/proc/<our pid>/fd/<a dup of its descriptor>``,
never its path, which whoever writes the data folder may point elsewhere meanwhile; one call that answers when the
copy has ended, its byte count pacing the engine's reads: no stream through this process, and no spool copy on stores that cannot take a stream of unknown
size, such as WebDAV); other files are streamed to rclone (``operations/uploadfile``, chunked; a small one is sent
whole, so that it can be sent again when the store answers 423 Locked, as any operation is). Either lands
under a temp name and is moved to its final name (``operations/movefile``) only when rclone has stored
all of it, so no partial file ever has a final name; a file the engine already writes under a temp name (a
session built in place) is uploaded under that name itself, not under a second one, and the engine renames it.
Every request is a few round trips to the store (a WebDAV move is four), so none is made twice (but one refused
as locked): a file committed by this push is not looked up again before its rename or removal, nor a free name
in a folder it made. Where the store
keeps a hash rclone can read (MD5 or SHA-1: SFTP, S3, OneDrive, Nextcloud...), the write hashes the
bytes it sends and the commit compares the store's hash of the landed file: verified without
downloading it. Elsewhere (a WebDAV server without hashes) the engine reads it back (rclone's
``--rc-serve``) and hashes it. On a WebDAV store (which moves a folder in one request: rclone's
DirMove) a session is built as ``<folder>.partial``, its files under their final names (the folder's
name says "incomplete"), and moved into place whole once the manifest save that records it landed (a
move that never merges into or replaces a folder there); elsewhere it is built in place with a marker
file (see _moves_folders).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import itertools
import logging
import os
import re
import stat as stat_mod
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Callable

from steno_exportd import sockwait
from steno_exportd.engine.identity import host_folder
from steno_exportd.engine.targets import (MARKER, PARTIAL_SUFFIX, TEMP_PREFIX, EntryStat, Target, TooManyEntries,
                                          WriteHandle, check_rel)
from steno_exportd.errors import CancelledJob, InvalidArgument, NameTaken, SourceError, TargetError
from steno_exportd.rclone.process import (LOCK_WAIT, Rcd, RcloneError, error_text, is_file, not_found,
                                         rclone_environment)
from steno_exportd.safeparse import printable

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024            # writes into the upload
SMALL = 1024 * 1024                # a file this small (a manifest, a transcript) is kept until its upload ends: sent in
                                   # one request, made again when the store answers 423 Locked (a stream cannot be)
HASHES = ("md5", "sha1")           # the store hashes a write checks, in this order of preference
NO_FREE_SPACE = 1 << 62            # a store that does not say how much is free: its quota error tells
AHEAD = 64 * 1024 * 1024           # copies rclone makes of local files: how far the engine's reads (its
                                   # progress) may run ahead of what rclone has sent, all copies in flight together,
                                   # at least; on a fast store AHEAD_TIME seconds of rclone's pace, up to AHEAD_MAX
PACED = 16 * 1024 * 1024           # a copy's pace is known once rclone has copied this much of it: what passes at
                                   # once after an idle moment (rclone's bandwidth limit lets 4 MiB through, its
                                   # token bucket's burst; the connection's buffers take a few MiB) then makes it
                                   # seem a third faster at most, not a slow uplink a fast one
AHEAD_TIME = 1.0                   # (a slow uplink's progress stays within a second of what was sent, or AHEAD; a
AHEAD_MAX = 256 * 1024 * 1024      # fast store's copies seldom wait: bench rclone, WebDAV on loopback, medians of 2
                                   # rounds, AHEAD alone -> this (two runs): the push with the recordings hashed
                                   # ahead 1.88 -> 1.65, 1.68 s, 0.82 -> 0.96, 0.91 of copy + check; hashed while
                                   # sent 1.81 -> 1.83, 1.86 s, no gain). rclone reads the file from the page cache
                                   # the engine's reads filled: what runs ahead costs no memory of this process
POLL = 0.01                        # seconds at least between looks at such a copy's progress (it is looked at
                                   # when it should have caught up, at the pace rclone goes)
PACE = 0.25                        # at most this long between looks at it while the engine's reads wait for it (at
                                   # a slow uplink's pace: ~4 looks a second, not 100; a cancel looked at as often)
POLL_END = 0.04                    # at most this long between looks at a cancel while awaiting a copy's end (its
                                   # answer wakes the wait), a stream's answer or room on its connection
LOOK = 1.0                         # waiting for a copy's end, a stream's answer (rclone uploading what it spooled) or
                                   # room to send on a stream: seconds between looks at rclone's byte count for the
                                   # upload, which tell a stall (each look is an rc call: ~1 ms of CPU on each side)
MOVE_OVERWRITES = (1, 63)           # the first rclone whose WebDAV MOVE says "Overwrite: T": rclone issue #6964,
                                    # fixed by PR #6972 (merged 2023-04-24, "released in v1.63"), for a file's
                                    # move and copy and for DirMove (rclone lists the folder's name itself first
                                    # there, one round trip before its MOVE; _move_dir looks the name up before it)
AHEAD_END = 0.5                    # seconds close() waits for reads begun ahead (read_ahead) to end before it ends
                                   # rclone (which ends a stalled one)
CHECKS = 4                         # files committed and read back at once, and as many sessions in flight: every
                                   # request to a store is a round trip (rclone paces WebDAV's too), every read-back
                                   # a stream of its own (rclone's own check runs 8)
FOLDERS_AT_ONCE = 16               # on a WebDAV store, session folders listed (a push finding what is there) or moved
                                   # into place (after a manifest save) at once: each a request through the folder's
                                   # own remote (see RcloneTarget._at), one round trip; 8 at once left a push that
                                   # found 200 sessions there waiting 25 round trips (0.96 s at 20 ms; 16: 0.67 s,
                                   # 32: 0.60 s). Within the idle connections rclone keeps (2 x (checkers + transfers
                                   # + 1) = 26): none opened anew for each
SESSIONS_AT_ONCE = 12              # on a WebDAV store, sessions in flight (their copies rclone's own, read back
                                   # CHECKS at once), beyond the first CHECKS of AHEAD bytes together: each
                                   # session's requests are a few round trips in a row (its folder, the PUT and
                                   # rclone's look-up after it, the read-back's look-up and GET), which go beside
                                   # those of the sessions before (bench rclone, 12 sessions at 20 ms: 4 in
                                   # flight -> this, ~0.1 s less of 1.15 s)
SAVE_EVERY = 10.0                  # seconds between manifest saves: each is two uploads and two moves (16 store
                                   # requests on WebDAV, ~0.2 s on loopback, a second or more on a distant store) and
                                   # the markers' removals; the sessions in between keep their folder's marker, so a
                                   # push cut before the next save sends at most this much work again


# a name rclone's WebDAV backend sends as it is, whatever its encoding setting (no character any encoder changes, no
# leading or trailing one that some do): a folder of such names may be named in the remote's URL itself (_in)
_PLAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?")

# core/version's "decomposed" version of each rclone program (Rcd.binary) this process asked (_move_refuses)
_VERSIONS: dict[tuple, Any] = {}
_UNASKED = object()


def split_remote(remote: str) -> tuple[str, str]:
    """An rclone remote string as (its remote, with the colon; the path on it): "nas:office/x" is ("nas:",
    "office/x"); a connection string's own colons stay in the first (":webdav,url=http://h:8080/dav:x" is
    (":webdav,url=http://h:8080/dav:", "x"))."""
    name, colon, path = remote.rpartition(":") if remote.startswith(":") else remote.partition(":")
    return name + colon, path


class RcloneTarget(Target):
    """``<remote.remote>`` (an rclone "NAME:path") through rclone rcd; the engine's Target protocol."""

    max_file_size: int | None = None
    hash_checked = False                # set by connect(): the store keeps a hash each commit checks
    paced = False                       # set by connect(): a WebDAV store, whose requests rclone paces per remote (_at)
    move_refuses = False                # set by connect() (_move_refuses): a file's MOVE on this store is refused
                                        # when a file is at its destination (rclone < 1.63 on WebDAV)
    atomic_dir_rename = False           # set by connect() (_moves_folders): a WebDAV store, which moves a folder in
                                        # one request, gets a session built as <folder>.partial and moved into place;
                                        # elsewhere built in place (object stores copy a folder to move it)
    resume_min: int | None = None       # a cut file is sent again whole (rclone's uploads do not resume)
    save_every = SAVE_EVERY
    checks = CHECKS
    listers = movers = 8                # folders listed (a push's look at the sessions there) and moved into place
                                        # at once: FOLDERS_AT_ONCE on a WebDAV store (set by connect())

    def __init__(self, rcd: Rcd, base: str, *, name: str = "", place: str = "",
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        self.rcd = rcd
        self.cancelled = cancelled        # the job was cancelled: a wait for rclone's copy stops it (CancelledJob)
        self.fs = base
        self.name = name or rcd.where
        self.place = place or base        # the store's folder, however a remote spells it: the recorder's own
                                          # record of the .partial folders it began there is kept by it
        self._host = host_folder()        # the host name as a safe name (the kernel takes any bytes, "/" too)
        self.tag = f"{self._host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.hash: str | None = None
        self._seq = itertools.count(1)
        self._files: set[str] = set()     # files this push committed (known to be files, not folders)
        self._mine: dict[str, set[str]] = {}   # folders only this push writes in (made by it, or claimed and
                                               # listed): the names in each, so an absent name costs no look-up
        self._claimed: set[str] = set()
        self._first_listing: dict[str, dict[str, EntryStat]] = {}  # a folder this push made and claimed, its entries
                                                                    # as this push put them there: scandir()'s first
        self.manifests: dict[str, bytes] = {}  # manifest.json of a folder as this push read or saved it (manifest.
                                               # known(): the office index, written last, does not read it again)
        self.manifests_saved: set[str] = set()  # the folders whose manifest.json this push saved (manifest.saved())
        self._dirs: set[str] = set()      # folders known to be there (a folder is not removed under a push)
        self._missing: set[str] = set()   # files a read of this push found not there, nothing landed there since
                                          # (the office index of a first push): a commit there is not looked up first
        self._top: set[str] | None = None  # every name in the remote's folder as connect() listed it: a folder
                                           # missing there (the recorder's, the office index's, on a first push)
                                           # is made without a look-up first (mkdir)
        self._made: set[str] = set()      # folders of the remote's folder that connect() found missing and this
                                          # push made (made(): nothing of anyone's in them but what came since)
        self._unmade: set[str] = set()    # <session>.partial folders of this push not made on the store yet: the
                                          # first upload into one makes it (rclone makes a file's folder first)
        self._names = threading.RLock()   # the five above: used by the export's main and verifier threads
        # what the push writes after its last folders are in place (the office index: kind.open), given the
        # recorder's folder and the names it will hold then; sent while they move (last_moves), its outcome here
        self.after_moves: Callable[[str, set[str]], Any] | None = None
        # reads and listings begun before they are asked for (read_ahead): ("read"|"list", path) -> (its Future, the
        # limit a read was made with); dropped when this push changes what they read (_landed)
        self._ahead: dict[tuple[str, str], tuple[concurrent.futures.Future, int]] = {}
        self._begun: list[concurrent.futures.Future] = []      # every one of those, asked for or not (close())
        self._after: concurrent.futures.Future | None = None
        self._space: concurrent.futures.Future | bool | None = None    # space_ahead()'s request (True: taken)
        self._lingering: list[int] = []   # descriptors of copies not known ended: closed once rclone has stopped
        self._url: str | None = None      # a WebDAV remote's URL of the remote's folder, set by connect() where the
                                          # moves within a folder may go through a remote rooted there (_in)

    def connect(self) -> None:
        """Start rclone, reach the store once (which hash it keeps); a clear error when it cannot."""
        self.rcd.start()
        try:
            info = self.rcd.call("operations/fsinfo", {"fs": self.fs}) or {}
        except RcloneError as e:
            if not is_file(e):
                raise
            path = split_remote(self.fs)[1]
            raise RcloneError(f"{self.name}: {path.strip('/') or '/'} on the store is a file, not a folder; the "
                              f"remote must name a folder", True) from None
        kept = [str(h).lower() for h in info.get("Hashes") or []]
        self.hash = next((h for h in HASHES if h in kept), None)
        self.hash_checked = self.hash is not None       # (the engine's hint: see engine/targets.py)
        self.atomic_dir_rename = self.paced = self._moves_folders(info)
        self.move_refuses = self.atomic_dir_rename and self._move_refuses()
        if self.paced:
            self.listers = self.movers = FOLDERS_AT_ONCE
            self.in_flight, self.in_flight_bytes = SESSIONS_AT_ONCE, AHEAD
        # the login; the folders there now (the recorder's, the office index): no look-up before using them; and
        # the names not there (files too), which mkdir() makes without looking them up first. The remote's folder
        # is made only when missing (a push writes nothing on the store when nothing is new)
        listing = split_remote(self.fs)[1].strip("/")
        try:
            r = self.rcd.call("operations/list", {"fs": self.fs, "remote": "",
                                                  "opt": {"noMimeType": True, "noModTime": True}},
                              missing_ok=True, listing=listing)
        except TooManyEntries:
            # a remote's folder shared with many files of other people (a "Scans" folder): its folders alone, as
            # before (files are not this push's business there; the two folders it makes are looked up first)
            r = self.rcd.call("operations/list", {"fs": self.fs, "remote": "", "opt": {"dirsOnly": True}},
                              missing_ok=True, listing=listing)
            self._top = None
        else:
            self._top = set()
        if r is None:
            self.rcd.call("operations/mkdir", {"fs": self.fs, "remote": ""})
            r = {}
        entries = [d for d in r.get("list") or [] if isinstance(d, dict) and d.get("Name")]
        self._dirs = {d["Name"] for d in entries if d.get("IsDir")}
        if self._top is not None:
            self._top = {d["Name"] for d in entries}

    def _moves_folders(self, info: dict) -> bool:
        """Build sessions as <folder>.partial and move them into place (fewer requests per session) on a WebDAV
        store: rclone moves a folder there in one MOVE (its DirMove), and opening a folder as a remote of its own
        (which rclone's folder move does, twice) costs nothing. Elsewhere in place: SFTP also has DirMove, but each
        folder opened that way is an SSH connection of its own (two per session, idle for a minute), and it does
        not pace its requests, so in place costs it little; object stores copy a folder to move it."""
        if not (info.get("Features") or {}).get("DirMove"):
            return False
        try:
            conf = self.rcd.call("config/get", {"name": self.fs.partition(":")[0]}) or {}
        except RcloneError:
            return False                    # (a remote given as a connection string: in place)
        if conf.get("type") != "webdav":
            return False
        self._url = self._folder_url(conf)
        return True

    def _folder_url(self, conf: dict) -> str | None:
        """The URL of the remote's folder on a WebDAV remote of the config (its ``url`` and the path the push's remote
        names), for _in(); None where rclone might name that folder otherwise than this URL does: a path of names
        not plain (an encoding setting may change them), a URL it may take from elsewhere (a remote's setting in
        the environment), one that is not a plain http(s) URL, or a remote with settings of its own in its name."""
        name, path = split_remote(self.fs)
        url = conf.get("url")
        parts = [p for p in path.split("/") if p]
        env = {f"RCLONE_CONFIG_{name[:-1]}_URL".upper(), f"RCLONE_CONFIG_{name[:-1]}_URL".upper().replace("-", "_")}
        if (not isinstance(url, str) or not re.fullmatch(r"https?://[^\s'\"?#\[\]]+", url) or not name.endswith(":")
                or not re.fullmatch(r"[\w.-]+", name[:-1]) or not all(_PLAIN.fullmatch(p) for p in parts)
                or any(k.upper() in env for k in rclone_environment(os.environ))):
            return None
        return url.rstrip("/") + "/" + "".join(f"{p}/" for p in parts)

    def _move_refuses(self) -> bool:
        """rclone's MOVE of a file on this WebDAV store is refused by the store when a file is at its destination: rclone
        before 1.63 sends "Overwrite: F" (later ones "Overwrite: T": the store replaces the file, so rename() looks
        the name up first there). An rclone whose version it does not say is taken for a later one. Asked once per
        rclone program (Rcd.binary) in this process, not at every push."""
        v = _VERSIONS.get(self.rcd.binary, _UNASKED) if self.rcd.binary is not None else _UNASKED
        if v is _UNASKED:
            try:
                v = (self.rcd.call("core/version", {}) or {}).get("decomposed")
            except RcloneError:
                return False
            if self.rcd.binary is not None:
                _VERSIONS[self.rcd.binary] = v
        if not (isinstance(v, list) and len(v) >= 2 and all(isinstance(n, int) for n in v[:2])):
            return False
        return tuple(v[:2]) < MOVE_OVERWRITES

    @staticmethod
    def rel(rel: str) -> str:
        return "/".join(check_rel(rel))

    def _at(self, rel: str, folder: bool = False) -> tuple[str, str]:
        """(fs, remote) of a request about ``rel`` (``folder``: a listing of it). rclone's WebDAV backend paces the
        requests of one remote (one starts at most every 10 ms, however many run at once and however near the store):
        every request of a push waited its turn behind all the others (the listings of 200 sessions' folders took 2 s
        on any store; each session's upload, read-back and move queued behind the others'). There (``paced``) a
        request about a path inside a folder goes through that folder opened as a remote of its own (_sub: its own
        pacer, nothing looked up to open it; rclone keeps it for the next request), a folder's listing through the
        folder itself; the requests of one folder still take their turns. The store sees no more requests at once
        than the engine's bounded threads make (its sessions in flight, SESSIONS_AT_ONCE, and their read-backs and
        rendered files, CHECKS each). Elsewhere through the push's remote."""
        r = self.rel(rel)
        if not self.paced:
            return self.fs, r
        if folder:
            return (self._sub(r), "") if r else (self.fs, r)
        head, _, base = r.rpartition("/")
        return (self._sub(head), base) if head else (self.fs, r)

    def _in(self, folder: str) -> str | None:
        """A remote rooted at ``folder``, a folder known there (connect() found or made it; not a <session>.partial
        the next upload makes), for the moves within it: its URL as the remote's ``url`` (``NAME,url='<url>':``).
        rclone's WebDAV backend makes the destination's folder before each move (a MKCOL, one round trip in a row:
        the claim's, SHA256SUMS', manifest.json's, the office index's, each session folder's into the recorder's),
        but not the root of a remote, which it takes as made. One remote of one name for both sides of a move
        (rclone moves on the store only within one). Not for uploads: there the MKCOL of their folder is what meets
        another client's lock on it (423 Locked) at once and is made again until it is let go, where a refused PUT
        costs a second (rclone waits that long after one). None where the URL is not known (not a WebDAV remote of
        the config: see _folder_url) or the folder's names are not plain."""
        r = self.rel(folder)
        if self._url is None or not r or not all(_PLAIN.fullmatch(p) for p in r.split("/")):
            return None
        with self._names:
            if r not in self._dirs or r in self._unmade:
                return None
        name = split_remote(self.fs)[0][:-1]
        return f"{name},url='{self._url}{''.join(f'{p}/' for p in r.split('/'))}':"

    @staticmethod
    def _entry(d: dict) -> EntryStat:
        return EntryStat("dir", 0) if d.get("IsDir") else EntryStat("file", int(d.get("Size") or 0))

    def _stat(self, rel: str, hashes: bool = False) -> dict | None:
        opt: dict[str, Any] = {"noMimeType": True}
        if hashes and self.hash:
            opt.update(showHash=True, hashTypes=[self.hash])
        try:
            fs, remote = self._at(rel)
            r = self.rcd.call("operations/stat", {"fs": fs, "remote": remote, "opt": opt}, missing_ok=True)
        except RcloneError as e:
            if "not found" in str(e):      # a missing parent folder
                return None
            raise
        return (r or {}).get("item")

    def _absent(self, rel: str) -> bool:
        """Known not to be there: a name missing from a folder only this push writes in."""
        head, _, base = self.rel(rel).rpartition("/")
        with self._names:
            names = self._mine.get(head)
            return names is not None and base not in names

    def _free(self, rel: str) -> bool:
        """A commit's destination need not be looked up first (rclone's look-up and, of a file there, its removal
        before the move: a round trip or two in a row): known absent (_absent), found missing by a read of this push
        with nothing landed there since (the office index on a first push, read ahead at its start), or in a folder
        this push made whose names it does not follow (made(): the office index's on the first push to the store),
        but one it committed there itself. Such a move never replaces a
        file that appeared meanwhile where rclone's MOVE refuses a file there (before rclone 1.63: the commit fails,
        and the next push replaces its own file as before); a later rclone's replaces it, as its look-up and removal
        before did."""
        head = self.rel(rel).rpartition("/")[0]
        with self._names:
            return self._absent(rel) or self.rel(rel) in self._missing or \
                (head in self._made and head not in self._mine and self.rel(rel) not in self._files)

    def _landed(self, rel: str, there: bool = True) -> None:
        """Keep the names of our own folders current: ``rel`` is there now (or gone)."""
        head, _, base = self.rel(rel).rpartition("/")
        gone = self.rel(rel)
        with self._names:
            self._first_listing.pop(head, None)     # (what this push put there is no longer all it holds)
            self._first_listing.pop(gone, None)
            for key in (("read", gone), ("list", head), ("list", gone)):
                dropped = self._ahead.pop(key, None)    # (what it read is not what is there now: asked for again)
                if dropped is not None:
                    dropped[0].cancel()         # (not begun yet: never; begun: its end awaited by close())
            names = self._mine.get(head)
            if names is not None:
                (names.add if there else names.discard)(base)
            self._missing.discard(gone)
            if not head and self._top is not None:
                (self._top.add if there else self._top.discard)(base)
            if there:
                self._unmade.discard(head)      # a file landed in it: the upload made the folder
            else:
                self._unmade.discard(gone)
            if not there and (gone in self._mine or gone in self._dirs):    # a folder we knew (a file: no walk)
                for d in [d for d in self._mine if d == gone or d.startswith(f"{gone}/")]:
                    del self._mine[d]
                self._dirs = {d for d in self._dirs if d != gone and not d.startswith(f"{gone}/")}

    def known_names(self, rel: str) -> set[str] | None:
        """The names in a folder only this push writes in, as it listed and changed them (no request); None when
        not known."""
        with self._names:
            names = self._mine.get(self.rel(rel))
            return None if names is None else set(names)

    def claimed(self, rel: str, made_with: dict[str, int] | None = None) -> None:
        """``rel`` is claimed by this recorder: no other push writes in it (its listing, once read, stays true).
        ``made_with``: the files (name: size) this push put in it, a folder it made (made(): missing when it began)
        and claimed just now; nothing else of anyone's is there then (another recorder given the same name at the
        same moment finds this claim and writes nothing; its claim's temp file is not this push's business), so the
        engine's first listing of it is answered without asking the store: a round trip less before a first push's
        first session."""
        r = self.rel(rel)
        with self._names:
            self._claimed.add(r)
            if made_with is not None and r in self._made:
                self._mine[r] = set(made_with)
                self._first_listing[r] = {name: EntryStat("file", size) for name, size in made_with.items()}

    def lstat(self, rel: str) -> EntryStat | None:
        if not check_rel(rel) or self.rel(rel) in self._unmade:
            return EntryStat("dir")
        if self._absent(rel):
            return None
        d = self._stat(rel)
        return self._entry(d) if d else None

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    def read_ahead(self, files: tuple[str, ...], limit: int, folders: tuple[str, ...] = ()) -> None:
        """Begin reading ``files`` (read_small() of ``limit`` bytes) and listing ``folders`` now, all at once, for
        the read_small() and scandir() that ask for them later: a push that finds nothing new reads its manifest,
        lists the recorder's folder and reads its office index, each one or two round trips in a row of a distant
        store (rclone's WebDAV: each through its folder's own remote, see _at), after reading its claim. Only
        those in (and folders) known there (connect(): none on a push into a new folder). Dropped when this push changes
        them first (_landed: its claim written into the folder, its index rewritten), asked for again then."""
        jobs: list[tuple[tuple[str, str], Callable[[], Any]]] = []
        with self._names:
            there = set(self._dirs)
        for rel in files:
            if self.rel(rel).rpartition("/")[0] in there:
                jobs.append((("read", self.rel(rel)), lambda rel=rel: self._read_small(rel, limit)))
        for rel in folders:
            if self.rel(rel) in there:
                jobs.append((("list", self.rel(rel)), lambda rel=rel: self._list(rel)))   # (limit: none)
        if not jobs:
            return
        pool = concurrent.futures.ThreadPoolExecutor(len(jobs), "steno-read-ahead")
        try:
            with self._names:
                for key, job in jobs:
                    self._ahead[key] = (pool.submit(job), limit if key[0] == "read" else 0)
                    self._begun.append(self._ahead[key][0])
        finally:
            pool.shutdown(wait=False)

    def _taken_ahead(self, kind: str, rel: str, limit: int = 0) -> concurrent.futures.Future | None:
        """The read or listing read_ahead() began of ``rel`` (with this ``limit``), once; None when there is none."""
        with self._names:
            got = self._ahead.pop((kind, self.rel(rel)), None)
        if got is None:
            return None
        fut, made_with = got
        return fut if made_with == limit else None

    def _list(self, rel: str) -> dict | None:
        fs, remote = self._at(rel, folder=True)
        return self.rcd.call("operations/list", {"fs": fs, "remote": remote,
                                                 "opt": {"noMimeType": True, "noModTime": True}}, missing_ok=True,
                             listing=self.rel(rel))

    def scandir(self, rel: str) -> dict[str, EntryStat]:
        if self.rel(rel) in self._unmade:
            return {}
        with self._names:
            known = self._first_listing.pop(self.rel(rel), None)
        if known is not None:
            return known
        ahead = self._taken_ahead("list", rel, 0)
        r = ahead.result() if ahead is not None else self._list(rel)
        if r is None:
            raise TargetError(f"{self.name}: folder not found: {rel}")
        out = {d["Name"]: self._entry(d) for d in r.get("list") or [] if isinstance(d, dict) and d.get("Name")}
        folder = self.rel(rel)
        with self._names:
            if folder in self._mine or folder.rpartition("/")[0] in self._mine or folder in self._claimed:
                self._mine[folder] = set(out)
        return out

    def listdir(self, rel: str) -> list[str]:
        return sorted(self.scandir(rel))

    def mkdir(self, rel: str) -> None:
        if self.rel(rel) in self._dirs:
            return
        # looked up on the store, not taken from the recorder folder's listing: a folder someone put there since
        # (a person restoring a session, a sync client) is not this push's own empty folder, so its files are
        # never taken as free names and replaced (a move replaces on every store). But a <session>.partial folder
        # absent from a folder only this push writes in: the engine's own working name (it removes any it finds),
        # moved into place by rename(), which never replaces a folder
        absent = self._absent(rel)            # as far as the listing of a folder only this push writes in tells
        partial = self.rel(rel).endswith(PARTIAL_SUFFIX) and absent
        if partial:
            # not made now: every upload makes its file's folder first (rclone's WebDAV: MKCOL, an existing one
            # taken as made, as a mkdir does), so a session's first file makes it, a round trip less per
            # session; a folder nothing was written into is made by its move (_move_dir)
            with self._names:
                self._unmade.add(self.rel(rel))
                self._mine[self.rel(rel)] = set()
                self._dirs.add(self.rel(rel))
            self._landed(rel)
            return
        if self._new_at_top(rel):
            # missing from the remote's folder at connect() (files listed too): no look-up (rclone's look-up of a
            # missing name is two round trips: the name, then its folder). Not taken as this push's own empty folder
            # (someone may make it meanwhile): its names are looked up, until this push claims it (claimed(): what is
            # in it then is what the push put there). On a WebDAV store not made now either:
            # the first upload into it makes it (rclone's MKCOL of a file's folder before its PUT, an existing one
            # taken as made), as a <session>.partial's; the recorder's folder by its claim, the office index's by
            # the index: a round trip less before a first push's first session. Elsewhere made at once
            with self._names:
                self._dirs.add(self.rel(rel))
                self._made.add(self.rel(rel))
                if self.paced:
                    self._unmade.add(self.rel(rel))
            if not self.paced:
                self.rcd.call("operations/mkdir", {"fs": self.fs, "remote": self.rel(rel)})
            self._landed(rel)
            return
        d = self._stat(rel) if check_rel(rel) else {"IsDir": True}
        if d:
            st = self._entry(d)
            if st.kind != "dir":
                raise TargetError(f"a {st.kind} is in the way of folder {rel}")
            self._landed(rel)
            head, _, base = self.rel(rel).rpartition("/")
            if absent and head in self._claimed:
                # appeared in the recorder's own folder since the push listed it: someone else's, never written
                # into (the engine takes the folder it asks for as its own new one: it was mixed, and the next
                # push removed it, with their files, as an interrupted build of its own)
                raise TargetError(f"a folder named {base!r} appeared on the store meanwhile (not ours, left alone); "
                                  f"the session is sent again by the next push")
            with self._names:
                self._dirs.add(self.rel(rel))
            return
        self.rcd.call("operations/mkdir", {"fs": self.fs, "remote": self.rel(rel)})
        self._landed(rel)
        head = self.rel(rel).rpartition("/")[0]
        with self._names:
            self._dirs.add(self.rel(rel))
            if head in self._mine or head in self._claimed:     # (elsewhere another recorder may have made it too)
                self._mine[self.rel(rel)] = set()

    def made(self, rel: str) -> bool:
        """``rel`` is a folder connect() found missing from the remote's folder and this push made: whatever is in it
        came since (a claim, the office index of a recorder making the same name at the same moment), so a file
        not there then is not looked for first; a rename() into it still never replaces one."""
        with self._names:
            return self.rel(rel) in self._made

    def _new_at_top(self, rel: str) -> bool:
        """``rel`` is a name in the remote's folder that connect() found missing there; one it found as a file is
        said at once (TargetError), as a look-up would."""
        parts = check_rel(rel)
        if len(parts) != 1 or self._top is None:
            return False
        if parts[0] in self._top:
            if parts[0] not in self._dirs:
                raise TargetError(f"a file is in the way of folder {rel}")
            return False
        return True

    def own_temp(self, name: str) -> bool:
        """Temp files this host's pushes leave after a drop (another host's are not ours to remove): a name of
        temp_name()'s shape with this host's name, whole (pi-1-2's '.steno-tmp-pi-1-2-4011-abc123-1.part' is not
        pi-1's: its name's start alone is)."""
        return re.fullmatch(rf"{re.escape(TEMP_PREFIX + self._host)}-\d+-[0-9a-f]{{6}}-\d+\.part", name) is not None

    def temp_name(self) -> str:
        return f"{TEMP_PREFIX}{self.tag}-{next(self._seq)}.part"

    def open_write(self, rel: str, *, resume: str | None = None) -> "_RcloneWrite":
        return _RcloneWrite(self, rel)

    def open_read(self, rel: str, *, uncached: bool = False) -> "_RcloneRead":
        return _RcloneRead(self, rel, back=uncached)        # (uncached: the engine's read-back of a file it wrote)

    def read_small(self, rel: str, limit: int) -> bytes | None:
        """A small file's first ``limit`` bytes; None when it is not there. One look-up and one read of the store
        (a look-up first, lstat(), was one request more, and two for a name not there); none for a name missing
        from a folder only this push writes in (_absent)."""
        if self._absent(rel):
            return None
        ahead = self._taken_ahead("read", rel, limit)
        return ahead.result() if ahead is not None else self._read_small(rel, limit)

    def _read_small(self, rel: str, limit: int) -> bytes | None:
        try:
            h = _RcloneRead(self, rel, missing_ok=True)
        except _Missing:
            with self._names:
                self._missing.add(self.rel(rel))
            return None
        try:
            return h.read(limit)
        finally:
            h.close()

    def move(self, src: str, dst: str, *, free: bool = False, locked_again: bool = True) -> None:
        """Move a file; ``free``: dst is known absent, so rclone need not look it up first (one request less).
        A move refused because its source is gone from the store (our temp file, removed there meanwhile by a
        person or another program: a WebDAV store answers the MOVE 404 or 403, which is also how a store refuses
        writes for good) is a transient fault saying so: the next attempt sends the file again."""
        # (the source through its folder's own remote on WebDAV (see _at): rclone paces each remote's requests, and
        # a move's four alternate between its source (look-up, MOVE) and destination (folder, look-up): each side
        # waits for its own turn only, ~20 ms a move instead of ~40 ms on a LAN; rclone still moves it on the
        # store, its source and destination being one remote of the config)
        fs, remote = self._at(src)
        dst_fs, dst_remote = self.fs, self.rel(dst)
        head, _, base = dst_remote.rpartition("/")
        if head and head == self.rel(src).rpartition("/")[0] and (at := self._in(head)) is not None:
            # (within one folder known there: both through its remote rooted there, no MKCOL before the MOVE)
            fs, remote, dst_fs, dst_remote = at, self.rel(src).rpartition("/")[2], at, base
        try:
            self.rcd.call("operations/movefile", {"srcFs": fs, "srcRemote": remote, "dstFs": dst_fs,
                                                  "dstRemote": dst_remote, "_config": _always(free)},
                          locked_again=locked_again)
        except RcloneError as e:
            if (err := self._move_failed(e, src, dst)) is e:
                raise
            raise err from None
        self._landed(src, False)
        self._landed(dst)

    def _move_failed(self, e: RcloneError, src: str, dst: str) -> RcloneError:
        """What a failed move of ``src`` (a file or a folder of this push: move(), _move_dir()) raises: a refusal for
        good whose source is gone from the store (removed there meanwhile by a person or another program: a WebDAV
        store answers the MOVE 404 or 403, which is also how a store refuses writes for good) is a transient fault
        saying so, and the next attempt sends it again; else ``e``. One look-up, on this failure only."""
        if not e.permanent or e.locked:
            return e
        try:
            gone = self._stat(src) is None
        except RcloneError:
            return e
        if not gone:
            return e
        self._landed(src, False)
        return RcloneError(f"{self.name}: {src} disappeared from the store before it was moved to {dst} (removed "
                           f"there meanwhile by a person or another program?); it is sent again")

    def rename(self, src: str, dst: str) -> None:
        with self._names:
            made = self.rel(src) in self._mine         # a folder this push made (or listed)
        if made or (self.rel(src) not in self._files and (st := self.lstat(src)) is not None and st.kind == "dir"):
            self._move_dir(src, dst)
            return
        # a name missing from a folder only this push writes in (made by it, or the recorder's claimed folder)
        # is free without a look-up. On a WebDAV store none first either when rclone's MOVE there says
        # "Overwrite: F" (before rclone 1.63: move_refuses; see _always), so the store itself refuses a file there
        # (412), in the same request that moves (a look-up first cost two round trips, rclone's look-up of a missing
        # name, and left one between it and the move in which another recorder's claim could land and be
        # replaced); looked up only when the move fails. A later rclone's MOVE replaces: looked up first there
        looked = self._absent(dst) or self.move_refuses
        if not looked and self.lstat(dst) is not None:
            raise NameTaken(f"refusing to replace existing {dst}")
        # not made again when refused as locked: someone may be taking that name
        try:
            self.move(src, dst, free=True, locked_again=False)
        except RcloneError:
            if self.move_refuses and not self._absent(dst) and self.lstat(dst) is not None:
                raise NameTaken(f"refusing to replace existing {dst}") from None
            raise
        with self._names:
            self._files.discard(self.rel(src))
            self._files.add(self.rel(dst))

    def _move_dir(self, src: str, dst: str) -> None:
        """Move a folder in one request of the store (rclone's DirMove: a WebDAV MOVE, an SFTP rename), never
        replacing or merging into a folder there: rclone falls back to moving file by file into a folder it finds
        at ``dst``, a fallback these settings make it refuse (it cannot run with both), so the move happens whole or
        not at all. Where the store itself refuses a MOVE onto a name taken (move_refuses: rclone before 1.63 sends
        "Overwrite: F") no look-up first. A later rclone's MOVE says "Overwrite: T" (the store replaces what is
        there), its own look-up of ``dst`` a folder listing (which a file may pass unseen): ``dst`` is looked up
        first here, as rename() does a file's name, and a name taken is refused as the engine's rename is (the
        session not moved, its name left to whoever holds it). Looked up even where this push's listing says the
        name is free (rename()'s _absent): a session's name is in the recorder's folder, where people browse and add
        folders of their own while a push runs."""
        if not self.move_refuses and self._stat(dst) is not None:
            self._landed(dst)
            raise NameTaken(f"refusing to replace existing {dst}")
        with self._names:
            unmade = self.rel(src) in self._unmade
        if unmade:                                  # nothing was written into it
            self.rcd.call("operations/mkdir", {"fs": self.fs, "remote": self.rel(src)})
            with self._names:
                self._unmade.discard(self.rel(src))
        try:
            self.rcd.call("sync/move", {**self._dir_move_fs(src, dst),
                                        "_config": {"NoCheckDest": True, "Immutable": True}})
        except RcloneError as e:
            if self._stat(dst) is None:             # (looked up: not taken from a listing, which it may postdate)
                if (err := self._move_failed(e, src, dst)) is e:
                    raise
                raise err from None
            if not self._moved(src, dst):
                self._landed(dst)
                raise NameTaken(f"refusing to replace existing {dst}") from None
            log.info("%s: %s moved into place, its answer lost (%s)", self.name, dst, e)
        with self._names:
            names = self._mine.pop(self.rel(src), None)
            self._landed(src, False)
            self._landed(dst)
            if names is not None:
                self._mine[self.rel(dst)] = names
            self._dirs.add(self.rel(dst))

    def _moved(self, src: str, dst: str) -> bool:
        """A folder move whose answer was lost (the connection dropped after the store did it) was done: ``src``, a
        folder this push made, is gone, and ``dst`` holds just the names this push put in it. Else the folder at
        ``dst`` is someone else's (a name taken meanwhile): never taken for ours."""
        with self._names:
            names = self._mine.get(self.rel(src))
            names = None if names is None else set(names)
        if names is None or self._stat(src) is not None:
            return False
        r = self.rcd.call("operations/list", {"fs": self.fs, "remote": self.rel(dst),
                                              "opt": {"noMimeType": True, "noModTime": True}}, missing_ok=True,
                          listing=self.rel(dst))
        there = {d.get("Name") for d in (r or {}).get("list") or [] if isinstance(d, dict)}
        return r is not None and there == names

    def _dir_move_fs(self, src: str, dst: str) -> dict[str, str]:
        """sync/move's srcFs and dstFs of a folder's move: each folder opened as a remote of its own, both in their
        folder's remote rooted there when they are in one folder known there (_in: no MKCOL of it before the MOVE),
        so that rclone still moves it on the store in one request (its DirMove takes two remotes of one name)."""
        head, _, base = self.rel(dst).rpartition("/")
        shead, _, sbase = self.rel(src).rpartition("/")
        at = self._in(head) if head and head == shead else None
        if at is None:
            return {"srcFs": self._sub(src), "dstFs": self._sub(dst)}
        return {"srcFs": f"{at}{sbase}/", "dstFs": f"{at}{base}/"}

    def _sub(self, rel: str) -> str:
        """The remote of a folder below the push's remote, as a folder ("NAME:path/to/it/"): rclone opens it
        without looking whether it is a file."""
        base = self.fs if self.fs.endswith((":", "/")) else f"{self.fs}/"
        return f"{base}{self.rel(rel)}/"

    def remove(self, rel: str) -> None:
        if self.rel(rel) in self._files:       # a file this push committed (a folder's marker): no look-up
            with self._names:
                self._files.discard(self.rel(rel))
            self.rcd.call("operations/deletefile", {"fs": self.fs, "remote": self.rel(rel)}, missing_ok=True)
            self._landed(rel, False)
            return
        st = self.lstat(rel)
        if st is None:
            return
        self.rcd.call("operations/rmdir" if st.kind == "dir" else "operations/deletefile",
                      {"fs": self.fs, "remote": self.rel(rel)}, missing_ok=True)
        self._landed(rel, False)

    def remove_tree(self, rel: str) -> None:
        if not check_rel(rel):
            raise InvalidArgument("refusing to remove the remote's root")
        if self.lstat(rel) is not None:
            self.rcd.call("operations/purge", {"fs": self.fs, "remote": self.rel(rel)}, missing_ok=True)
        gone = self.rel(rel)
        with self._names:
            self._files = {f for f in self._files if not f.startswith(f"{gone}/")}
        self._landed(rel, False)

    def free_space(self) -> int:
        """What the store says is free (NO_FREE_SPACE: it does not say); the first time as space_ahead() began
        asking it, if it did."""
        with self._names:
            ahead, self._space = self._space, True
        if isinstance(ahead, concurrent.futures.Future) and not ahead.cancelled():
            return ahead.result()
        return self._about()

    def space_ahead(self) -> None:
        """Begin asking the store what is free (operations/about: a request of the store, which the run's first
        session waited for before its first byte, after the claim and the folder's listing), once, for the first
        free_space()."""
        with self._names:
            if self._space is not None:
                return
            pool = concurrent.futures.ThreadPoolExecutor(1, "steno-space-ahead")
            try:
                self._space = pool.submit(self._about)
                self._begun.append(self._space)
            finally:
                pool.shutdown(wait=False)

    def _about(self) -> int:
        try:
            r = self.rcd.call("operations/about", {"fs": self.fs}) or {}
        except RcloneError:
            return NO_FREE_SPACE        # the store does not tell (WebDAV without quota properties)
        free = r.get("free")
        return int(free) if isinstance(free, (int, float)) else NO_FREE_SPACE

    def fsync_dir(self, rel: str) -> None:
        """Nothing to do: rclone answers once the store has the file."""

    def last_moves(self, root: str, moves: list[tuple[str, str]]) -> None:
        """The engine's last manifest save of the push is about to move these folders of ``root`` into place: what
        the push writes after them (after_moves: the office index, three round trips to upload and five to name on
        WebDAV, after the moves' own) is sent meanwhile, through its own folder's remote (see _at), as ``root`` will
        hold the folders once moved; named only after them (taken()), and only if that is what it then holds."""
        if self.after_moves is None or self._after is not None:
            return
        names = self.known_names(root)
        if names is None:
            return
        for src, dst in moves:
            names.discard(self.rel(src).rpartition("/")[2])
            names.add(self.rel(dst).rpartition("/")[2])
        after = self.after_moves

        def send() -> Any:
            # inside unstoppable(): it belongs to the run's last save (the engine's own is over by the time this
            # thread opens its file), which a cancel lets end; stopped, a cancelled push lost its results with it
            with self.unstoppable():
                return after(root, names)
        pool = concurrent.futures.ThreadPoolExecutor(1, "steno-after-moves")
        try:
            self._after = pool.submit(send)
        finally:
            pool.shutdown(wait=False)

    def taken(self) -> concurrent.futures.Future | None:
        """What last_moves() sent ahead (a Future of after_moves()'s result), once: the caller names or removes it."""
        after, self._after = self._after, None
        return after

    def close(self) -> None:
        with self._names:
            begun, self._begun, self._ahead = self._begun, [], {}
        # reads begun ahead and never asked for (the push failed before, or changed what they read): none begins
        # now, and those in flight get a moment to end before rclone does; a stalled one (a store that stopped
        # answering) is ended by rclone's end, not waited for up to rclone's timeout with rclone kept running
        for fut in begun:
            fut.cancel()
        concurrent.futures.wait(begun, timeout=AHEAD_END)
        after, self._after = self._after, None
        if after is not None:
            # sent ahead and never named (the push failed before): removed, best effort (else it is this host's temp
            # file, which the next push removes)
            # (waited for as briefly as reads begun ahead: a stalled upload is ended with rclone)
            with contextlib.suppress(Exception):
                handle = getattr(after.result(timeout=AHEAD_END), "handle", None)
                if handle is not None:
                    handle.abort()
        try:
            self.rcd.close()
        finally:
            with self._names:
                fds, self._lingering = self._lingering, []
            for fd in fds:
                os.close(fd)

    def _linger(self, fd: int) -> None:
        """Keep ``fd`` open until rclone has stopped: a copy of it not known ended may open it still, and its number,
        closed, would be the next file this process opens (its state database, a share link store)."""
        with self._names:
            self._lingering.append(fd)


class _RcloneWrite(WriteHandle):
    """A file uploaded under a temp name and moved on commit (a file whose name is a temp name already is
    uploaded under it). A local file (from_file) is copied by rclone itself (``operations/copyfile``, a job
    the writes pace: the progress shown is what rclone sent); other bytes are streamed to rclone (a chunked
    multipart upload), but those of a small file are kept and sent whole by sync(), again while the store answers
    423 Locked."""

    reads_source = True     # rclone reads the copied recording through the page cache: the engine's reads share it

    def __init__(self, t: RcloneTarget, rel: str) -> None:
        self._t, self._rel = t, rel
        head, _, base = t.rel(rel).rpartition("/")
        self._head = head
        # a folder's marker goes under its own name too: cut short, it still says "incomplete" (being there is
        # all it says), and a move is several round trips (five on WebDAV); so does a file in a <session>.partial
        # folder this push made: the folder's name says "incomplete" (moved into place whole, once verified)
        with t._names:
            partial = head.endswith(PARTIAL_SUFFIX) and head in t._mine
        self._fresh = not (base.startswith(TEMP_PREFIX) or base == MARKER or partial)   # needs a temp name
        self.temp = t.temp_name() if self._fresh else base
        self.temp_rel = f"{head}/{self.temp}" if head else self.temp
        self.offset = 0
        self.chunk = CHUNK
        self.verified = False
        self.written_crc: int | None = None     # (the store's own hash checks the bytes: no CRC-32 of them here)
        self.done = False
        self._size = 0
        self._digest = hashlib.new(t.hash) if t.hash else None
        self._stored = False
        self._boundary = f"steno{uuid.uuid4().hex}"
        self._conn: http.client.HTTPConnection | None = None      # the stream (opened by the first write)
        self._job: http.client.HTTPConnection | None = None   # rclone's own copy of the local file (from_file):
                                                               # its call, which answers when the copy has ended
        self._group = f"steno-{t.tag}-g{next(t._seq)}"   # this upload's rclone stats: its own, never shared
                                                          # (a .partial folder's file is named as in the others)
        self._src: tuple[Path, int, tuple] | None = None   # the copied recording: its path (for messages), our
                                                           # dup of the engine's descriptor (rclone reads it), its key
        self._copied = 0                    # bytes rclone reported copied (or, of a stream, took)
        self._sent = 0                      # bytes of a stream put on its connection
        self._small = bytearray()           # the bytes written while they are at most SMALL (sent by sync())
        self._ahead = AHEAD // t.checks     # (a share: the copies in flight together run at least AHEAD ahead)
        self._pace = 0.0                    # bytes per second rclone copied this file since its copy began (_allowed)
        self._began = 0.0                   # when rclone's copy of it began
        self._ended: dict | None = None     # the copy's outcome: {} copied, {"error": ...} (its answer came)
        self._rate = 0.0                    # bytes per second rclone copies, as its last two counts told
        self._count_at = 0.0                # when the last count was read
        self._stoppable = t.stoppable()     # (opened inside unstoppable(): the cancel is not looked at)
        self._copy: dict[str, Any] | None = None    # the copy's call (begun again when refused as locked)
        self._locked_until: float | None = None     # (_copied_again: until when, and the pause before the next try)
        self._pause = 0.0

    # -- a local file, copied by rclone ---------------------------------------------------------------
    def from_file(self, src: Path, fd: int, st: os.stat_result) -> None:
        """Let rclone copy the file the engine opened as ``fd``: no stream through this process, and a store that
        cannot take a stream of unknown size (WebDAV) gets no spool copy first. rclone opens our own descriptor of
        it (``/proc/<pid>/fd/<n>``, a magic link to the open file: the same inode whatever ``src`` names by then),
        never the path, which whoever writes the data folder can swap for a symlink between any look at it and
        rclone's open, and back. The dup stays open until the copy has ended."""
        if self._conn is not None or self._job is not None or self._size or not stat_mod.S_ISREG(st.st_mode):
            return
        self._small = bytearray()
        t = self._t
        own = os.dup(fd)                    # (close-on-exec: no other child inherits it)
        try:
            fs, remote = t._at(self.temp_rel)
            settings: dict[str, Any] = _always(self._fresh or t._absent(self.temp_rel))
            if not t.hash_checked:
                # (where this process reads each copy back, CPU is what a push on a shared CPU waits for) no read-ahead
                # buffer in rclone (--buffer-size, 16 MiB): the engine's own reads of the file run ahead of rclone's
                # (_follow paces them), so rclone reads it from the page cache, and its buffer was one more copy of
                # every byte and a hand-off per MiB (bench: `rclone copy` of 252 MiB to `rclone serve webdav`, rclone's
                # CPU 0.21 -> 0.17 s). A store that keeps a hash (SFTP) keeps rclone's default
                settings["BufferSize"] = 0
            # one call that answers when the copy has ended (not a job asked about every few ms: each ask ~2 ms of
            # CPU here and in rclone); its byte count read while the engine's reads wait for it (_follow)
            self._began = time.monotonic()
            self._copy = {"srcFs": f":local,copy_links=true:/proc/{os.getpid()}/fd", "srcRemote": str(own),
                          "dstFs": fs, "dstRemote": remote, "_group": self._group, "_config": settings}
            self._job = t.rcd.begin("operations/copyfile", self._copy)
        except BaseException:
            t._linger(own)                  # (a copy rclone may have started all the same)
            raise
        self._src = (Path(src), own, _key(st))

    def _release(self, last: bool = True) -> None:
        """Close our descriptor of the copied recording once the copy has ended; ``last`` (abort()): else keep it
        until rclone stops."""
        ended = self._ended is not None and not self._ended.get("lost")
        if self._src is None or self._src[1] < 0 or (not ended and not last):
            return
        src, own, key = self._src
        self._src = (src, -1, key)
        if ended:
            os.close(own)
        else:
            self._t._linger(own)

    def _status(self, wait: float = 0.0) -> dict | None:
        """The copy's outcome once its call answered (waited for up to ``wait`` seconds), None while it runs; a
        copy that failed raises its error (explained)."""
        if self._ended is None:
            assert self._job is not None
            if self._job.sock is not None and not sockwait.ready(self._job.sock, wait):
                return None
            try:
                self._ended = self._t.rcd.end(self._job, "operations/copyfile") or {}
            except TargetError as e:
                if self._copied_again(e):
                    return None
                # (no answer, the connection cut: rclone may not have stopped yet, see _release)
                lost = isinstance(e.__cause__, (OSError, http.client.HTTPException))
                self._ended = {"error": e, "lost": lost}
        if "error" in self._ended:
            raise self._ended["error"]
        return self._ended

    def _copied_again(self, e: TargetError) -> bool:
        """The copy refused as locked (WebDAV's 423: nothing written; a lock the server takes for a moment while it
        answers another request, such as the MKCOL of this folder by an upload of the same session beside it) is
        begun again, for up to LOCK_WAIT seconds as any operation is (Rcd.unlocked): rclone opens the recording
        anew through our descriptor, from its start. True when it was."""
        if not (isinstance(e, RcloneError) and e.locked) or self._copy is None:
            return False
        now = time.monotonic()
        if self._locked_until is None:
            self._locked_until, self._pause = now + LOCK_WAIT, 0.05
        if now >= self._locked_until:
            return False
        log.debug("%s: %s: locked on the store, its copy begun again in %.2fs", self._t.name, self._rel, self._pause)
        time.sleep(min(self._pause, self._locked_until - now))
        self._pause *= 2
        if self._job is not None:
            self._job.close()
        self._job = self._t.rcd.begin("operations/copyfile", self._copy)
        return True

    def _allowed(self) -> int:
        """How far the engine's reads may run ahead of rclone's count of this copy: its share of AHEAD, or AHEAD_TIME
        seconds of this copy at the pace rclone copies it, up to its share of AHEAD_MAX. The copies in flight share
        the uplink, so together they run at most AHEAD, or about AHEAD_TIME of the uplink, ahead: a slow uplink's
        progress stays close to what was sent, and a fast store's copies seldom make the engine's reads wait."""
        return min(max(self._ahead, int(self._pace * AHEAD_TIME)), AHEAD_MAX // self._t.checks)

    def _follow(self, upto: int | None, stoppable: bool = True) -> None:
        """Wait until rclone has copied ``upto`` bytes (None: until the copy ended); a copy that makes no
        progress for the rcd's timeout is a stalled store. A cancelled job stops the copy (``stoppable``: not
        the wait of abort() for a copy it stopped)."""
        def there() -> bool:
            if (upto is not None and self._copied >= upto) or self._status() is not None:
                return True
            if upto is None:        # waiting for the end: its answer (a cancel looked at meanwhile)
                return self._status(POLL_END) is not None
            # until rclone should have copied up to there at the pace it goes (its answer, should it end or fail
            # first, wakes it): a count or two per wait, not one every POLL
            left = (upto - self._copied) / self._rate if self._rate else POLL
            return self._status(min(max(left, POLL), PACE)) is not None
        # pacing reads rclone's count at each look; waiting for the end, every LOOK seconds (its progress only tells
        # a stall, seconds away)
        self._while_moving(there, 0.0 if upto is not None else LOOK, stoppable=stoppable)

    def _while_moving(self, ready: Callable[[], bool], every: float, *, stoppable: bool = True) -> None:
        """Wait until ready() (which waits a moment itself when it says no) while this upload moves: bytes of a stream
        put on its connection, or rclone's byte count for it (its own stats group, read every ``every`` seconds
        while nothing else moved). Nothing moving for the rcd's timeout is a stall (_stalled). A cancelled job stops
        the wait (CancelledJob: the caller aborts this write; ``stoppable``: not abort()'s wait for a copy it
        stopped). One failed look at rclone's count ends nothing (rclone slow to answer: the idle limit decides)."""
        t = self._t
        sent, counted = self._sent, self._copied
        idle = time.monotonic()
        look = idle + every                 # (the first look too: most waits end before it)
        while not ready():
            if stoppable and self._stoppable and t.cancelled():
                raise CancelledJob("cancelled")
            now = time.monotonic()
            if self._sent != sent:
                sent, idle, look = self._sent, now, now + every
                continue
            if now < look:
                continue
            look = now + every
            try:
                count = int((t.rcd.call("core/stats", {"group": self._group}) or {}).get("bytes") or 0)
            except RcloneError as e:
                log.debug("%s: %s: no progress read (%s)", t.name, self._rel, e)
                count = counted
            if count > counted and self._count_at and now > self._count_at:
                self._rate = (count - counted) / (now - self._count_at)
            if self._job is not None and count >= max(self._ahead, PACED) and now > self._began:
                self._pace = count / (now - self._began)        # (since it began: _allowed)
            self._count_at = now
            if count != counted:
                counted, idle = count, now
                self._copied = max(self._copied, count)
            elif now - idle > t.rcd.timeout:
                raise self._stalled()

    def _copy_ended(self) -> None:
        """The copy job's outcome: its error explained; the file copied must not have changed meanwhile (written
        to: another size or time)."""
        try:
            self._follow(None)
            self._status()                      # (a failed copy raises its error)
            assert self._src is not None
            src, own, key = self._src
            if _key(os.fstat(own)) != key:
                raise SourceError(f"{src} changed while it was copied")
        finally:
            self._release(last=False)           # (not ended: abort() stops it first)

    # -- a stream ---------------------------------------------------------------------------------------
    def _open_stream(self) -> None:
        t = self._t
        # (its own stats group, as a copy's: the wait for its answer watches its progress, see _await_answer)
        fs, remote = t._at(self._head, folder=True)
        query = urllib.parse.urlencode({"fs": fs, "remote": remote, "_group": self._group})
        self._conn = t.rcd.connection()
        try:
            self._conn.putrequest("POST", f"/operations/uploadfile?{query}", skip_accept_encoding=True)
            for k, v in t.rcd.headers().items():
                self._conn.putheader(k, v)
            self._conn.putheader("Content-Type", f"multipart/form-data; boundary={self._boundary}")
            self._conn.putheader("Transfer-Encoding", "chunked")
            self._conn.endheaders()
            self._send(f'--{self._boundary}\r\nContent-Disposition: form-data; name="file0"; '
                       f'filename="{self.temp}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
        except OSError as e:
            self._conn.close()
            raise RcloneError(f"{t.name}: rclone stopped answering ({e})") from e

    def _send(self, data: bytes | memoryview, *, last: bool = False) -> None:
        """``data`` as one chunk of the stream's body (``last``: and the body's end). A store that takes a stream as
        it comes (SFTP) takes it at the uplink's pace, where one chunk can take longer than the connection's timeout
        (which bounds a whole sendall()): sent as long as bytes move (_while_moving), a cancel looked at meanwhile."""
        assert self._conn is not None and self._conn.sock is not None
        sock = self._conn.sock
        views = [memoryview(b"%x\r\n" % len(data)), memoryview(data).cast("B"),
                 memoryview(b"\r\n0\r\n\r\n" if last else b"\r\n")]

        def sent() -> bool:
            try:
                n = sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                n = 0
            self._sent += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if views:
                views[0] = views[0][n:]
                sockwait.ready(sock, POLL_END, write=True)
            return not views
        sock.setblocking(False)
        try:
            self._while_moving(sent, LOOK)
        finally:
            sock.settimeout(self._conn.timeout)

    def _failed(self, e: Exception) -> TargetError:
        """Why the upload stopped: rclone's answer when it gave one (the store's error), else the drop."""
        assert self._conn is not None
        try:
            r = self._conn.getresponse()
            self._t.rcd.answer(r.status, r.read(1 << 20), write=True)
        except TargetError as err:
            return err
        except (OSError, ValueError, http.client.HTTPException):
            pass
        return RcloneError(f"{self._t.name}: the upload of {self._rel} was cut ({e})")

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self._job is None:
            if self._conn is None and self._size + len(data) <= SMALL:
                self._small += data
            else:
                try:
                    if self._conn is None:
                        self._open_stream()
                        if self._small:
                            self._send(self._small)
                            self._small = bytearray()
                    self._send(data)
                except OSError as e:
                    raise self._failed(e) from e
        if self._digest is not None:
            self._digest.update(data)
        self._size += len(data)
        if self._job is not None and self._size - self._copied > self._ahead:
            allowed = self._allowed()
            if self._size - self._copied > allowed:
                self._follow(self._size - allowed // 2)     # (caught up half-way: a wait every few chunks)

    def sync(self) -> None:
        """End the upload and wait until rclone has stored the whole temp file."""
        if self._stored:
            return
        if self._job is not None:
            self._copy_ended()
        elif self._conn is None:            # a small file (or an empty one): sent whole, again while locked
            self._t.rcd.unlocked(self._send_small, f"the upload of {self._rel}")
        else:
            self._end_stream()
        self._stored = True
        with self._t._names:                # its folder is made (the upload made it: mkdir())
            self._t._unmade.discard(self._head)

    def _send_small(self) -> None:
        if self._conn is not None:
            self._conn.close()              # (the try before, refused as locked)
        try:
            self._open_stream()
            if self._small:
                self._send(self._small)
        except OSError as e:
            raise self._failed(e) from e
        self._end_stream()
        self._small = bytearray()

    def _end_stream(self) -> None:
        assert self._conn is not None
        try:
            self._send(f"\r\n--{self._boundary}--\r\n".encode(), last=True)
            self._await_answer()
            r = self._conn.getresponse()
            body = r.read(1 << 20)
        except (OSError, http.client.HTTPException) as e:
            raise self._failed(e) from e
        finally:
            self._conn.close()
        self._t.rcd.answer(r.status, body, write=True)

    def _await_answer(self) -> None:
        """Wait until rclone answers the ended stream. Where the store cannot take a stream of unknown size
        (WebDAV), rclone spooled it and uploads it only now: no byte moves on this connection until the store has
        all of it, which takes as long as the uplink (or the bandwidth limit) makes it, so the connection's idle
        timeout is no sign of a stall; rclone's byte count for this upload is (_while_moving)."""
        assert self._conn is not None and self._conn.sock is not None
        sock = self._conn.sock
        self._while_moving(lambda: sockwait.ready(sock, POLL_END), LOOK)

    def _stalled(self) -> RcloneError:
        """No byte of this upload moved for the rcd's timeout (a copy's or a stream's)."""
        return RcloneError(f"{self._t.name}: the upload of {self._rel} stalled (no byte moved for "
                           f"{self._t.rcd.timeout:.0f}s)")

    def commit(self) -> None:
        """Move the temp file to the final name (replacing an old file); then, where the store keeps a
        hash, compare it with the hash of the bytes sent."""
        t = self._t
        try:
            self.sync()
            if self.temp_rel != t.rel(self._rel):
                t.move(self.temp_rel, self._rel, free=t._free(self._rel))
            else:
                t._landed(self._rel)
            with t._names:
                t._files.add(t.rel(self._rel))
            self.done = True
        finally:
            if not self.done:
                self.abort()
        if self._digest is not None:
            d = t._stat(self._rel, hashes=True) or {}
            got = str((d.get("Hashes") or {}).get(t.hash or "", ""))
            if got and int(d.get("Size", -1)) == self._size and got.lower() == self._digest.hexdigest():
                self.verified = True
            else:       # the engine's read-back tells what is wrong (and writes the file again)
                # (the store's words: a hostile or broken one's "hash" may hold terminal escapes or line breaks)
                log.warning("%s: %s on the store: %s %s, %d bytes; sent %s, %d bytes", t.name, self._rel, t.hash,
                            printable(got[:200]) or "(none)", int(d.get("Size", -1)), self._digest.hexdigest(),
                            self._size)

    def abort(self) -> None:
        """Stop the upload and remove the temp file (best effort: the next push removes our leftovers)."""
        if self.done:
            return
        self.done = True
        if self._conn is not None:
            self._conn.close()
        try:
            if self._job is not None and self._status() is None:
                self._t.rcd.call("job/stopgroup", {"group": self._group})      # (its group: this copy alone)
                self._follow(None, stoppable=False)     # (stopped: its temp file complete or gone before removal)
        except TargetError as e:
            # the stopped copy's own end: its call answers with its error ("context canceled"), which skipped the
            # removal below; rclone's SFTP upload leaves the part it wrote when stopped
            log.debug("%s: copy of %s stopped: %s", self._t.name, self._rel, e)
        finally:
            self._release()
            if self._job is not None:
                self._job.close()               # (not answered: rclone stops a call whose connection closed)
        try:
            self._t.rcd.call("operations/deletefile", {"fs": self._t.fs, "remote": self._t.rel(self.temp_rel)},
                             missing_ok=True)
            self._t._landed(self.temp_rel, False)
        except TargetError as e:
            log.debug("temp file %s not removed: %s", self.temp_rel, e)


def _always(free: bool) -> dict[str, bool]:
    """rclone's settings for a copy or move that must happen: by default rclone skips one onto a file of the same
    size (and time, where the store keeps it: WebDAV does not), deleting a move's source, so a SHA256SUMS whose
    lines changed but not its length was never replaced. ``free``: the destination is known absent, so rclone need
    not look it up first (one request less). Without it rclone looks the destination up and, when a file is there,
    deletes it before the move: on WebDAV that is needed, as rclone 1.60's MOVE sends "Overwrite: F" (a move onto a
    file there without the look-up fails: 412 Precondition Failed), so replacing a file (manifest.json, SHA256SUMS,
    the office index) costs six requests, the name empty for two of them. The guard against replacing someone's
    file is rename()'s own look-up, skipped only for names in folders this push made after looking them up, or
    listed, and on a WebDAV store whose MOVE is refused when a file is there (move_refuses: rclone < 1.63)."""
    return {"IgnoreTimes": True, "NoCheckDest": True} if free else {"IgnoreTimes": True}


def _key(st: os.stat_result) -> tuple:
    """What tells a file changed (or was replaced) between two looks."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _Missing(Exception):
    """read_small(): the file is not there."""


class _RcloneRead:
    """A remote file streamed out of rclone (``--rc-serve``); an error or a short body is raised (``missing_ok``:
    _Missing for a file not there), said as what it was: the read-back of a file the push wrote (``back``), or the
    read of one it finds there (a claim, a manifest), which is none."""

    def __init__(self, t: RcloneTarget, rel: str, missing_ok: bool = False, back: bool = False) -> None:
        self._t = t
        self._what = "the read-back" if back else f"the read of {t.rel(rel)}"
        self._conn = t.rcd.connection()
        fs, remote = t._at(rel)
        if "]" in fs:               # (rclone takes the fs of a read up to its first "]")
            fs, remote = t.fs, t.rel(rel)
        path = urllib.parse.quote(f"[{fs}]/{remote}")
        try:
            self._conn.request("GET", f"/{path}", headers=t.rcd.headers())
            self._r = self._conn.getresponse()
        except OSError as e:
            self._conn.close()
            raise RcloneError(f"{t.name}: rclone stopped answering ({e})") from e
        if self._r.status != 200:
            body = self._r.read(1 << 16)
            self._conn.close()
            gone = not_found(self._r.status, body)
            if missing_ok and gone:
                raise _Missing(rel)
            # (a bare 404: rclone found the file and the store failed to send it; taken for "not there", a claim was
            # made again over the one there, and a manifest rebuilt)
            said = error_text(body) if gone or self._r.status != 404 else "the store failed to send it"
            raise RcloneError(f"{t.name}: cannot read {rel}{' back' if back else ''}: HTTP {self._r.status} {said}")

    def read(self, n: int = -1) -> bytes:
        n = n if n > 0 else 1 << 20
        try:
            data = self._r.read(n)
        except (OSError, http.client.HTTPException) as e:        # a cut body: IncompleteRead
            raise RcloneError(f"{self._t.name}: {self._what} was cut ({e})") from e
        self._whole(len(data), n)
        return data

    def readinto(self, buf: bytearray) -> int:
        try:
            n = self._r.readinto(buf)
        except (OSError, http.client.HTTPException) as e:
            raise RcloneError(f"{self._t.name}: {self._what} was cut ({e})") from e
        self._whole(n, len(buf))
        return n

    def _whole(self, got: int, asked: int) -> None:
        """A read that ended short of the length rclone's answer gave (the store's answer cut: the store gone, a
        proxy's drop) raises: http.client returns what came, as if the file ended there, where a manifest.json cut
        halfway was unusable and rebuilt, every session sent again."""
        if got < asked and self._r.length:
            raise RcloneError(f"{self._t.name}: {self._what} was cut ({self._r.length} bytes of the file missing)")

    def close(self) -> None:
        self._conn.close()
