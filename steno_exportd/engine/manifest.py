"""SHA256SUMS + manifest.json in the target's root folder: read, rebuild, write atomically."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import logging
from typing import Any, Callable, Iterable

from isal.isal_zlib import crc32

from steno_exportd import __version__, safeparse
from steno_exportd.engine.identity import host_name
from steno_exportd.engine.targets import EntryStat, NotAFile, Target, os_error, read_upto
from steno_exportd.errors import CancelledJob, TargetError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
FORMAT = "steno-exportd-manifest"
VERSION = 1

# What a manifest.json or SHA256SUMS may be, read from a target: about 8,800 meetings of the 5 files a push writes
# by default (5,500 of 8 files, each ~113 or ~180 JSON values and keys): 20 MiB, a million values and keys, 200,000
# lines of sums. Someone else's file (a stick's author, a person or a program on the store) could otherwise be read
# and parsed into more than the unit's MemoryMax (24 MiB of '{},' is 400 MB of Python objects). Beyond these it is
# unusable, like any file that is not ours (rebuilt from SHA256SUMS); within them the costliest file (unique keys
# and strings) takes about 145 MB to read and parse, the largest of ours about 70 MB.
MAX_BYTES = 20 << 20
MAX_VALUES = 1_000_000
MAX_SUMS_LINES = 200_000


class Oversized(TargetError):
    """A file of ours on a target is larger than any we write: someone else's, unusable (not the target failing)."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class Manifest:
    """Per session uuid: folder, updated_at, files {name: {size, sha256, renderer, version, template}}.

    ``partial``: files being written resumably (engine/export.py), by path below the root:
    {uuid, folder, size, mtime_ns (of the source), temp (the temp file's name beside the path)}.
    """

    sessions: dict[str, dict] = dataclasses.field(default_factory=dict)
    partial: dict[str, dict] = dataclasses.field(default_factory=dict)
    rebuilt: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)

    def owned_paths(self) -> dict[str, dict]:
        """'<folder>/<name>' -> file entry, for every file we wrote."""
        out = {}
        for s in self.sessions.values():
            for name, f in s.get("files", {}).items():
                out[f"{s['folder']}/{name}"] = f
        return out

    def exported(self) -> set[str]:
        """UUIDs of the sessions exported here (not folders recovered from SHA256SUMS, not merged ones, not one
        recorded and then cut before its folder was finished)."""
        return {u for u, s in self.sessions.items() if not u.startswith(("rebuilt:", "merged:"))
                and not s.get("finishing")}

    def folders(self) -> dict[str, str]:
        """folder (casefolded) -> session uuid."""
        return {s["folder"].casefold(): u for u, s in self.sessions.items()}

    def to_json(self) -> dict:
        out = {"format": FORMAT, "version": VERSION, "generator": f"steno-exportd {__version__}",
               "host": host_name(), "updated": now_iso(), "sessions": self.sessions}
        if self.partial:
            out["partial"] = self.partial
        return out

    def sums_text(self) -> str:
        lines = sorted(f"{f['sha256']}  {p}" for p, f in self.owned_paths().items() if f.get("sha256"))
        return "".join(line + "\n" for line in lines)


_HEX = frozenset("0123456789abcdef")


def parse_sums(text: str) -> dict[str, str]:
    """path -> sha256 of a sha256sum-format text (text and binary mode lines); ValueError when it has more than
    MAX_SUMS_LINES lines."""
    lines = text.split("\n", MAX_SUMS_LINES)          # (lines end in '\n' alone: splitlines() would take a
    if len(lines) > MAX_SUMS_LINES and lines[-1]:      # '\r' or a '\x1c' for one, unbounded)
        raise ValueError(f"{SUMS} has more than {MAX_SUMS_LINES:,} lines")
    out = {}
    for line in lines:
        line = line.removesuffix("\r")
        digest = line[:64].lower()
        if len(line) > 66 and line[64:66] in ("  ", " *") and set(digest) <= _HEX:
            out[line[66:]] = digest
    return out


def read_sums(target: Target, root: str) -> dict[str, str]:
    """The root folder's SHA256SUMS (path below the root -> sha256); TargetError when unreadable, Oversized (one)
    when larger than ours (MAX_BYTES, MAX_SUMS_LINES)."""
    try:
        return parse_sums(read_file(target, f"{root}/{SUMS}").decode("utf-8", "replace"))
    except ValueError as e:
        raise Oversized(str(e)) from None


def read_file(target: Target, rel: str, limit: int = MAX_BYTES) -> bytearray:
    """A file of ours on a target (a manifest.json, SHA256SUMS, a push's claim); Oversized past ``limit`` (its
    first ``limit`` + 1 bytes read, no more)."""
    h = target.open_read(rel)
    try:
        return _capped(read_upto(h, limit + 1), rel, limit)
    finally:
        h.close()


def read_capped(chunks: Iterable[bytes], what: str, limit: int = MAX_BYTES) -> bytearray:
    """The bytes of a manifest.json, SHA256SUMS (or a smaller file of ours: ``limit``, whole MiB), read in
    ``chunks``; Oversized (a TargetError) past ``limit`` (one buffer, not the chunks and their join)."""
    data = bytearray()
    for b in chunks:
        data += b
        _capped(data, what, limit)
    return data


def _capped(data: bytearray, what: str, limit: int) -> bytearray:
    """``data``, read of a file of ours; Oversized when it is larger than ``limit`` (whole MiB)."""
    if len(data) > limit:
        raise Oversized(f"{what} is larger than {limit >> 20} MiB")
    return data


def hash_target_file(target: Target, rel: str, uncached: bool = False,
                     cancelled: Callable[[], bool] = lambda: False) -> tuple[int, str]:
    """(size, sha256) of a file as the target returns it; CancelledJob once ``cancelled()``."""
    h = target.open_read(rel, uncached=uncached)
    digest, size = hashlib.sha256(), 0
    try:
        while True:
            if cancelled():
                raise CancelledJob("cancelled")
            b = h.read(4 << 20)
            if not b:
                return size, digest.hexdigest()
            size += len(b)
            digest.update(b)
    finally:
        h.close()


def read(target: Target, root: str, *, found: bool = False) -> Manifest:
    """manifest.json as written (never rebuilt); ValueError (or TargetError) when missing or not ours.
    ``found``: the caller has just looked it up and found a file (not looked up again: a round trip on a store)."""
    if not found:
        st = target.lstat(f"{root}/{MANIFEST}")
        if st is None or st.kind != "file":
            raise ValueError(f"no {MANIFEST}" if st is None else f"{MANIFEST} is not a file")
    raw = read_file(target, f"{root}/{MANIFEST}")
    m = parse(raw)
    _keep(target, root, bytes(raw))
    return m


def _keep(target: Target, root: str, raw: bytes | None) -> None:
    """Remember manifest.json's bytes as this run read or wrote them, on a target that keeps them (``manifests``:
    a store where reading it again is round trips, rclone's), for known(); None: forget them (not known)."""
    kept = target.manifests
    if kept is not None:
        if raw is None:
            kept.pop(root, None)
        else:
            kept[root] = raw


def known(target: Target, root: str) -> Manifest | None:
    """manifest.json as this run last read or wrote it on ``target`` (a folder only this run writes in: the
    recorder's own), without reading it again; None where the target keeps no copy or the run has none."""
    raw = (target.manifests or {}).get(root)
    return None if raw is None else parse(raw)


def plain_name(folder: Any) -> bool:
    """A folder name as we write them: one name below the root. Someone else's manifest or SHA256SUMS may say '..',
    '' or 'a/b' (an export refused as a whole, files written into the root itself or into another folder)."""
    return isinstance(folder, str) and folder not in ("", ".", "..") and not any(c in folder for c in "/\\\0")


def parse(raw: bytes | bytearray) -> Manifest:
    """A manifest.json's bytes; ValueError (or UnicodeDecodeError) when they are not ours."""
    data = safeparse.json_loads(raw, max_values=MAX_VALUES)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("sessions"), dict):
        raise ValueError("not a steno-exportd manifest")
    version = data.get("version", 0)
    try:
        newer = int(version) > VERSION
    except (TypeError, ValueError, OverflowError):  # (someone's edit: JSON's 1e999 is a float infinity, whose
        raise ValueError("manifest version is not a number") from None     # OverflowError failed every push)
    if newer:
        said = safeparse.shorten(safeparse.printable(str(version)), 20)   # (int() took "\n\n\n9": no raw line breaks)
        raise ValueError(f"manifest version {said} is newer than ours")
    sessions = {u: s for u, s in data["sessions"].items()
                if isinstance(s, dict) and plain_name(s.get("folder")) and isinstance(s.get("files"), dict)}
    for s in sessions.values():         # records of the wrong shape (someone else's edit) are not ours either
        s["files"] = {n: f for n, f in s["files"].items() if isinstance(f, dict) and plain_name(n)}
        if not isinstance(s.get("errors", {}), dict):
            del s["errors"]
    partial = data.get("partial")
    # (a record of another shape, someone's edit: a list for a temp name failed every update of its session's folder)
    partial = {p: r for p, r in partial.items() if isinstance(r, dict)
               and all(isinstance(r.get(k, ""), str) for k in ("uuid", "folder", "temp"))} \
        if isinstance(partial, dict) else {}
    return Manifest(sessions, partial)


def read_small(target: Target, rel: str, limit: int = MAX_BYTES) -> bytearray | None:
    """A file of ours (Target.read_small: at once on a store, where a look-up first is one round trip more, two for
    a name not there); None when it is not there; NotAFile when something else is; Oversized past ``limit``."""
    raw = target.read_small(rel, limit + 1)
    return None if raw is None else _capped(bytearray(raw), rel, limit)


def load(target: Target, root: str, cancelled: Callable[[], bool] = lambda: False) -> Manifest:
    """Read the manifest; a missing or corrupt one (not ours: not JSON of ours, larger than ours, not a file) is
    rebuilt from the target by hashing (CancelledJob once ``cancelled()``). A target that fails to read it (a store
    answering 503 for a moment, a drop) raises that error: the manifest is not unusable for that, and a rebuild read
    every file back and sent every session again (the run fails instead; a push is tried again)."""
    rel = f"{root}/{MANIFEST}"
    try:
        raw = read_small(target, rel)
        if raw is not None:
            m = parse(raw)
            _keep(target, root, bytes(raw))
            return m
    except NotAFile:
        return rebuild(target, root, f"{MANIFEST} is not a file", cancelled) if _has_sums(target, root) \
            else Manifest()
    except (ValueError, TypeError, UnicodeDecodeError, Oversized) as e:
        log.warning("manifest on %s unusable (%s): rebuilding it", target.name, e)
        return rebuild(target, root, f"manifest unusable: {e}", cancelled)
    return rebuild(target, root, "", cancelled) if _has_sums(target, root) else Manifest()


def _has_sums(target: Target, root: str) -> bool:
    st = target.lstat(f"{root}/{SUMS}")
    return st is not None and st.kind == "file"


def rebuild(target: Target, root: str, reason: str = "", cancelled: Callable[[], bool] = lambda: False) -> Manifest:
    """Recover what we own from SHA256SUMS, keeping only files whose bytes still match. Reads no more than the
    target holds in use (``used_space()`` where it says): someone else's SHA256SUMS may name sparse files of
    terabytes, or one file under many names, and hashing them took hours. A store does not say (rclone's), or
    may lie: ``cancelled()`` stops the reads (CancelledJob), which went on to the end of what it served. A target
    that fails to read SHA256SUMS raises that error, as load() for manifest.json; one larger than ours is not ours
    (nothing recovered)."""
    m = Manifest(rebuilt=True, problems=[reason] if reason else [])
    try:
        sums = read_sums(target, root)
    except Oversized as e:
        log.warning("%s on %s unusable (%s): not ours", SUMS, target.name, e)
        sums = {}
    except (TargetError, OSError) as e:
        # not read: there, the target failed (a store's 503 for a moment, a drop), and the attempt fails as for
        # manifest.json (taken for none, the manifest was rebuilt empty and every session sent again beside its
        # folder, as "<folder> (2)"); none there (a manifest.json unusable alone), nothing to recover
        if not _has_sums(target, root):
            sums = {}
        elif isinstance(e, OSError):
            raise os_error(e, f"{root}/{SUMS}") from e
        else:
            raise
    used = target.used_space()
    budget = used if used is not None else float("inf")
    unread = 0
    for rel, sha in sums.items():
        folder, _, name = rel.partition("/")
        if not name or not plain_name(folder) or not plain_name(name):
            continue
        if cancelled():                 # (200,000 lines are as many look-ups, each a round trip on a store)
            raise CancelledJob("cancelled")
        st = target.lstat(f"{root}/{rel}")
        if st is None or st.kind != "file":
            continue
        if st.size > budget:
            unread += 1                 # more than the target holds: not a file we wrote
            continue
        budget -= st.size
        size, actual = hash_target_file(target, f"{root}/{rel}", cancelled=cancelled)
        if actual != sha:
            continue
        key = f"rebuilt:{folder}"
        s = m.sessions.setdefault(key, {"folder": folder, "updated_at": "", "files": {}})
        s["files"][name] = {"size": size, "sha256": sha, "renderer": "", "version": ""}
    if unread:
        log.warning("%s: %d file(s) named in %s not checked: together larger than the target holds", target.name,
                    unread, SUMS)
    return m


def write_atomic(target: Target, rel: str, data: bytes) -> None:
    """One file written under a temp name, synced, then given its name: never a partial file under it."""
    write_files(target, [(rel, data)])


def write_files(target: Target, files: list[tuple[str, bytes]], ready: Callable[[], bool] | None = None, *,
                at_once: bool = False) -> bool:
    """Files written atomically (as write_atomic): each under a temp name, synced, then given its name, in the order
    listed. On a target that takes several requests at once (``checks`` > 1: each request a round trip away) all
    are sent and synced at once before the first is named, and with ``at_once`` named at once too (a name is three
    round trips on a WebDAV store; the caller has recorded that a cut may leave them out of step); elsewhere each
    is written and named before the next. A failure leaves the files not named unwritten (their temp files
    removed), those named in place. ``ready``: asked before the first is named (while they are sent, where sent at
    once: what it waits for meanwhile); False: none is named, their temp files removed, and False returned."""
    together = target.checks > 1 and len(files) > 1
    if ready is not None and not together and not ready():
        return False
    handles: list[Any] = []
    named: set[int] = set()

    def name(i: int) -> None:
        handles[i].commit()
        named.add(i)
    try:
        for rel, data in files:
            handles.append(target.open_write(rel))
            handles[-1].write(data)
            if handles[-1].checks_crc:     # (checked beside its writes: WriteHandle)
                handles[-1].crc = crc32(data)
            if not together:
                handles[-1].sync()
                name(len(handles) - 1)
        if together:
            with concurrent.futures.ThreadPoolExecutor(len(handles) - 1, "steno-save") as pool:
                rest = [pool.submit(h.sync) for h in handles[1:]]
                handles[0].sync()
                for f in rest:
                    f.result()
            if ready is not None and not ready():
                for h in handles:
                    h.abort()
                return False
            if not at_once:
                for i in range(len(handles)):
                    name(i)
            else:
                with concurrent.futures.ThreadPoolExecutor(len(handles) - 1, "steno-save") as pool:
                    rest = [pool.submit(name, i) for i in range(1, len(handles))]
                    try:
                        name(0)
                    finally:
                        concurrent.futures.wait(rest)
                    for f in rest:
                        f.result()
    except BaseException:
        for i, h in enumerate(handles):
            if i not in named:
                h.abort()
        raise
    return True


_ENCODE = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(", ", ": ")).encode


def encode(doc: dict) -> bytes:
    """manifest.json's bytes: JSON with its keys sorted, one line per top-level key and one per session (and per
    partial file), each line by json's C encoder. json.dumps(indent=...) runs the pure-Python encoder instead:
    the manifest is encoded whole after every session, and on a Pi 4 that cost ~0.4 s a save at 1,000 sessions
    (quadratic in the sessions of one export). Any JSON reader reads it (parse(): as before; older manifests,
    indented, are read the same)."""
    lines = []
    for key in sorted(doc):
        value = doc[key]
        if key in ("sessions", "partial") and isinstance(value, dict) and value:
            items = ",\n".join(f"  {_ENCODE(k)}: {_ENCODE(value[k])}" for k in sorted(value))
            lines.append(f" {_ENCODE(key)}: {{\n{items}\n }}")
        else:
            lines.append(f" {_ENCODE(key)}: {_ENCODE(value)}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


def save(target: Target, root: str, m: Manifest, ready: Callable[[], bool] | None = None, *,
         at_once: bool = False) -> bool:
    """Rewrite SHA256SUMS and manifest.json atomically, SHA256SUMS named first; ``at_once``: both named at once where
    the target takes several requests at once (write_files: on a store far away each name is three round trips in
    a row), for a caller that recorded the save first (engine.begun.Begun.begin_save): one cut between the two
    names may leave SHA256SUMS out of step with manifest.json, and the next export saves again. The copy known()
    returns is forgotten
    first: a save that fails may have put manifest.json in place all the same (a move whose answer was lost), so
    after a failure the store's own is read again, never the one saved before. ``ready``: as write_files()'s (False:
    nothing saved, False returned; the caller changes ``m`` and saves it again)."""
    raw = encode(m.to_json())
    saved = target.manifests_saved
    if saved is not None:
        saved.add(root)         # (before the writes: a save that failed half-way may have changed the store too)
    _keep(target, root, None)
    if not write_files(target, [(f"{root}/{SUMS}", m.sums_text().encode("utf-8")), (f"{root}/{MANIFEST}", raw)],
                       ready, at_once=at_once):
        return False
    _keep(target, root, raw)
    return True


def in_step(m: Manifest, listed: EntryStat | None) -> bool:
    """SHA256SUMS as the folder's listing shows it (``listed``: its entry, None when missing) may be the one
    manifest.json ``m`` was saved with: there, a file, of the size of the lines ``m`` makes. Its size alone is
    looked at (no read): a file removed, or a line missing or added (a session's), is found; a hash changed in
    place is not (a save whose names were cut apart is known from the recorder's own record instead:
    Begun.save_cut). A manifest that records nothing needs none."""
    if not m.sessions:
        return True
    return listed is not None and listed.kind == "file" and listed.size == len(m.sums_text().encode("utf-8"))


def saved(target: Target, root: str) -> bool | None:
    """Whether this run saved (or tried to save) manifest.json in ``root``; None where the target keeps no record
    (``manifests_saved``: the push targets, which write the office index after the run)."""
    kept = target.manifests_saved
    return None if kept is None else root in kept


def entry(size: int, sha: str, renderer: str, version: str, template: str = "") -> dict[str, Any]:
    return {"size": size, "sha256": sha, "renderer": renderer, "version": version, "template": template,
            "exported_at": now_iso()}
