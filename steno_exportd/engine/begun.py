"""The <folder>.partial folders this recorder began on a target that keeps no marker in them (rclone's WebDAV).

The recorder's own record, in its state folder: what a later clean-up may remove as an interrupted build of its own,
told from someone's own 'Notes.partial' beside it without a request to the store (a marker file there is two more
uploads per session, each several round trips). Written (and synced) before the folder is made, and again when the
folder is moved into place or removed: a cut at any moment leaves a record of every .partial folder of ours. A record
lost with the state folder leaves a leftover in place (said in one line), never removes someone's folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

MAX_NAMES = 10_000               # a record read back holds no more (a push has a few sessions in flight at once)


class Begun:
    """The names (in the export root) of the .partial folders this recorder began on one target and root."""

    def __init__(self, state_dir: str, target: str, root: str) -> None:
        key = hashlib.sha256(f"{target}\0{root}".encode()).hexdigest()[:24]
        self.path = Path(state_dir) / "begun" / f"{key}.json" if state_dir else None
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self._warned = False
        self._saving = False            # a manifest save naming its files at once is under way (begin_save)
        self.save_cut = False           # the record said so when read: such a save was cut (or failed) before it
                                        # ended, which may have left SHA256SUMS out of step with manifest.json
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable, its .partial folders are left alone: %s", self.path, e)
            return
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, list):
            self._names = {n for n in names[:MAX_NAMES] if isinstance(n, str) and n and "/" not in n}
        self.save_cut = self._saving = isinstance(data, dict) and data.get("saving") is True

    def begin_save(self) -> bool:
        """A manifest save is about to name SHA256SUMS and manifest.json at once: recorded (synced) first, so that a
        cut before end_save() is known to the next run (save_cut), which saves again. False when it could not be
        recorded: the save names them one after the other then."""
        with self._lock:
            if self.path is None:
                return False
            self._saving = True
            return self._write()

    def end_save(self) -> None:
        """That save named both files (and a save cut before is made good)."""
        with self._lock:
            if self._saving:
                self._saving = False
                self._write()

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._names

    def add(self, name: str) -> None:
        """Recorded (synced) before the folder is made."""
        with self._lock:
            if name not in self._names:
                self._names.add(name)
                self._write()

    def discard(self, *names: str) -> None:
        """The folders moved into place or removed."""
        with self._lock:
            if self._names & set(names):
                self._names -= set(names)
                self._write()

    def keep_only(self, there: set[str]) -> None:
        """Forget the folders no longer on the target (a clean-up's listing)."""
        with self._lock:
            if self._names - there:
                self._names &= there
                self._write()

    def _write(self) -> bool:
        if self.path is None:
            return False
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps({"names": sorted(self._names),
                                         **({"saving": True} if self._saving else {})}).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return True
        except OSError as e:
            # not fatal: a folder whose record is lost is left alone by a later clean-up (said there). But the record
            # there is no longer true (it may name a folder moved into place since, which a person may then rename
            # to '<name>.partial'): removed, so that a later clean-up leaves every .partial alone rather than remove
            # theirs (removing works on a full disk)
            for stale in (tmp, self.path):
                with contextlib.suppress(OSError):
                    stale.unlink()
            log.log(logging.DEBUG if self._warned else logging.WARNING, "%s: not written (%s): removed; until it is "
                    "written again, .partial folders on that target are left alone", self.path, e)
            self._warned = True
            return False
