"""A recording swapped for a symlink, again and again, while a run (an export, a push) copies it: THREATS.md's
party who can write the recorder's data folder. A thread swaps the recordings between the real files and symlinks
to a secret of the daemon's own; a watcher holds every file that ever appears where the run writes."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import random
import threading
import time
from typing import Callable, Iterator

MARKER = b"STENO-SECRET-SHARE-LINK-STORE:"


class Swapper(threading.Thread):
    """Swaps every recording between the real file (a hard link: the same inode the library checked) and a
    symlink to ``secret``, each state for 0-2 ms, until stopped; the real files are back in place afterwards."""

    def __init__(self, paths: list[pathlib.Path], secret: pathlib.Path) -> None:
        super().__init__(name="test-swapper", daemon=True)
        self.paths, self.secret = paths, secret
        self.keep = {p: p.with_name(f".{p.name}.keep") for p in paths}
        for p, k in self.keep.items():
            os.link(p, k)
        self.stop = threading.Event()
        self.swaps = 0

    def _put(self, p: pathlib.Path, evil: bool) -> None:
        tmp = p.with_name(f".{p.name}.swap")
        if evil:
            os.symlink(self.secret, tmp)
        else:
            os.link(self.keep[p], tmp)
        os.replace(tmp, p)

    def run(self) -> None:
        rnd = random.Random(34)
        while not self.stop.is_set():
            for p in self.paths:
                self._put(p, True)
            self.swaps += 1
            time.sleep(rnd.uniform(0, 0.002))
            for p in self.paths:
                self._put(p, False)
            time.sleep(rnd.uniform(0, 0.002))

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(10)
        for p, k in self.keep.items():
            self._put(p, False)
            k.unlink()


def race_going(start: float, flips: list[int], ends: list, most: int = 40) -> bool:
    """Whether a race of jobs against a thread that flips their folder (``flips[0]``: flips made) asks for another
    job: for 6 s from ``start``, then on a loaded machine (4 jobs and 27 flips in those 6 s once, beside two busy
    processes) until 5 jobs have ended (``ends``) and the folder flipped over 20 times, up to 90 s; ``most`` jobs
    at most. The tests assert those counts: what a race needs to have happened to prove anything."""
    now = time.monotonic() - start
    return len(ends) < most and now < 90 and (now < 6 or len(ends) < 5 or flips[0] <= 20)


class StoreWatch(threading.Thread):
    """Opens every file that appears under the store's folder as soon as it is seen and keeps it open, so what
    was written into it can be read afterwards even when the push removed it (a temp file, a rejected copy)."""

    def __init__(self, root: pathlib.Path) -> None:
        super().__init__(name="test-store-watch", daemon=True)
        self.root = root
        self.held: dict[int, tuple[str, int]] = {}     # inode -> (path when first seen, descriptor)
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.lstat(path)
                        if st.st_ino not in self.held:
                            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                            with self.lock:
                                self.held[st.st_ino] = (path, fd)
                    except OSError:
                        pass                # gone meanwhile
            time.sleep(0.0005)

    def leaked(self) -> list[str]:
        """The files seen on the store that hold the secret's bytes (read now, to their end)."""
        out = []
        with self.lock:
            held = list(self.held.values())
        for path, fd in held:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            if MARKER in data:
                out.append(f"{os.path.relpath(path, self.root)} ({len(data)} bytes)")
        return out

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(10)
        for _path, fd in self.held.values():
            os.close(fd)
        self.held.clear()


@contextlib.contextmanager
def swapping(recordings: list[pathlib.Path], secret: pathlib.Path, store: pathlib.Path
             ) -> Iterator[tuple[StoreWatch, Swapper]]:
    """A Swapper at work on ``recordings`` and a StoreWatch on ``store`` during the body; afterwards the recordings
    are back and the watch has stopped looking (the files it holds are read by the caller, who closes it)."""
    watch = StoreWatch(store)
    swapper = Swapper(recordings, secret)
    watch.start()
    swapper.start()
    try:
        yield watch, swapper
    except BaseException:
        watch.close()
        raise
    finally:
        swapper.close()
        watch.stop.set()
        watch.join(10)


@dataclasses.dataclass(frozen=True)
class SwapRuns:
    """What ``runs_while_swapping`` saw: runs made, swaps made, files seen where the runs wrote, and those of them
    that hold the secret's bytes."""
    runs: int
    swaps: int
    seen: int
    leaked: list[str]


def runs_while_swapping(recordings: list[pathlib.Path], secret: pathlib.Path, store: pathlib.Path,
                        run: Callable[[int, Swapper], object], most: int, budget: float) -> SwapRuns:
    """``run(i, swapper)`` for i = 0, 1, ... while ``swapping``: at most ``most`` runs within ``budget`` seconds,
    stopping early once the secret shows on the store."""
    runs = 0
    with swapping(recordings, secret, store) as (watch, swapper):
        start = time.monotonic()
        while runs < most and time.monotonic() - start < budget:
            run(runs, swapper)
            runs += 1
            if watch.leaked():
                break
    try:
        return SwapRuns(runs, swapper.swaps, len(watch.held), watch.leaked())
    finally:
        watch.close()
