"""Streaming ZIP (ZIP64, audio stored, text deflated) and tar.gz with the target layout.

``zip_stream(plan)`` yields the archive as large byte chunks without temp files (the web
page streams it); ``zip_size(plan)`` is its exact length, known before the first byte, so
HTTP can send Content-Length. SHA256SUMS and manifest.json are computed while streaming:
their lengths are fixed ahead (hex digests have a fixed width), their bytes come at the end.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import struct
import tarfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from isal.isal_zlib import crc32

from steno_exportd import __version__
from steno_exportd.engine import manifest as mf
from steno_exportd.engine import writer
from steno_exportd.engine.identity import host_name
from steno_exportd.errors import CancelledJob, SessionReplaced, SourceError
from steno_exportd.recordings import SourceChanged, SourceRef

log = logging.getLogger(__name__)

CHUNK = 4 << 20
HASH_CHUNK = 1 << 20        # read buffer of one hashing thread (reused)
Z64 = 0xFFFFFFFF


@dataclasses.dataclass
class ArchiveEntry:
    """One file of the archive: a source path (stored) or bytes (deflated when compress)."""

    name: str                       # path inside the archive, '/'-separated
    path: Path | None = None
    source: SourceRef | None = None  # the file as checked (opened without following symlinks); from path if None
    data: bytes | None = None
    compress: bool = False
    mtime: float = 0.0
    session_uuid: str = ""          # for the manifest
    fmt: str = ""
    version: str = ""
    # filled by zip_plan
    size: int = 0
    csize: int = 0
    crc: int = 0
    payload: bytes | None = None    # compressed (or stored) bytes for data entries
    known: bool = False             # a file entry whose crc and sha256 are known before streaming
    sha256: str = ""
    trailer: Callable[[], bytes] | None = None
    session_id: int = 0             # whose file it is (named when it changes while being sent)
    opened: Any = None              # the checked file, held open since planning (build_plan(keep_open=True))


@dataclasses.dataclass
class ZipPlan:
    entries: list[ArchiveEntry]
    root: str = "SilentSteno"
    sessions: dict[str, dict] = dataclasses.field(default_factory=dict)   # uuid -> {folder, title, updated_at}
    # what build_plan found, by session id: what is not in the archive (errors), the recorder's own lack (a
    # recording missing there: warnings, exported without it as a folder export does), a meeting replaced under
    # its id and left out (replaced: why; only with leave_replaced), and the (uuid, title) of each meeting read
    # (what a job's results name: not read again, a restore since would name the other meeting)
    errors: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    warnings: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    replaced: dict[int, str] = dataclasses.field(default_factory=dict)
    read: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def close(self) -> None:
        """Close the recordings a plan holds open (build_plan(keep_open=True)); safe to call twice."""
        for e in self.entries:
            if e.opened is not None:
                e.opened.close()


def _dos(t: float) -> tuple[int, int]:
    lt = time.localtime(t or time.time())
    y = max(1980, lt.tm_year)
    return ((lt.tm_hour << 11) | (lt.tm_min << 5) | (lt.tm_sec // 2),
            ((y - 1980) << 9) | (lt.tm_mon << 5) | lt.tm_mday)


def make_plan(entries: list[ArchiveEntry], root: str = "SilentSteno", sessions: dict | None = None,
              with_sums: bool = True) -> ZipPlan:
    """Compress data entries now (small text), stat file entries, append SHA256SUMS and manifest.json."""
    plan = ZipPlan(list(entries), root, dict(sessions or {}))
    for e in plan.entries:
        _prepare(e)
    if with_sums:
        files = [e for e in plan.entries]
        exported_at = mf.now_iso()

        def sums() -> bytes:
            return "".join(f"{e.sha256 or '0' * 64}  {e.name[len(root) + 1:]}\n" for e in files).encode()

        def manifest() -> bytes:
            out: dict[str, dict] = {}
            for e in files:
                if not e.session_uuid:
                    continue
                info = plan.sessions.get(e.session_uuid, {})
                folder, _, fname = e.name[len(root) + 1:].partition("/")
                s = out.setdefault(e.session_uuid, {"folder": folder, "title": info.get("title", ""),
                                                    "id": info.get("id", 0),
                                                    "updated_at": info.get("updated_at", ""),
                                                    "exported_at": exported_at, "files": {}})
                s["files"][fname] = {"size": e.size, "sha256": e.sha256 or "0" * 64, "renderer": e.fmt,
                                     "version": e.version, "template": "", "exported_at": exported_at}
            doc = {"format": mf.FORMAT, "version": mf.VERSION, "generator": f"steno-exportd {__version__}",
                   "host": host_name(), "updated": exported_at, "sessions": out}
            return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode()

        for name, fn in ((f"{root}/{mf.SUMS}", sums), (f"{root}/{mf.MANIFEST}", manifest)):
            e = ArchiveEntry(name, trailer=fn)
            e.size = e.csize = len(fn())       # fixed length: digests are fixed-width
            plan.entries.append(e)
    return plan


def _prepare(e: ArchiveEntry) -> None:
    if e.data is not None:
        e.size = len(e.data)
        e.crc = zlib.crc32(e.data)
        e.sha256 = hashlib.sha256(e.data).hexdigest()
        if e.compress:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            e.payload = c.compress(e.data) + c.flush()
        else:
            e.payload = e.data
        e.csize = len(e.payload)
    elif e.path is not None:
        if e.source is None:            # a file of the caller's own: pinned to what opens now, in its own folder
            ref = SourceRef(Path(e.path), Path(e.path).parent)
            with ref.open() as f:
                e.source = _checked(ref, f.st)
        e.size = e.csize = e.source.size
        e.mtime = e.mtime or e.source.mtime_ns / 1e9


def _deferred(e: ArchiveEntry) -> bool:
    """CRC unknown until streamed: data descriptor follows the data."""
    return e.payload is None and not e.known


def _local_header(e: ArchiveEntry) -> bytes:
    name = e.name.encode("utf-8")
    z64 = e.size >= Z64 or e.csize >= Z64
    flags = 0x0800 | (0x0008 if _deferred(e) else 0)
    method = 8 if (e.payload is not None and e.compress) else 0
    t, d = _dos(e.mtime)
    crc = 0 if _deferred(e) else e.crc
    extra = struct.pack("<HHQQ", 1, 16, e.size, e.csize) if z64 else b""
    sz = (Z64, Z64) if z64 else ((0, 0) if _deferred(e) else (e.csize, e.size))
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if z64 else 20, flags, method, t, d, crc,
                       sz[0], sz[1], len(name), len(extra)) + name + extra


def _descriptor(e: ArchiveEntry) -> bytes:
    if not _deferred(e):
        return b""
    if e.size >= Z64 or e.csize >= Z64:
        return struct.pack("<IIQQ", 0x08074B50, e.crc, e.csize, e.size)
    return struct.pack("<IIII", 0x08074B50, e.crc, e.csize, e.size)


def _central(e: ArchiveEntry, offset: int) -> bytes:
    name = e.name.encode("utf-8")
    fields = []
    usize, csize, off = e.size, e.csize, offset
    if e.size >= Z64 or e.csize >= Z64:
        fields += [e.size, e.csize]
        usize = csize = Z64
    if offset >= Z64:
        fields.append(offset)
        off = Z64
    extra = struct.pack("<HH", 1, 8 * len(fields)) + b"".join(struct.pack("<Q", f) for f in fields) \
        if fields else b""
    flags = 0x0800 | (0x0008 if _deferred(e) else 0)
    method = 8 if (e.payload is not None and e.compress) else 0
    t, d = _dos(e.mtime)
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 45, 45 if fields else 20, flags, method, t, d,
                       e.crc, csize, usize, len(name), len(extra), 0, 0, 0, 0o100644 << 16, off) + name + extra


def _end(n: int, cd_size: int, cd_offset: int) -> bytes:
    out = b""
    if n >= 0xFFFF or cd_size >= Z64 or cd_offset >= Z64:
        z64_off = cd_offset + cd_size
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, z64_off, 1)
        return out + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, Z64, Z64, 0)
    return out + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0)


def zip_size(plan: ZipPlan) -> int:
    """The exact length zip_stream(plan) yields."""
    off = 0
    offsets = []
    for e in plan.entries:
        offsets.append(off)
        off += len(_local_header(e)) + e.csize + len(_descriptor(e))
    cd = sum(len(_central(e, o)) for e, o in zip(plan.entries, offsets))
    return off + cd + len(_end(len(plan.entries), cd, off))


def _checked(ref: SourceRef, st: os.stat_result) -> SourceRef:
    """ref pinned to the file that was opened: its identity, size and mtime must still match when it is read."""
    return dataclasses.replace(ref, dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)


@dataclasses.dataclass(frozen=True)
class FileSpan:
    """Bytes of a file to send as they are (sendfile): a stored entry whose checksums are known.

    Send ``opened`` (held since the plan was made) or else ``source.open()``: SourceChanged when the file is no
    longer the one planned."""

    source: SourceRef
    size: int
    session_id: int = 0
    opened: Any = None              # the file as it was checked when planned (None: open source now)

    @property
    def path(self) -> Path:
        return self.source.path


def _read_all(f: Any, size: int, chunk: int) -> Iterator[bytes]:
    """Exactly size bytes of an open source, in chunks; SourceChanged when it shrank or changed meanwhile."""
    pos = 0
    while pos < size:
        b = f.pread(min(chunk, size - pos), pos)
        if not b:
            break
        pos += len(b)
        yield b
    if pos != size or _differs_now(f):
        raise SourceChanged(f"{f.ref.path.name} changed while being archived ({pos} of {size} bytes read)")


def _differs_now(f: Any) -> bool:
    st = os.fstat(f.fd)
    return (st.st_size, st.st_mtime_ns) != (f.st.st_size, f.st.st_mtime_ns)


def _checksums(f: Any, size: int, stop: threading.Event, chunk: int = HASH_CHUNK) -> tuple[int, str] | None:
    """CRC-32 and SHA-256 of exactly size bytes of an open source (pread: the caller's offset is untouched);
    None when stopped; SourceChanged when it shrank or changed meanwhile."""
    digest, crc, pos = hashlib.sha256(), 0, 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    while pos < size:
        if stop.is_set():
            return None
        n = os.preadv(f.fd, [view[:min(chunk, size - pos)]], pos)
        if n == 0:
            break
        writer.vector_state_clean()     # (the CRC-32 of the chunk before: writer.vector_state_clean)
        digest.update(view[:n])         # hashlib and isal drop the GIL: one file per thread, all cores busy
        crc = crc32(view[:n], crc)      # ISA-L's: ~15x zlib's here (zlib's was a third of the hashing time)
        pos += n
    if pos != size or _differs_now(f):
        raise SourceChanged(f"{f.ref.path.name} changed while being archived ({pos} of {size} bytes read)")
    return crc, digest.hexdigest()


# files hashed at once by every ZIP together: one per core (CPU and the 1 MiB buffers stay bounded however
# many ZIPs are made at once)
_HASHING = threading.BoundedSemaphore(os.cpu_count() or 1)


class _Hashers:
    """The recordings whose checksums are not known, hashed ahead by one thread per core (per ZIP, and at most
    that many in all: _HASHING) while the ZIP's other parts are sent; each then goes out by sendfile like a
    known one (its CRC in the data descriptor)."""

    def __init__(self, entries: list[ArchiveEntry]) -> None:
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, min(len(entries), os.cpu_count() or 1)),
                                                           thread_name_prefix="steno-zip-hash")
        self._futures = {id(e): self._pool.submit(self._hash, e) for e in entries}

    def _hash(self, e: ArchiveEntry) -> tuple[int, str] | None:
        while not _HASHING.acquire(timeout=0.1):
            if self._stop.is_set():
                return None
        try:
            if e.opened is not None:            # held since planning: sent from this same descriptor
                return _checksums(e.opened, e.size, self._stop)
            with e.source.open() as f:          # type: ignore[union-attr]  # pinned: reopened to be sent
                return _checksums(f, e.size, self._stop)
        finally:
            _HASHING.release()

    def result(self, e: ArchiveEntry) -> tuple[int, str]:
        """(crc, sha256) of an entry, waiting for its thread; SourceChanged as it was raised."""
        sums = self._futures[id(e)].result()
        if sums is None:
            raise SourceChanged(f"{e.source.path.name}: stopped")   # type: ignore[union-attr]
        return sums

    def close(self) -> None:
        """Stop this ZIP's hashing: queued files are dropped, running ones end at their next chunk."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)   # none still reads a file the caller will close


def zip_parts(plan: ZipPlan, chunk: int = CHUNK) -> Iterator[bytes | FileSpan]:
    """The ZIP as bytes and FileSpans; the files whose checksums are not known are hashed by one thread per
    core, from the first one on, and sent as FileSpans while they are hashed (their CRC in the data
    descriptor after the bytes: the next part waits for it)."""
    unknown = [e for e in plan.entries if e.path is not None and e.payload is None and e.trailer is None
               and not e.known]
    hashers = _Hashers(unknown) if unknown else None
    try:
        yield from _zip_parts(plan, chunk, hashers)
    finally:
        if hashers is not None:
            hashers.close()


def _zip_parts(plan: ZipPlan, chunk: int, hashers: _Hashers | None) -> Iterator[bytes | FileSpan]:
    off = 0
    offsets: list[int] = []
    buf = bytearray()
    for e in plan.entries:
        offsets.append(off)
        head = _local_header(e)
        buf += head
        off += len(head)
        if e.trailer is not None:
            e.payload = None
            data = e.trailer()
            e.crc = zlib.crc32(data)
            buf += data
        elif e.payload is not None:
            buf += e.payload
        elif e.known:
            if buf:
                yield bytes(buf)
                buf.clear()
            yield FileSpan(e.source, e.size, e.session_id, e.opened)  # type: ignore[arg-type]
        else:
            assert hashers is not None
            if buf:
                yield bytes(buf)
                buf.clear()
            # sent like a known one while its thread still hashes it (the same file: held open, or reopened and
            # compared): its CRC is needed only in the data descriptor after its bytes, so the send does not
            # wait for the hash (hashing it first left the socket idle for a whole file's hashing)
            yield FileSpan(e.source, e.size, e.session_id, e.opened)  # type: ignore[arg-type]
            try:
                e.crc, e.sha256 = hashers.result(e)
            except SourceChanged as err:
                raise SourceChanged(str(err), e.session_id) from None
        off += e.csize
        buf += _descriptor(e)
        off += len(_descriptor(e))
        if len(buf) >= chunk:
            yield bytes(buf)
            buf.clear()
    cd_start = off
    cd = b"".join(_central(e, o) for e, o in zip(plan.entries, offsets))
    buf += cd + _end(len(plan.entries), len(cd), cd_start)
    yield bytes(buf)


def zip_stream(plan: ZipPlan, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield the ZIP in chunks of about `chunk` bytes (FileSpans read here)."""
    for part in zip_parts(plan, chunk):
        if isinstance(part, FileSpan):
            if part.opened is not None:     # the plan's: closed with the plan (a thread may still hash it)
                yield from _read_all(part.opened, part.size, chunk)
            else:
                with part.source.open() as f:
                    yield from _read_all(f, part.size, chunk)
        else:
            yield part


def tar_gz_write(plan: ZipPlan, fileobj: Any, tick: Callable[[int], None] = lambda n: None) -> None:
    """Write the plan as a tar.gz (SHA256SUMS and manifest computed first pass, appended last); ``tick(n)`` as n
    bytes of the entries are taken in (the trailers' not counted: they are not in a plan's size, tar_size_in).

    Compressed by ISA-L (its gzip, level 2): ~10x zlib's level 6 on recordings (already compressed: deflate finds
    nothing in them), which made the CPU, not the stick, the limit of a tar.gz export."""
    import io

    from isal import igzip
    with igzip.IGzipFile(fileobj=fileobj, mode="wb", compresslevel=2) as gz, \
            tarfile.open(fileobj=gz, mode="w", copybufsize=CHUNK) as tar:
        for e in plan.entries:
            if e.trailer is not None or e.data is not None:
                data = e.trailer() if e.trailer is not None else e.data
                ti = tarfile.TarInfo(e.name)
                ti.size, ti.mode = len(data), 0o644
                ti.mtime = int(time.time() if e.trailer is not None else e.mtime or time.time())
                tar.addfile(ti, io.BytesIO(data))
                if e.trailer is None:
                    tick(len(data))
                continue
            digest = hashlib.sha256()

            def hashed(reads: Iterator[bytes], digest: Any = digest) -> Iterator[bytes]:
                for b in reads:                 # each chunk as read, whole: one SHA-256 call per 4 MiB
                    writer.vector_state_clean()     # (the CRC-32 of what was written before it, in this thread)
                    digest.update(b)
                    tick(len(b))
                    yield b

            ti = tarfile.TarInfo(e.name)
            ti.size, ti.mtime, ti.mode = e.size, int(e.mtime), 0o644
            with e.opened or e.source.open() as src:  # type: ignore[union-attr]
                reads = hashed(_read_all(src, e.size, CHUNK))
                tar.addfile(ti, _Chunks(reads))
                next(reads, None)       # past its last byte: SourceChanged if it changed while read (tarfile
                                        # stops asking at the size it was told)
            e.sha256 = digest.hexdigest()


def tar_size_in(plan: ZipPlan) -> int:
    """The bytes tar_gz_write takes in from a plan's entries (its ``tick``s): their own sizes, the trailers'
    (SHA256SUMS, manifest.json: made at the end) left out."""
    return sum(len(e.data) if e.data is not None else e.size for e in plan.entries if e.trailer is None)


class _Chunks:
    """A file-like read() over an iterator of byte chunks (for tarfile): each byte copied once (a read slices the
    chunk it is in; a chunk read whole is handed on as it is)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buf, self._pos = chunks, b"", 0

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n:
            if self._pos == len(self._buf):
                self._buf, self._pos = next(self._chunks, b""), 0
                if not self._buf:
                    break
            end = len(self._buf) if n < 0 else min(len(self._buf), self._pos + n)
            parts.append(self._buf if (self._pos, end) == (0, len(self._buf)) else
                         memoryview(self._buf)[self._pos:end])
            if n > 0:
                n -= end - self._pos
            self._pos = end
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)


def build_plan(library: Any, session_ids: tuple, formats: tuple, template: str, include_audio: bool, cfg: Any,
               reg: Any = None, hashes: Any = None, keep_open: bool = False,
               cancelled: Callable[[], bool] | None = None, uuids: tuple | None = None,
               leave_replaced: bool = False) -> ZipPlan:
    """Sessions x formats -> archive entries with the same layout as a folder export; what it found on the way in
    the plan's errors, warnings, replaced and read.

    Recordings are opened as the library checked them (no symlink followed, the same file) and pinned;
    keep_open holds them open until plan.close(), so the archive is read from exactly what was checked.
    ``cancelled`` stops a render. ``uuids`` (one per session id, None: read by its id alone): each read bound to
    that meeting (Library.get_session; SessionReplaced); ``leave_replaced``: a meeting replaced under its id is left
    out of the archive (a job's: the others go in) and named in plan.replaced, instead of SessionReplaced."""
    from steno_exportd.engine.naming import folder_name, format_label, resolve_collision, root_folder, safe_name
    from steno_exportd.engine.plan import plan_session, render_file, render_options

    root = root_folder(cfg)
    data_dir = cfg.recorder_data_dir
    options = render_options(cfg, template)
    entries: list[ArchiveEntry] = []
    sessions: dict[str, dict] = {}
    taken: set[str] = set()
    errors: dict[int, list[str]] = {}
    warnings: dict[int, list[str]] = {}
    replaced: dict[int, str] = {}
    read: dict[int, tuple[str, str]] = {}
    try:
        for seq, sid in enumerate(session_ids, 1):
            if cancelled is not None and cancelled():
                raise CancelledJob("cancelled")
            try:
                s = library.get_session(sid) if uuids is None or uuids[seq - 1] is None \
                    else library.get_session(sid, uuids[seq - 1])
            except SessionReplaced as e:
                if not leave_replaced:
                    raise
                replaced[sid] = str(e)
                continue
            read[sid] = (s.uuid, s.title)
            named = folder_name(s.summary, cfg.export.naming, cfg.export.folder_pattern, seq=seq,
                                fmt=format_label(formats, include_audio))
            folder = resolve_collision(safe_name(named, f"Session {s.id}", limit=240), taken)
            taken.add(folder)
            sessions[s.uuid] = {"id": s.id, "title": s.title,
                                "updated_at": s.updated_at.isoformat() if s.updated_at else ""}
            for pf in plan_session(s, formats, options, include_audio, reg):
                if pf.error:
                    found = warnings if pf.fmt == "audio" else errors     # (a missing recording: the recorder's)
                    found.setdefault(s.id, []).append(
                        f"recording missing on the recorder, exported without it ({pf.error})"
                        if pf.fmt == "audio" else pf.error)
                    continue
                name = f"{root}/{folder}/{pf.name}"
                if pf.source is not None:
                    try:
                        source, opened = _check_source(pf, s, data_dir, keep_open)
                    except SourceError as err:
                        errors.setdefault(s.id, []).append(f"{pf.name}: {err}")
                        continue
                    e = ArchiveEntry(name, path=pf.source, source=source, session_uuid=s.uuid, fmt=pf.fmt,
                                     version=pf.version, session_id=s.id, opened=opened)
                    known = hashes.get(pf.source, source) if hashes is not None else None
                    if known:
                        e.crc, e.sha256 = known
                        e.known = True
                    entries.append(e)
                else:
                    try:
                        data = render_file(pf, s, reg, cancelled)
                    except CancelledJob:
                        raise
                    except Exception as e:  # noqa: BLE001 - one file's problem is reported, others go on
                        errors.setdefault(s.id, []).append(f"{pf.name}: {e}")
                        continue
                    entries.append(ArchiveEntry(name, data=data, compress=True, session_uuid=s.uuid, fmt=pf.fmt,
                                                version=pf.version))
    except BaseException:
        for e in entries:               # what was opened so far is closed again
            if e.opened is not None:
                e.opened.close()
        raise
    plan = make_plan(entries, root, sessions)
    plan.errors, plan.warnings, plan.replaced, plan.read = errors, warnings, replaced, read
    return plan


def _check_source(pf: Any, s: Any, data_dir: Path, keep_open: bool) -> tuple[SourceRef, Any]:
    """Open a recording as the library checked it (no symlink followed, same file): its pinned reference,
    and the open file when keep_open (else it is closed again)."""
    from steno_exportd.engine.plan import source_ref
    ref = source_ref(pf, s, data_dir)
    f = ref.open()
    if not keep_open:
        f.close()
    return _checked(ref, f.st), f if keep_open else None


def export_archive(library: Any, spec: Any, cfg: Any, progress: Any, reg: Any = None, fmt: str = "zip") -> list:
    """Write a ZIP (fmt "zip") or a tar.gz file atomically (temp name, fsync, read-back, rename); results per
    session. The temp file is read back before its rename: an archive whose bytes the medium did not keep, or
    could not return (EIO), or whose read-back was cancelled, never gets its final name."""
    from isal.isal_zlib import crc32

    from steno_exportd.engine.export import bound_uuids
    from steno_exportd.engine.registry import checked_at
    from steno_exportd.engine.writer import read_back
    from steno_exportd.errors import TargetError, VerifyError
    from steno_exportd.engine.targets import DirectoryTarget
    from steno_exportd.events import SessionResult

    o = spec.options
    template = o.template or cfg.export.template
    include_audio = cfg.export.include_audio if o.include_audio is None else o.include_audio
    uuids = bound_uuids(spec)               # the meetings asked for: one replaced since is its session's failure
    plan = build_plan(library, spec.session_ids, spec.formats, template, include_audio, cfg, reg,
                      cancelled=lambda: bool(progress.cancelled), uuids=uuids, leave_replaced=True)
    path = Path(spec.target)
    t = DirectoryTarget(path.parent or ".")
    # the bar: the ZIP's own bytes as written (its size known ahead); a tar.gz's entries' bytes as taken in (what it
    # compresses to is not known ahead)
    total = zip_size(plan) if fmt == "zip" else tar_size_in(plan)
    progress.update(force=True, bytes_total=total, files_total=len(plan.entries), bytes_done=0)
    # checked again now, as it is (when the job was asked for, it may have been another folder: a symlink swapped in
    # since, a folder renamed, a stick remounted): pinned, so every open of it below is this folder or refused
    dir_fd = t.pin()
    try:
        checked_at(dir_fd, cfg, TargetError, trusted=spec.trusted)
    finally:
        os.close(dir_fd)
    h = t.open_write(path.name)
    done = 0
    crc = 0                 # of every byte written: what the read-back checks

    def write(b: Any) -> None:
        nonlocal crc, done
        h.write(b)
        crc = crc32(b, crc)
        done += len(b)
    try:
        if fmt == "zip":
            for b in zip_stream(plan):
                if progress.cancelled:
                    raise CancelledJob("cancelled")
                write(b)
                progress.update(bytes_done=done)
        else:
            class _W:
                def write(self, b):
                    if progress.cancelled:
                        raise CancelledJob("cancelled")
                    write(b)
                    return len(b)

                def flush(self):
                    pass
            taken = 0

            def tick(n: int) -> None:
                nonlocal taken
                taken += n
                progress.update(bytes_done=taken)
            tar_gz_write(plan, _W(), tick)
        h.sync()
        try:
            size, got = read_back(t, h.temp, check="crc32", cancelled=lambda: bool(progress.cancelled))
        except OSError as e:                        # a bad region of the stick, say (EIO)
            raise VerifyError(f"{path.name}: the read-back failed ({e.strerror or e}); the archive was removed "
                              f"(a faulty stick or disk?)") from e
        if (size, got) != (done, f"{crc:08x}"):     # the medium did not keep what was written: not left there
            raise VerifyError(f"{path.name}: read back {size} bytes crc32 {got}, wrote {done} bytes crc32 "
                              f"{crc:08x}; the archive was removed (a faulty stick or disk?)")
        h.commit()
    except BaseException:
        h.abort()
        raise
    results = []
    for sid, asked in zip(spec.session_ids, uuids):     # named as the plan read them (not read again: a restore
        if sid in plan.replaced:                        # since would name the other meeting)
            results.append(SessionResult(sid, asked or "", "", False, error=plan.replaced[sid]))
            continue
        uuid, title = plan.read[sid]
        errs = plan.errors.get(sid, [])
        results.append(SessionResult(sid, uuid, title, not errs, error="; ".join(errs),
                                     warnings=tuple(plan.warnings.get(sid, ()))))
    return results
