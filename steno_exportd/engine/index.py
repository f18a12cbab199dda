"""The office-wide index on a shared store: ``_index/<recorder folder>.json``, one file per recorder.

A person browsing the NAS finds a meeting without knowing which recorder recorded it. Each recorder
writes only its own file (temp name, then a rename over its own old file), so any number of
recorders update the index at once without a shared file rewritten or a lock.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
from typing import Any

from steno_exportd import safeparse
from steno_exportd.engine import manifest as mf
from steno_exportd.engine.identity import host_name
from steno_exportd.engine.targets import Target
from steno_exportd.errors import TargetError

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
FORMAT = "steno-exportd-index"


def index_path(root: str) -> str:
    """Where the recorder whose folder is ``root`` lists its meetings."""
    return f"{INDEX_DIR}/{root}.json"


def build(m: mf.Manifest, root: str, short_id: str, held: set[str] | None = None) -> bytes:
    """The index file of a recorder (its folder, and each meeting exported there: title, folder, files).
    ``held``: the names in the recorder's folder now; a meeting whose folder is not among them is not listed (its
    folder removed from the store: the manifest still records it, and a session deleted on the recorder too is
    never sent again, so it was listed for ever)."""
    meetings = []
    for uuid in sorted(m.exported(), key=lambda u: (m.sessions[u].get("folder", ""), u)):
        s = m.sessions[uuid]
        if held is not None and s["folder"] not in held:
            continue
        meetings.append({"uuid": uuid, "title": s.get("title", ""), "folder": f"{root}/{s['folder']}",
                         "updated_at": s.get("updated_at", ""), "exported_at": s.get("exported_at", ""),
                         "files": sorted(s.get("files", {}))})
    body = {"format": FORMAT, "version": 1, "recorder": root, "host": host_name(), "id": short_id,
            "updated": mf.now_iso(), "meetings": meetings}
    return json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")


@dataclasses.dataclass
class Ahead:
    """An index file uploaded under its temp name before the push's end (upload_ahead): named by write() when it is
    what write() would write, else removed."""

    body: bytes
    handle: Any         # the target's write handle, synced, not committed


def upload_ahead(t: Target, root: str, short_id: str, names: set[str]) -> Ahead | None:
    """This recorder's index file as it will read once the recorder's folder holds ``names`` (the push's last
    folders moved into place), uploaded under a temp name meanwhile (its upload is several round trips of a distant
    store: the push's end waited for them after its folder moves); not named (write() names it). None when the
    manifest this push saved is not known (or the index not written: logged, write() tries again)."""
    try:
        m = mf.known(t, root)
        if m is None:
            return None
        body = build(m, root, short_id, names)
        t.mkdir(INDEX_DIR)
        h = t.open_write(index_path(root))
    except (ValueError, TargetError) as e:
        log.debug("%s: office index %s not sent ahead: %s", t.name, index_path(root), e)
        return None
    try:
        h.write(body)
        h.sync()
    except BaseException as e:
        h.abort()
        if isinstance(e, (ValueError, TargetError)):
            log.debug("%s: office index %s not sent ahead: %s", t.name, index_path(root), e)
            return None
        raise
    return Ahead(body, h)


def _ahead(t: Target, root: str, ahead: concurrent.futures.Future | None, body: bytes) -> bool:
    """Name the index file uploaded ahead when it holds ``body`` (but when it was written): True when named; one that
    does not is removed."""
    try:
        pre = ahead.result() if ahead is not None else None
    except Exception as e:      # (whatever stopped it: the index is written here as before)
        log.debug("%s: office index %s sent ahead failed: %s", t.name, index_path(root), e)
        pre = None
    if pre is None:
        return False
    if _content(pre.body) == _content(body):
        pre.handle.commit()
        return True
    _drop(ahead)
    return False


def write(t: Target, root: str, short_id: str, ahead: concurrent.futures.Future | None = None) -> None:
    """Rewrite this recorder's index file from its manifest on ``t`` (the meetings whose folders are there); one that
    could not be written is logged (the push itself landed and is verified; the next one retries). ``ahead``: an
    upload_ahead() of it (its Ahead, or None), named when it holds what would be written.

    After a push that saved no manifest (it found nothing new) the file is left as it is when it already lists
    what would be written ("updated" aside: when its content last changed): rewritten at every push, it was a new
    version on a store that keeps versions and a change for every sync client, and eight requests in a row on
    WebDAV (reading it is three). One that is gone, unreadable or stale is written again."""
    tried = False               # (one sent ahead is named or removed: never left for the next push to remove)
    try:
        m = mf.known(t, root)       # as this push read or saved it last: not read again
        if m is None:
            m = mf.read(t, root)
        held = _held(t, root)
        body = build(m, root, short_id, held)
        if mf.saved(t, root) is False and _listed(t, root) == _content(body):
            return
        tried = True
        if _ahead(t, root, ahead, body):
            return
        t.mkdir(INDEX_DIR)
        mf.write_atomic(t, index_path(root), body)
    except (ValueError, TargetError) as e:
        log.warning("%s: office index %s not written: %s", t.name, index_path(root), e)
    finally:
        if not tried:
            _drop(ahead)


def _drop(ahead: concurrent.futures.Future | None) -> None:
    """Remove an index file sent ahead and not named (its temp file)."""
    try:
        pre = ahead.result() if ahead is not None else None
        if pre is not None:
            pre.handle.abort()
    except Exception as e:      # (its removal is the next push's, as for any temp file of this host)
        log.debug("office index sent ahead not removed: %s", e)


def _held(t: Target, root: str) -> set[str]:
    """The names in the recorder's folder on ``t`` now: as the push's target knows them without asking the store
    (Target.known_names: the listing the push read at its start, kept current by its own changes), else listed (one
    request)."""
    names = t.known_names(root)
    return set(t.scandir(root)) if names is None else names


def _content(raw: bytes | bytearray) -> dict | None:
    """An index file's content, but when it was written; None when it is not one of ours."""
    try:
        data = safeparse.json_loads(raw, max_values=mf.MAX_VALUES)     # (a store's file: bounded)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    data.pop("updated", None)
    return data


def _listed(t: Target, root: str) -> dict | None:
    """The content of this recorder's index file on ``t`` now (_content); None when there is none or it is not
    readable (then written again)."""
    try:
        raw = mf.read_small(t, index_path(root))
        return None if raw is None else _content(raw)
    except (TargetError, OSError, ValueError):
        return None
