"""Check a target folder, a .zip or a .tar.gz against its SHA256SUMS and manifest: missing, changed, extra files.

Archives are read, never extracted: each member under the root folder is hashed as it streams by,
so a hostile archive (paths with '..', links, devices) can only be reported, never written out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile
import zipfile
from typing import Any, Callable, Iterator

from steno_exportd.engine import manifest as mf
from steno_exportd.engine import writer
from steno_exportd.engine.naming import ROOT_FALLBACK
from steno_exportd.engine.registry import ArchiveKind, local
from steno_exportd.engine.targets import TEMP_PREFIX, DirectoryTarget, Target, unfinished
from steno_exportd.errors import TargetError

_CHUNK = 1 << 20


@dataclasses.dataclass
class VerifyReport:
    ok_count: int = 0
    changed: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    incomplete: list[str] = dataclasses.field(default_factory=list)   # session folders an export left unfinished
    notes: list[str] = dataclasses.field(default_factory=list)        # said, but not wrong with the target's files
    busy: str = ""          # an export wrote to the folder while it was checked: why what did not match is not judged
    root: str = ""          # the root folder checked (export.root_folder)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.problems or self.incomplete or self.busy)

    def to_json(self) -> dict:
        return dict(ok=self.ok, root=self.root, verified=self.ok_count, changed=self.changed, missing=self.missing,
                    extra=self.extra, problems=self.problems, incomplete=self.incomplete, notes=self.notes,
                    busy=self.busy)


# Who holds a folder. An export holds its root folder (flock, Target.held) for its whole run; a verify that records
# what it found holds the target folder above it first, then the root folder, for the moment of its save: so a root
# folder held while its target folder is free is held by an export, never by a verify.
EXPORTING = "an export is writing to this folder now; verify again once it has ended"
VERIFYING = ("another verify of this folder is recording what it found in the manifest now; verify again once it "
             "has ended")
BEING_WRITTEN = ("the folder is being written: {when}, and files that did not match its manifest ({what}) may be "
                 "ones it is writing; they are not judged: verify again once it has ended")
_DISAGREE = ": SHA256SUMS and manifest disagree"       # (read a moment apart, an export's save between them)
# how long a verify that records waits for another verify of the folder to let go of it: that one holds it for its
# save (milliseconds; a stick's fsync, a second at worst) or for its look at who holds it (a moment). Given up at
# once, two verifies at once made each other's saves fail: 19 of 20 pairs had one say it recorded nothing
VERIFY_WAIT = 10.0


def _holder(t: Target, root: str) -> str:
    """Who holds ``root`` on ``t`` now: "" nobody, else what to say (EXPORTING, VERIFYING). Held a moment only."""
    with t.held("", wait=False) as free:
        if not free:
            return VERIFYING
        with t.held(root, wait=False) as alone:
            return "" if alone else EXPORTING


def _manifest_bytes(t: Target, root: str) -> bytes | None:
    """manifest.json as it is now (None: not there or unreadable): compared before and after the read-back."""
    try:
        raw = mf.read_small(t, f"{root}/{mf.MANIFEST}")
    except TargetError:
        return None
    return None if raw is None else bytes(raw)


def _expected(sums: dict[str, str], manifest_files: dict[str, dict], rep: VerifyReport) -> dict[str, str]:
    """rel path -> sha256 from SHA256SUMS and the manifest (which must agree)."""
    expected = dict(sums)
    for rel, f in manifest_files.items():
        if rel in expected and f.get("sha256") and expected[rel] != f["sha256"]:
            rep.problems.append(f"{rel}: SHA256SUMS and manifest disagree")
        expected.setdefault(rel, f.get("sha256", ""))
    return expected


def _compare(expected: dict[str, str], actual: Callable[[str], str | None], listing: dict[str, list[str]],
             rep: VerifyReport) -> set[str]:
    """Fill rep from actual(rel) (sha256, '' for a non-file, None when absent); return the changed paths."""
    bad: set[str] = set()
    for rel in sorted(expected):
        sha = actual(rel)
        if sha is None:
            rep.missing.append(rel)
        elif sha != expected[rel]:
            rep.changed.append(rel)
            bad.add(rel)
        else:
            rep.ok_count += 1
    for folder in sorted({rel.split("/", 1)[0] for rel in expected}):
        for name in listing.get(folder, []):
            if f"{folder}/{name}" not in expected:
                rep.extra.append(f"{folder}/{name}")
    return bad


def _incomplete(t: Target, root: str, m: Any) -> list[str]:
    """Session folders an interrupted export left (cancel, yank, power cut, full): targets.unfinished() (a
    <folder>.partial or a folder built in place; someone's own 'Notes.partial' is not ours), or one the manifest
    says is incomplete."""
    out = []
    finishing = {s["folder"] for s in m.sessions.values() if s.get("finishing")}
    for name in sorted(t.listdir(root)):
        st = t.lstat(f"{root}/{name}")
        if st is None or st.kind != "dir":
            continue
        try:
            names = t.listdir(f"{root}/{name}")
        except TargetError:
            continue                # not ours to read (someone's own folder)
        if unfinished(name, names, lambda n: n.startswith(TEMP_PREFIX), finishing):
            out.append(name)
    out += sorted(s["folder"] for s in m.sessions.values() if s.get("incomplete") and s["folder"] not in out)
    return out


def verify_target(path: str | Target, root: str = ROOT_FALLBACK, mark: bool = False) -> VerifyReport:
    """Hash every file SHA256SUMS and the manifest name (paths relative to root); archives too."""
    if isinstance(path, str):
        kind = local().kind_for(path)        # InvalidArgument for what is no local target (smb:...)
        if isinstance(kind, ArchiveKind) and os.path.isfile(path):
            return verify_archive(path, root, kind.fmt)
    if isinstance(path, str):
        if os.path.basename(os.path.normpath(path)) == root and not os.path.isdir(os.path.join(path, root)):
            path = os.path.dirname(os.path.normpath(path)) or "."
        t: Target = DirectoryTarget(path)
    else:
        t = path
    rep = VerifyReport(root=root)
    st = t.lstat(root)
    if st is None or st.kind != "dir":
        raise TargetError(f"no {root}/ folder on {t.name}")
    # an export writing there (its lock held) replaces files before its manifest records them and builds folders
    # the manifest does not list yet: read back then, they looked changed, missing or incomplete
    exporting = _holder(t, root) == EXPORTING
    before = _manifest_bytes(t, root)
    try:
        sums = mf.read_sums(t, root)
    except TargetError as e:
        sums = {}
        rep.problems.append(f"{mf.SUMS}: {e}")
    m = mf.load(t, root)
    if m.rebuilt:
        rep.problems.append(f"{mf.MANIFEST} missing or unusable")
    expected = _expected(sums, m.owned_paths(), rep)

    buffers = writer.Buffers()              # one set for every file (a fresh one zeroes 4 MiB even for a small file)
    read: dict[str, tuple[int, str]] = {}   # rel -> (size, sha256) as read back

    def actual(rel: str) -> str | None:
        st = t.lstat(f"{root}/{rel}")
        if st is None:
            return None
        if st.kind != "file":
            return ""
        read[rel] = writer.read_back(t, f"{root}/{rel}", buffers=buffers)
        return read[rel][1]

    listing: dict[str, list[str]] = {}
    for folder in {rel.split("/", 1)[0] for rel in expected}:
        st = t.lstat(f"{root}/{folder}")
        if st is not None and st.kind == "dir":
            listing[folder] = list(t.listdir(f"{root}/{folder}"))
    bad = _compare(expected, actual, listing, rep)
    rep.incomplete = _incomplete(t, root, m)
    # an export that began meanwhile holds the folder now, or (begun and ended meanwhile) left a manifest saved anew
    if exporting or _holder(t, root) == EXPORTING:
        _being_written(rep, "an export is writing to it now (it holds the folder's lock while it runs)")
        bad = set()
    elif _manifest_bytes(t, root) != before:
        _being_written(rep, "its manifest was saved anew while it was being checked (by an export, or by another "
                            "verify recording what it found)")
        bad = set()
    if mark and not m.rebuilt:
        _mark(t, root, m, read, bad, rep)
    return rep


def _being_written(rep: VerifyReport, when: str) -> None:
    """An export wrote to the folder while it was checked: what did not match is said as that (rep.busy), not as
    damage (never flagged "bad" in the manifest either); files that matched still count as verified."""
    disagree = [p for p in rep.problems if p.endswith(_DISAGREE)]
    what = [f"{len(x)} {n}" for x, n in ((rep.changed, "changed"), (rep.missing, "missing"),
                                          (rep.incomplete, "session folder(s) incomplete"),
                                          (disagree, "listed differently in SHA256SUMS")) if x]
    if not what:
        return
    rep.busy = BEING_WRITTEN.format(when=when, what=", ".join(what))
    rep.changed, rep.missing, rep.incomplete = [], [], []
    rep.problems = [p for p in rep.problems if not p.endswith(_DISAGREE)]


def _mark(t: Target, root: str, m: mf.Manifest, read: dict[str, tuple[int, str]], bad: set[str],
          rep: VerifyReport) -> None:
    """Record in the manifest what the read-back found: a changed file is flagged "bad" (the next export copies it
    again); a file read back whole and matching its entry loses the "unverified" mark a job without verify gave it
    (else the next verifying export sent it again whole, as never checked). Saved as the engine saves it (mf.save:
    SHA256SUMS, then manifest.json, each written under a temp name and renamed), and only when something changed.
    The manifest is read again first, with the folder held (Target.held) against an export, which rewrites the
    manifest whole too: an export running now is not waited for (said: nothing recorded), another verify recording
    or looking is, up to VERIFY_WAIT (then said: nothing recorded), one that saved while
    the files were read back keeps what it recorded, and an entry it wrote anew meanwhile (any field changed, its
    time of writing at least) is left as it wrote it: a file written again without verify after its read-back
    was not read back."""
    checked = {rel: dict(f) for rel, f in m.owned_paths().items()}

    def good(rel: str, f: dict) -> bool:
        size, sha = read.get(rel, (None, None))
        return rel not in bad and sha is not None and sha == f.get("sha256") and size == f.get("size")
    if not bad and not any(f.get("unverified") and good(rel, f) for rel, f in m.owned_paths().items()):
        return
    try:
        # (as _holder: another verify's hold of the target folder waited for a while, an export's of the root never)
        with t.held("", wait=VERIFY_WAIT) as free, t.held(root, wait=False) as alone:
            if not free:
                raise TargetError(VERIFYING)
            if not alone:
                raise TargetError(EXPORTING)
            try:
                now = mf.read(t, root)          # (never rebuilt: that read every file again)
            except (ValueError, TypeError, UnicodeDecodeError) as e:
                raise TargetError(f"{mf.MANIFEST} changed meanwhile and is unusable now ({e})") from None
            changed = False
            for rel, f in now.owned_paths().items():
                if rel not in checked or f != checked[rel]:
                    continue                    # not what was read back against (written anew since)
                if rel in bad and not f.get("bad"):
                    f["bad"] = changed = True
                elif f.get("unverified") and good(rel, f):
                    del f["unverified"]
                    changed = True
            if changed:
                mf.save(t, root, now)
    except TargetError as e:
        if bad:
            rep.problems.append(f"could not flag changed files in the manifest: {e}")
        else:
            rep.notes.append(f"could not record in the manifest that the files were verified ({e}): the next "
                             f"export that verifies sends again those a job without verify wrote")


def _members(path: str, fmt: str) -> Iterator[tuple[str, bool, Callable[[], Iterator[bytes]]]]:
    """(name, is a regular file, chunks) of each member of a "zip" or "tar.gz" archive, in archive order."""
    if fmt == "zip":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                def chunks(info=info) -> Iterator[bytes]:
                    with z.open(info) as f:
                        while b := f.read(_CHUNK):
                            yield b
                mode = (info.external_attr >> 16) & 0o170000
                yield info.filename, not info.is_dir() and mode in (0, 0o100000), chunks
        return
    with tarfile.open(path, "r:*") as t:
        for m in t:
            def chunks(m=m) -> Iterator[bytes]:
                f = t.extractfile(m)
                while f is not None and (b := f.read(_CHUNK)):
                    yield b
            yield m.name, m.isfile(), chunks


def verify_archive(path: str, root: str = ROOT_FALLBACK, fmt: str = "zip") -> VerifyReport:
    """verify_target for a .zip or .tar.gz: the SHA256SUMS and manifest inside, every member hashed."""
    rep = VerifyReport(root=root)
    hashes: dict[str, str] = {}          # rel path under root -> sha256 ('' for a non-file)
    listing: dict[str, list[str]] = {}
    sums_raw = manifest_raw = None
    too_large: set[str] = set()         # SHA256SUMS, manifest.json: there, but past what a recorder writes
    prefix = f"{root}/"
    try:
        for name, regular, chunks in _members(path, fmt):
            parts = name.rstrip("/").split("/")
            if name.startswith("/") or ".." in parts or "" in parts[:-1] or "\\" in name:
                rep.problems.append(f"unsafe member name {name[:200]!r}")
                continue
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix):].rstrip("/")
            if not rel:
                continue
            if rel in (mf.SUMS, mf.MANIFEST) and regular:
                try:
                    data = bytes(mf.read_capped(chunks(), rel))
                except TargetError as e:
                    rep.problems.append(str(e))
                    too_large.add(rel)
                    continue
                sums_raw, manifest_raw = (data, manifest_raw) if rel == mf.SUMS else (sums_raw, data)
                continue
            if not regular:
                if "/" not in rel and name.endswith("/"):
                    continue                         # a session folder entry
                rep.problems.append(f"{rel}: not a regular file in the archive")
                hashes[rel] = ""
                continue
            h = hashlib.sha256()
            for b in chunks():
                h.update(b)
            hashes[rel] = h.hexdigest()
            folder, _, fname = rel.partition("/")
            if fname:
                listing.setdefault(folder, []).append(fname)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, RuntimeError) as e:
        raise TargetError(f"cannot read archive {path}: {e}") from e
    if sums_raw is None and manifest_raw is None and not hashes and not too_large:
        raise TargetError(f"no {root}/ folder in {path}")
    try:
        sums = mf.parse_sums(sums_raw.decode("utf-8", "replace")) if sums_raw is not None else {}
    except ValueError as e:
        sums = {}
        rep.problems.append(str(e))
    if sums_raw is None and mf.SUMS not in too_large:
        rep.problems.append(f"{mf.SUMS} missing")
    files: dict[str, dict] = {}
    try:
        files = mf.parse(manifest_raw or b"").owned_paths()
    except (ValueError, KeyError, TypeError, AttributeError):
        if mf.MANIFEST not in too_large:
            rep.problems.append(f"{mf.MANIFEST} missing or unusable")
    expected = _expected(sums, files, rep)
    _compare(expected, hashes.get, listing, rep)
    return rep
