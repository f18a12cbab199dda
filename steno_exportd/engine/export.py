"""Run one export: preflight, write each session atomically, verify, record manifest and history."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from steno_exportd.config import Config
from steno_exportd.engine import manifest as mf
from steno_exportd.engine import targets, writer
from steno_exportd.engine.naming import folder_name, format_label, resolve_collision, safe_name
from steno_exportd.engine.plan import PlannedFile, plan_session, render_file, render_options
from steno_exportd.engine.targets import MARKER, PARTIAL_SUFFIX, TEMP_PREFIX, DirectoryTarget, Target
from steno_exportd.errors import CancelledJob, SourceError, StenoError, TargetError, TargetFullError, VerifyError
from steno_exportd.events import FileResult, SessionResult

log = logging.getLogger(__name__)



class _NullProgress:
    cancelled = False

    def update(self, force: bool = False, **fields: Any) -> None:
        pass


def _iso(t: Any) -> str:
    return t.isoformat() if t is not None else ""


def _recorder_dirs(cfg: Config) -> list[str]:
    dirs = [os.path.dirname(cfg.recorder.db_path)]
    if cfg.recorder.data_dir:
        dirs.append(cfg.recorder.data_dir)
    return [os.path.realpath(d) for d in dirs if d]


def problem_kind(e: BaseException) -> str:
    """What a target failure means to a person: "full", "pulled", "read-only", "permission" or ""."""
    if isinstance(e, TargetError):
        return e.kind
    if isinstance(e, OSError):
        return targets.os_error(e, "").kind
    return ""


def open_target(spec_target: Any, cfg: Config) -> Target:
    if not isinstance(spec_target, str):
        return spec_target
    real = os.path.realpath(spec_target)
    for d in _recorder_dirs(cfg):
        if real == d or real.startswith(d.rstrip("/") + "/"):
            raise TargetError(f"refusing to export into the recorder's data folder {d}")
    if not os.path.isdir(spec_target):
        raise TargetError(f"target folder does not exist: {spec_target}")
    return DirectoryTarget(spec_target)


def run_export(library: Any, spec: Any, cfg: Config, progress: Any = None, *, job_id: int = 0,
               state: Any = None, reg: Any = None) -> list[SessionResult]:
    """Export spec.session_ids; one SessionResult per session (skipped when already there and unchanged)."""
    if isinstance(spec.target, str) and spec.target.lower().endswith((".zip", ".tar.gz", ".tgz")):
        from steno_exportd.engine.archive import export_archive
        return export_archive(library, spec, cfg, progress or _NullProgress(), reg=reg)
    ex = Exporter(library, spec, cfg, progress or _NullProgress(), job_id, state, reg)
    try:
        return ex.run()
    finally:
        ex._verifier.shutdown(wait=True)


class Exporter:
    def __init__(self, library: Any, spec: Any, cfg: Config, progress: Any, job_id: int, state: Any,
                 reg: Any) -> None:
        self.lib, self.spec, self.cfg, self.p = library, spec, cfg, progress
        self.job_id, self.state, self.reg = job_id, state, reg
        o, e = spec.options, cfg.export
        self.verify = e.verify if o.verify is None else o.verify
        self.include_audio = e.include_audio if o.include_audio is None else o.include_audio
        self.overwrite_foreign = e.overwrite_foreign if o.overwrite_foreign is None else o.overwrite_foreign
        self.cont = e.continue_on_error if o.continue_on_error is None else o.continue_on_error
        self.template = o.template or e.template
        self.naming = o.naming or e.naming
        self.pattern = o.pattern or e.folder_pattern
        self.root = safe_name(e.root_folder, "SilentSteno")
        self.margin = e.free_space_margin_mb * 1024 * 1024
        self.bytes_done = self.files_done = 0
        self.bytes_total = self.files_total = 0
        self._verifier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steno-verify")

    def _cancelled(self) -> bool:
        return bool(self.p.cancelled)

    def _tick(self, n: int) -> None:
        self.bytes_done += n
        self.p.update(bytes_done=self.bytes_done)

    def run(self) -> list[SessionResult]:
        target = open_target(self.spec.target, self.cfg)
        self.t = target
        target.mkdir(self.root)
        self.m = mf.load(target, self.root)
        self._clean_leftovers()
        sessions = []
        results: list[SessionResult] = []
        for sid in self.spec.session_ids:
            if self._cancelled():           # planning 10,000 sessions takes a while: a cancel stops it here
                return results
            try:
                sessions.append(self._retry(self.lib.get_session, sid))
            except StenoError as e:
                results.append(SessionResult(int(sid) if str(sid).isdigit() else 0, "", "", False, error=str(e)))
        options = render_options(self.cfg, self.template)
        plans = []
        for s in sessions:
            if self._cancelled():
                return results
            plans.append((s, plan_session(s, self.spec.formats, options, self.include_audio, self.reg)))
        todo = [(s, pl) for s, pl in plans if not self._unchanged(s, pl)]
        todo_ids = {id(s) for s, _ in todo}
        self.bytes_total = sum(pf.size for _, pl in todo for pf in pl)
        self.files_total = sum(len(pl) for _, pl in todo)
        self.p.update(force=True, bytes_total=self.bytes_total, files_total=self.files_total, bytes_done=0,
                      files_done=0, results=tuple(results))
        stop_reason = stop_kind = ""
        for seq, (s, pl) in enumerate(plans, 1):
            if self._cancelled():
                break
            if id(s) not in todo_ids:
                results.append(SessionResult(s.id, s.uuid, s.title, True, skipped=True))
                continue
            if stop_reason:
                results.append(SessionResult(s.id, s.uuid, s.title, False, error=f"not attempted: {stop_reason}",
                                             problem=stop_kind))
                continue
            try:
                r = self._export_session(s, pl, seq)
            except CancelledJob:
                break
            except (TargetError, OSError) as e:
                kind = problem_kind(e)
                if not isinstance(e, TargetFullError) or "limit" not in str(e):
                    if not self._target_alive():
                        kind = kind if kind in ("read-only", "permission") else "pulled"
                        stop_reason = f"target unusable: {e}"
                        stop_kind = kind
                r = SessionResult(s.id, s.uuid, s.title, False, error=str(e), problem=kind)
            results.append(r)
            self.p.update(force=True, results=tuple(results))
            if not r.ok and not self.cont:
                stop_reason = stop_reason or f"an earlier session failed ({r.error})"
                stop_kind = stop_kind or r.problem
        if self.spec.options.merge and sessions and not self._cancelled() and not stop_reason:
            try:
                results.append(self._export_merged(sessions))
            except (TargetError, OSError) as e:
                results.append(SessionResult(0, "", "merged", False, error=str(e)))
        if getattr(self.spec.options, "prune", False) and not self._cancelled() and not stop_reason:
            self._prune_deleted()
        return results

    def _prune_deleted(self) -> None:
        """Remove the files we wrote for sessions no longer on the recorder (and their folder once
        empty); anything else in the folder stays. SHA256SUMS and the manifest follow."""
        try:
            alive = {s.uuid for s in self._retry(self.lib.list_sessions)}
        except StenoError as e:
            log.warning("deleted sessions not removed (library not read): %s", e)
            return
        removed = 0
        for uuid in [u for u in self.m.sessions if not u.startswith("merged:") and u not in alive]:
            entry = self.m.sessions[uuid]
            folder = f"{self.root}/{entry['folder']}"
            try:
                for name in entry.get("files", {}):
                    st = self.t.lstat(f"{folder}/{name}")
                    if st is not None and st.kind == "file":
                        self.t.remove(f"{folder}/{name}")
                if self.t.exists(folder) and not self.t.listdir(folder):
                    self.t.remove(folder)
            except (TargetError, OSError) as e:   # a file in use: kept (and listed) until the next export
                log.warning("%s not removed (its session was deleted on the recorder): %s", folder, e)
                continue
            del self.m.sessions[uuid]
            removed += 1
            log.info("removed %s: its session was deleted on the recorder", folder)
        if removed:
            mf.save(self.t, self.root, self.m)

    def _export_merged(self, sessions: list) -> SessionResult:
        """One merged document per format in 'Merged <date> (N sessions)'; reported as session 0."""
        from steno_exportd.engine.plan import registry
        reg = self.reg or registry()
        stamp = time.strftime("%Y-%m-%d %H-%M")
        taken = set(self.t.listdir(self.root)) | {e["folder"] for e in self.m.sessions.values()}
        folder = resolve_collision(safe_name(f"Merged {stamp} ({len(sessions)} sessions)"), taken)
        in_place = not getattr(self.t, "atomic_dir_rename", True)
        final_rel = f"{self.root}/{folder}"
        work_rel = final_rel if in_place else f"{final_rel}{PARTIAL_SUFFIX}"
        self.t.mkdir(work_rel)
        if in_place:
            mf.write_atomic(self.t, f"{work_rel}/{MARKER}", b"incomplete\n")
        files: list[FileResult] = []
        entry = {"id": 0, "title": "merged", "folder": folder, "updated_at": mf.now_iso(),
                 "exported_at": mf.now_iso(), "files": {}}
        for fmt in self.spec.formats:
            if fmt == "audio":
                continue
            try:
                r = reg.get(fmt)
                if not hasattr(r, "render_merged"):
                    raise StenoError(f"{fmt} cannot merge sessions")
                data = self._retry(r.render_merged, sessions, render_options(self.cfg, self.template))
                name = safe_name(f"merged.{getattr(r, 'extension', fmt)}")
                pf = PlannedFile(name, fmt, str(getattr(r, "version", "")))
                size, sha = self._write_verified(None, pf, f"{work_rel}/{name}", data=data)
            except (TargetError, CancelledJob):
                raise
            except Exception as e:  # noqa: BLE001 - one format's problem never stops the others
                files.append(FileResult(f"{final_rel}/{fmt}", False, error=str(e)))
                continue
            entry["files"][name] = mf.entry(size, sha, fmt, pf.version, self.template)
            files.append(FileResult(f"{final_rel}/{name}", True, size, sha))
        if in_place:
            self.t.remove(f"{work_rel}/{MARKER}")
        else:
            self.t.rename(work_rel, final_rel)
        self.m.sessions[f"merged:{folder}"] = entry
        mf.save(self.t, self.root, self.m)
        ok = all(f.ok for f in files)
        return SessionResult(0, "", "merged", ok, error="; ".join(f.error for f in files if not f.ok),
                             files=tuple(files))

    def _retry(self, fn: Any, *args: Any) -> Any:
        """Retry a transient source error (a locked recorder DB) with exponential backoff."""
        delay = 0.2
        for attempt in range(self.cfg.export.retries + 1):
            try:
                return fn(*args)
            except SourceError as e:
                if attempt == self.cfg.export.retries or self._cancelled():
                    raise
                log.info("transient error (%s); retrying in %.1fs", e, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _owned_folder(self, name: str) -> bool:
        return any(e["folder"] == name for e in self.m.sessions.values())

    def _target_alive(self) -> bool:
        try:
            self.t.listdir(self.root)
            return True
        except (TargetError, OSError):
            return False

    def _clean_leftovers(self) -> None:
        """Remove our temp files and <folder>.partial trees left by a crash or a yank."""
        for name in self.t.listdir(self.root):
            rel = f"{self.root}/{name}"
            st = self.t.lstat(rel)
            if st is None:
                continue
            if name.endswith(PARTIAL_SUFFIX) and st.kind == "dir":
                self.t.remove_tree(rel)
            elif st.kind == "dir" and not self._owned_folder(name):
                m = self.t.lstat(f"{rel}/{MARKER}")
                if m is not None and m.kind == "file":
                    self.t.remove_tree(rel)     # an in-place build interrupted before completion
            elif mf.is_temp(name) and st.kind == "file":
                self.t.remove(rel)

    def _clean_folder(self, rel: str) -> None:
        """Temp files left in one of our folders by an interrupted update."""
        for name, st in self.t.scandir(rel).items():
            if name.startswith(TEMP_PREFIX) and st.kind == "file":
                self.t.remove(f"{rel}/{name}")

    def _unchanged(self, s: Any, plan: list[PlannedFile]) -> bool:
        entry = self.m.sessions.get(s.uuid)
        if not entry or entry.get("updated_at") != _iso(s.updated_at) or entry.get("incomplete"):
            return False
        files = entry.get("files", {})
        try:
            listing = self.t.scandir(f"{self.root}/{entry['folder']}")
        except TargetError:
            return False
        errors = entry.get("errors", {})
        for pf in plan:
            if pf.error:
                if errors.get(pf.name) == pf.error:
                    continue        # a source problem already reported for this version (missing audio)
                return False
            f = files.get(pf.name)
            if not f or f.get("version") != pf.version or f.get("template", "") != pf.template or f.get("bad"):
                return False
            st = listing.get(pf.name)
            if st is None or st.kind != "file" or st.size != f.get("size"):
                return False
        return True

    def _folder_for(self, s: Any, seq: int) -> tuple[str, bool]:
        """(folder name, already ours on the target)."""
        entry = self.m.sessions.get(s.uuid)
        if entry:
            st = self.t.lstat(f"{self.root}/{entry['folder']}")
            if st is not None and st.kind == "dir":
                return entry["folder"], True
            if st is None:
                return entry["folder"], False
        raw = folder_name(s.summary if hasattr(s, "summary") else s, self.naming, self.pattern, seq=seq,
                          job_id=self.job_id, fmt=format_label(self.spec.formats, self.include_audio))
        name = safe_name(raw, f"Session {s.id}", limit=240)
        taken = set(self.t.listdir(self.root)) | {e["folder"] for u, e in self.m.sessions.items() if u != s.uuid}
        taken |= {n[: -len(PARTIAL_SUFFIX)] for n in taken if n.endswith(PARTIAL_SUFFIX)}
        rebuilt = self.m.sessions.get(f"rebuilt:{name}")
        if rebuilt is not None:
            # a folder we wrote before the manifest was lost: adopt it
            self.m.sessions[s.uuid] = self.m.sessions.pop(f"rebuilt:{name}")
            return name, True
        return resolve_collision(name, taken), False

    def _export_session(self, s: Any, plan: list[PlannedFile], seq: int) -> SessionResult:
        folder, exists = self._folder_for(s, seq)
        final_rel = f"{self.root}/{folder}"
        # preflight: per-file limits and free space, before writing a byte of this session
        limit = self.t.max_file_size
        for pf in plan:
            if limit is not None and pf.size > limit:
                raise TargetFullError(f"{pf.name} is {pf.size / 2**30:.2f} GiB, over the {limit / 2**30:.0f} GiB "
                                      f"per-file limit of this filesystem (FAT32); use an exFAT or NTFS stick "
                                      f"or export without audio", kind="too large")
        need = sum(pf.size for pf in plan)
        free = self.t.free_space()
        if need + self.margin > free:
            raise TargetFullError(f"target full: needs {need / 2**20:.0f} MiB (+{self.margin / 2**20:.0f} MiB "
                                  f"margin), {free / 2**20:.0f} MiB free")
        in_place = not getattr(self.t, "atomic_dir_rename", True)
        work_rel = final_rel if exists or in_place else f"{final_rel}{PARTIAL_SUFFIX}"
        if not exists:
            if self.t.lstat(work_rel) is not None:
                self.t.remove_tree(work_rel)
            self.t.mkdir(work_rel)
            if in_place:
                mf.write_atomic(self.t, f"{work_rel}/{MARKER}", b"incomplete\n")
        if exists:
            self._clean_folder(work_rel)
        entry = self.m.sessions.get(s.uuid) if exists else None
        old_files = dict(entry.get("files", {})) if entry else {}
        new_entry = {"id": s.id, "title": s.title, "folder": folder, "updated_at": _iso(s.updated_at),
                     "exported_at": mf.now_iso(), "files": {}}
        results: list[FileResult] = []
        verified: list[tuple[str, int, str]] = []
        pending: list = []
        # a folder built in place (no folder rename on this filesystem): every file stays under a temp name
        # until the whole session is verified, then the files are renamed one by one
        staged: dict[str, str] = {}
        for pf in plan:
            rel_final = f"{final_rel}/{pf.name}"
            if pf.error:
                results.append(FileResult(rel_final, False, error=pf.error, source_problem=pf.fmt == "audio"))
                continue
            if self._cancelled():
                raise CancelledJob("cancelled")
            old = old_files.get(pf.name)
            rel = f"{work_rel}/{pf.name}"
            if in_place and not exists:
                rel = staged[rel_final] = f"{work_rel}/{TEMP_PREFIX}part-{pf.name}"[:len(work_rel) + 201]
            st = self.t.lstat(rel)
            if st is not None:
                if st.kind != "file":
                    results.append(FileResult(rel_final, False, error=f"a {st.kind} is in the way; not replaced"))
                    continue
                if old is None and not self.overwrite_foreign:
                    results.append(FileResult(rel_final, False,
                                              error="a file we did not write is in the way; not overwritten"))
                    continue
                if (old and old.get("size") == st.size and old.get("version") == pf.version and
                        not old.get("bad") and old.get("template", "") == pf.template and pf.source is not None
                        and entry and entry.get("updated_at") == new_entry["updated_at"]):
                    new_entry["files"][pf.name] = old
                    results.append(FileResult(rel_final, True, st.size, old.get("sha256", "")))
                    continue
            self.p.update(current_file=rel_final)
            try:
                if pf.source is not None and self.verify:
                    # read-back of this copy runs beside the write of the next one
                    if pending and pending[-1][-1].done():
                        pending[-1][-1].result()     # surface a target error early
                    size, sha, h = writer.copy_unfinished(pf.source, self.t, rel, tick=self._tick,
                                                          cancelled=self._cancelled)
                    fut = self._verifier.submit(writer.finish_and_verify, h, self.t, rel, size, sha,
                                                self._cancelled)
                    pending.append((len(results), pf, rel, rel_final, size, sha, fut))
                    results.append(None)  # type: ignore[arg-type]
                    continue
                size, sha = self._write_verified(s, pf, rel)
            except (VerifyError, StenoError) as e:
                if isinstance(e, (TargetError, CancelledJob)):
                    raise
                results.append(FileResult(rel_final, False, error=str(e)))
                continue
            self._done_file(new_entry, results, verified, len(results), pf, rel_final, size, sha)
        for i, pf, rel, rel_final, size, sha, fut in pending:
            try:
                try:
                    fut.result()
                except VerifyError:
                    log.warning("verify failed for %s; rewriting once", rel)
                    self.t.remove(rel)
                    size, sha = self._write_verified(s, pf, rel, attempts=(2,))
            except (VerifyError, StenoError) as e:
                if isinstance(e, (TargetError, CancelledJob)):
                    raise
                results[i] = FileResult(rel_final, False, error=str(e))
                continue
            self._done_file(new_entry, results, verified, i, pf, rel_final, size, sha)
        if not exists and not in_place:
            self.t.rename(work_rel, final_rel)
            for r in results:
                if r.ok and self.t.lstat(r.path) is None:
                    raise TargetError(f"the filesystem lost {r.path} when its folder was renamed")
        elif not exists:
            for r in results:
                if r.ok and r.path in staged:
                    self.t.rename(staged[r.path], r.path)
            self.t.fsync_dir(work_rel)
            self.t.remove(f"{work_rel}/{MARKER}")
        planned = {pf.name for pf in plan}
        for name, f in old_files.items():
            # files of an earlier export with other formats stay ours (and in SHA256SUMS)
            if name not in planned and name not in new_entry["files"]:
                st = self.t.lstat(f"{final_rel}/{name}")
                if st is not None and st.kind == "file":
                    new_entry["files"][name] = f
        ok = all(r.ok or r.source_problem for r in results)
        source_errors = {pf.name: pf.error for pf in plan if pf.error}
        # a problem of a format not asked for this time (a missing recording) stays known: not retried
        known = {n: e for n, e in (entry or {}).get("errors", {}).items() if n not in planned}
        if source_errors or known:
            new_entry["errors"] = {**known, **source_errors}
        if sum(1 for r in results if not r.ok) > len(source_errors):
            new_entry["incomplete"] = True
        if any(r.ok for r in results) or exists:
            self.m.sessions[s.uuid] = new_entry
            mf.save(self.t, self.root, self.m)
        if self.state is not None and verified:
            self.state.add_history(self.job_id, self.spec.target_name, self.spec.device_id, s.uuid, verified)
        errors = "; ".join(f"{r.path.rsplit('/', 1)[-1]}: {r.error}" for r in results
                           if not r.ok and not r.source_problem)
        warnings = tuple(f"recording missing on the recorder, exported without it ({r.error})"
                         for r in results if r.source_problem)
        return SessionResult(s.id, s.uuid, s.title, ok, error=errors, files=tuple(results), warnings=warnings)

    def _done_file(self, new_entry: dict, results: list, verified: list, i: int, pf: PlannedFile,
                   rel_final: str, size: int, sha: str) -> None:
        self.files_done += 1
        self.p.update(files_done=self.files_done)
        new_entry["files"][pf.name] = mf.entry(size, sha, pf.fmt, pf.version, pf.template)
        r = FileResult(rel_final, True, size, sha)
        if i == len(results):
            results.append(r)
        else:
            results[i] = r
        verified.append((rel_final, size, sha))

    def _write_verified(self, s: Any, pf: PlannedFile, rel: str, attempts: tuple = (1, 2),
                        data: bytes | None = None) -> tuple[int, str]:
        if pf.source is None and data is None:
            data = self._retry(render_file, pf, s, self.reg)
            self.bytes_total += len(data)
            self.p.update(bytes_total=self.bytes_total)
        for attempt in attempts:
            start = self.bytes_done
            if data is None:
                size, sha = writer.copy_file(pf.source, self.t, rel, tick=self._tick, cancelled=self._cancelled)
            else:
                size, sha = writer.write_bytes(data, self.t, rel, tick=self._tick)
            if not self.verify:
                return size, sha
            try:
                writer.verify(self.t, rel, size, sha, cancelled=self._cancelled)
                return size, sha
            except VerifyError:
                if attempt == 2:
                    self.t.remove(rel)
                    raise
                log.warning("verify failed for %s; rewriting once", rel)
                self.bytes_done = start
                self.t.remove(rel)
        raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class SimpleSpec:
    """A spec for callers without a JobManager (CLI, tests)."""

    target: Any
    session_ids: tuple
    formats: tuple
    options: Any
    target_name: str = ""
    device_id: str = ""
    operation: str = "export"


def export_path(path: str | Path) -> str:
    return str(path)
