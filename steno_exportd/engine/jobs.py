"""JobManager: queue with priorities, concurrency limit, cancel, retry, throttled progress events."""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from steno_exportd import events as ev
from steno_exportd.config import MAX_CONCURRENT_JOBS, Config
from steno_exportd.engine.hashcache import HashCache
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.registry import Targets
from steno_exportd.errors import NotFoundError, TargetError
from steno_exportd.pools import in_pool

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25   # seconds between JobUpdated events of one job (<= 4 Hz)
STOP_TIMEOUT = 120.0       # seconds stop() waits for running jobs to end at their cancel (copies stop at the next chunk)
TOO_LATE = "the cancel came too late: the job had already done all its work"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What a job does: sessions x formats -> target, with options."""

    operation: str                   # as people see it: "export", "push" (from the target's kind)
    target: Any                      # a target string (its kind in engine.registry) or a Target object
    target_name: str
    session_ids: tuple[int, ...] = ()
    formats: tuple[str, ...] = ()
    options: ExportOptions = ExportOptions()
    device_id: str = ""
    trusted: bool = False            # asked for by the daemon itself or the CLI: a local target is not held to
                                     # export.allowed_dirs (checked again when the job runs unless so)
    session_uuids: tuple[str, ...] = ()  # each session's uuid when the job was asked for (one per id; none in a job
                                     # stored before they were kept): the job reads those meetings or fails them

    def to_json(self) -> dict:
        return dict(operation=self.operation, target=self.target if isinstance(self.target, str) else None,
                    target_name=self.target_name, session_ids=list(self.session_ids), formats=list(self.formats),
                    options=dataclasses.asdict(self.options), device_id=self.device_id,
                    session_uuids=list(self.session_uuids))
        # (not ``trusted``: it is never taken back from the state database, see JobManager.resume)


class Progress:
    """Thread-side progress reporter: the export code calls update(); events leave at a bounded rate."""

    def __init__(self, publish: Callable[[dict, bool], None], cancel: threading.Event) -> None:
        self._publish = publish
        self.cancel = cancel
        self._last = 0.0
        self.fields: dict = {}
        self.heeded = False         # the export code saw the cancel (and so stopped or skipped something)

    def update(self, force: bool = False, **fields: Any) -> None:
        self.fields.update(fields)
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._publish(dict(self.fields), True)

    @property
    def cancelled(self) -> bool:
        """The job was cancelled; once the export code has seen it so, the job ends cancelled (a cancel it never
        saw came after its last look: everything it was asked to do was done)."""
        if self.cancel.is_set():
            self.heeded = True
            return True
        return False


Runner = Callable[[Any, JobSpec, Config, Progress, int], list[ev.SessionResult]]


def default_runner(library: Any, spec: JobSpec, cfg: Config, progress: Progress, job_id: int,
                   state: Any = None, targets: Targets | None = None,
                   hashes: HashCache | None = None) -> list[ev.SessionResult]:
    from steno_exportd.engine.export import run_export
    return run_export(library, spec, cfg, progress, targets=targets, job_id=job_id, state=state, hashes=hashes)


# the most serious problem for the target comes first in a job's headline
HEADLINES = {"pulled": "target gone (stick pulled?)", "full": "target full", "read-only": "target read-only",
             "permission": "permission denied on the target", "too large": "file too large for the target"}


def outcome(results: list[ev.SessionResult]) -> tuple[ev.JobState, str]:
    """A finished job's state and headline: failed only if something it was asked to write is missing;
    the headline names the most serious problem for the target with counts, then the warnings."""
    failed = [r for r in results if not r.ok]
    warned = [r for r in results if r.ok and r.warnings]
    parts = []
    if failed:
        kinds = [k for k in HEADLINES if any(r.problem == k for r in failed)]
        first = next((r for r in failed if r.problem == kinds[0]), failed[0]) if kinds else failed[0]
        what = HEADLINES[kinds[0]] if kinds else "failed"
        parts.append(f"{what}: {len(failed)} of {len(results)} sessions not written ({first.error})")
    if warned:
        parts.append(f"{len(warned)} session{'s' * (len(warned) != 1)} exported with warnings: {warned[0].warnings[0]}")
    return (ev.JobState.FAILED if failed else ev.JobState.COMPLETED), "; ".join(parts)


class _Job:
    def __init__(self, snap: ev.JobSnapshot, spec: JobSpec | None) -> None:
        self.snap = snap
        self.spec = spec
        self.cancel = threading.Event()
        self.done = asyncio.Event()
        self.task: asyncio.Task | None = None


class JobManager:
    """Runs jobs in worker tasks; the blocking export work runs in threads."""

    def __init__(self, cfg: Config, events: ev.EventBus, state: Any, library: Callable[[], Any],
                 runner: Runner | None = None, targets: Targets | None = None,
                 on_finished: Callable[[ev.JobSnapshot], Awaitable[None]] | None = None) -> None:
        self.cfg = cfg
        self.targets = targets
        self.hashes: HashCache | None = None     # recordings' SHA-256, shared by every export
        self._on_finished = on_finished
        self._saves: set[asyncio.Task] = set()
        self.events = events
        self.state = state
        self._library = library
        self._runner = runner
        self._jobs: dict[int, _Job] = {}
        self._queue: asyncio.PriorityQueue | None = None
        self._workers: list[asyncio.Task] = []
        self._seq = itertools.count()
        self._next_id = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        # the jobs' own threads (made as jobs run, at most the config's maximum): a job holds its thread for the
        # whole export, so in the loop's few default threads (6 on 2 cores) a few exports left the page's reads, the
        # login check and the jobs' own bookkeeping none
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self._workers:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.PriorityQueue()
        self._threads = concurrent.futures.ThreadPoolExecutor(MAX_CONCURRENT_JOBS, thread_name_prefix="steno-job")
        self.hashes = await asyncio.to_thread(HashCache, Path(self.cfg.state.dir) / "cache" / "hashes.db")
        self._next_id = max(self._next_id, await asyncio.to_thread(self.state.next_job_id))
        for d in await asyncio.to_thread(self.state.jobs, (str(ev.JobState.INTERRUPTED),)):
            if d["id"] not in self._jobs:
                snap = ev.JobSnapshot(id=d["id"], operation=d["operation"], target=d["target"],
                                      state=ev.JobState.INTERRUPTED, error=d["error"], created=d["created"] or 0,
                                      started=d["started"] or 0, finished=d["finished"] or 0)
                self._jobs[d["id"]] = _Job(snap, None)
                self._jobs[d["id"]].done.set()
        self._spawn_workers()

    def _spawn_workers(self) -> None:
        while len(self._workers) < self.cfg.export.max_concurrent_jobs:
            self._workers.append(asyncio.create_task(self._worker(), name="steno-job-worker"))

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Cancel every job, wait up to ``timeout`` seconds for the running ones to end, then clean up; a job still
        running then is named in the log and left to end by its cancel in its thread (the clean-up goes on)."""
        await asyncio.gather(*self._saves, return_exceptions=True)
        for j in list(self._jobs.values()):
            if not j.snap.state.finished:
                j.cancel.set()
        running = [j for j in self._jobs.values() if j.task is not None and not j.done.is_set()]
        if running:
            waits = [asyncio.ensure_future(j.done.wait()) for j in running]
            try:
                await asyncio.wait(waits, timeout=timeout)
            finally:
                for w in waits:
                    w.cancel()
            for j in running:
                if not j.done.is_set():
                    log.error("job %s (%s to %s) did not stop within %g s of its cancel: left to end in its "
                              "thread, marked cancelled", j.snap.id, j.snap.operation, j.snap.target, timeout)
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._threads is not None:
            self._threads.shutdown(wait=False)      # (the jobs ended above; a job still running ends by its cancel)
            self._threads = None
        for j in list(self._jobs.values()):
            if not j.snap.state.finished:
                self._set(j, state=ev.JobState.CANCELLED, error="the daemon stopped", finished=time.time())
        if self.hashes is not None:
            self.hashes.close()
            self.hashes = None

    def reload(self, cfg: Config) -> None:
        """A new config: more workers when it allows more exports at once; when fewer, those beyond it end as they
        are next given a job (a running export is never cut)."""
        self.cfg = cfg
        if self._workers:
            self._spawn_workers()

    # -- queries ---------------------------------------------------------------------
    def list(self) -> list[ev.JobSnapshot]:
        return [j.snap for j in self._jobs.values()]

    def get(self, job_id: int) -> ev.JobSnapshot:
        try:
            return self._jobs[int(job_id)].snap
        except (KeyError, ValueError):
            raise NotFoundError(f"no job {job_id!r}") from None

    async def wait(self, job_id: int, timeout: float | None = None) -> ev.JobSnapshot:
        job = self._jobs.get(int(job_id))
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        async with asyncio.timeout(timeout):
            await job.done.wait()
        return job.snap

    def cancel(self, job_id: int) -> ev.JobSnapshot:
        job = self._jobs.get(int(job_id))
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        job.cancel.set()
        if job.snap.state == ev.JobState.QUEUED:
            self._set(job, state=ev.JobState.CANCELLED, finished=time.time(), error="cancelled")
            job.done.set()
            # stored now: a restart must not bring it back as "interrupted"
            save = asyncio.get_running_loop().create_task(asyncio.to_thread(self.state.save_job, job.snap))
            self._saves.add(save)
            save.add_done_callback(self._saves.discard)
        return job.snap

    def remove(self, job_id: int) -> None:
        job = self._jobs.get(int(job_id))
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        if not job.snap.state.finished:
            raise NotFoundError(f"job {job_id} is still running")
        del self._jobs[int(job_id)]
        self.events.publish(ev.JobRemoved(int(job_id)))

    def forget_finished(self, keep: int) -> int:
        """Drop all but the newest ``keep`` finished jobs from memory (the state DB keeps them); the count."""
        done = sorted((j.snap.id for j in self._jobs.values() if j.snap.state.finished), reverse=True)
        for jid in done[keep:]:
            self.remove(jid)
        return max(0, len(done) - keep)

    # -- submitting ------------------------------------------------------------------
    def _new_id(self) -> int:
        jid = self._next_id
        self._next_id += 1
        return jid

    async def submit(self, spec: JobSpec) -> ev.JobSnapshot:
        if self._queue is None:
            await self.start()
        jid = self._new_id()
        snap = ev.JobSnapshot(id=jid, operation=spec.operation, target=spec.target_name, state=ev.JobState.QUEUED,
                              sessions=spec.session_ids, formats=spec.formats, created=time.time(),
                              device_id=spec.device_id)
        job = _Job(snap, spec)
        self._jobs[jid] = job
        await asyncio.to_thread(self.state.save_job, snap, spec.to_json())
        self.events.publish(ev.JobUpdated(snap))
        assert self._queue is not None
        self._queue.put_nowait((-spec.options.priority, next(self._seq), jid))
        return snap

    async def resume(self, job_id: int) -> ev.JobSnapshot:
        """Queue an interrupted job again (a new job with the same spec; done files are skipped). Never trusted,
        whatever its stored spec says (an older version stored the flag; anyone who can write the state database
        could set it): a local target is held to export.allowed_dirs again when it runs (FolderKind.open)."""
        rows = [d for d in await asyncio.to_thread(self.state.jobs) if d["id"] == int(job_id)]
        if not rows or not rows[0]["spec"].get("target"):
            raise NotFoundError(f"no resumable job {job_id!r}")
        s = rows[0]["spec"]
        spec = JobSpec(operation=s["operation"], target=s["target"], target_name=s["target_name"],
                       session_ids=tuple(s["session_ids"]), formats=tuple(s["formats"]),
                       options=ExportOptions(**s["options"]), device_id=s.get("device_id", ""),
                       session_uuids=tuple(s.get("session_uuids", ())))     # (none in a job stored before)
        return await self.submit(spec)

    async def run_operation(self, operation: str, target: str, fn: Callable[[], Awaitable[Any]],
                            device_id: str = "") -> ev.JobSnapshot:
        """Run a short operation (eject, ...) as a tracked job and return its final snapshot."""
        jid = self._new_id()
        now = time.time()
        job = _Job(ev.JobSnapshot(id=jid, operation=operation, target=target, state=ev.JobState.RUNNING,
                                  created=now, started=now, device_id=device_id), None)
        self._jobs[jid] = job
        self.events.publish(ev.JobUpdated(job.snap))
        try:
            await fn()
        except asyncio.CancelledError:
            self._set(job, state=ev.JobState.CANCELLED, finished=time.time())
            raise
        except Exception as e:  # noqa: BLE001 - error boundary of one job
            self._set(job, state=ev.JobState.FAILED, error=str(e) or type(e).__name__, finished=time.time())
        else:
            self._set(job, state=ev.JobState.COMPLETED, finished=time.time())
        job.done.set()
        await asyncio.to_thread(self.state.save_job, job.snap)
        return job.snap

    # -- running ---------------------------------------------------------------------
    def _set(self, job: _Job, **fields: Any) -> None:
        job.snap = dataclasses.replace(job.snap, **fields)
        self.events.publish(ev.JobUpdated(job.snap))

    async def _worker(self) -> None:
        assert self._queue is not None
        me = asyncio.current_task()
        while True:
            item = await self._queue.get()
            if me in self._workers and len(self._workers) > self.cfg.export.max_concurrent_jobs:
                # fewer exports at once since a reload: this worker ends, its job goes to those that stay. Whichever
                # worker is given it (not the last ones by place: those may be running an export begun before the
                # reload, and a worker before them would start this one beside it, over the maximum)
                self._workers.remove(me)
                self._queue.put_nowait(item)
                return
            _, _, jid = item
            job = self._jobs.get(jid)
            if job is None or job.snap.state != ev.JobState.QUEUED:
                continue
            job.task = asyncio.current_task()
            try:
                await self._run(job)
            finally:
                job.task = None
                job.done.set()

    async def _run(self, job: _Job) -> None:
        assert job.spec is not None and self._loop is not None
        loop = self._loop
        started = time.time()
        self._set(job, state=ev.JobState.RUNNING, started=started)
        await asyncio.to_thread(self.state.save_job, job.snap, job.spec.to_json())

        def publish(fields: dict, _throttled: bool) -> None:
            loop.call_soon_threadsafe(self._progress, job, fields)

        progress = Progress(publish, job.cancel)
        runner = self._runner
        try:
            lib = self._library()
            if runner is None:
                work = functools.partial(default_runner, lib, job.spec, self.cfg, progress, job.snap.id, self.state,
                                         self.targets, self.hashes)
            else:
                work = functools.partial(runner, lib, job.spec, self.cfg, progress, job.snap.id)
            results = await in_pool(self._threads, work)
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        except Exception as e:  # noqa: BLE001 - error boundary of one job
            log.warning("job %s failed: %s", job.snap.id, e)
            self._progress(job, progress.fields)
            err = str(e) or type(e).__name__
            kind = e.kind if isinstance(e, TargetError) else ""
            if kind in HEADLINES and not err.startswith(HEADLINES[kind].split(" (")[0]):
                err = f"{HEADLINES[kind]}: {err}"      # the whole job stopped on the target: say which problem
            self._set(job, state=ev.JobState.FAILED, error=err, finished=time.time(),
                      rate=0.0, expected_end=0.0, current_file="")
        else:
            self._progress(job, progress.fields)
            if progress.heeded:
                state, err = ev.JobState.CANCELLED, "cancelled"
            else:
                state, err = outcome(results)
                if job.cancel.is_set():     # after the export's last look at it: nothing was cut short
                    log.info("job %s: cancelled after it had done all its work; it ends %s", job.snap.id, state)
                    err = "; ".join(p for p in (err, TOO_LATE) if p)
            self._set(job, state=state, error=err, results=tuple(results), finished=time.time(),
                      current_file="", expected_end=0.0)
        await asyncio.to_thread(self.state.save_job, job.snap)
        for r in job.snap.results:
            await asyncio.to_thread(self.state.save_result, job.snap.id, r)
        if self._on_finished is not None:
            try:
                await self._on_finished(job.snap)
            except Exception as e:  # noqa: BLE001 - bookkeeping after a job never fails it
                log.warning("after job %s: %s", job.snap.id, e)

    def _progress(self, job: _Job, fields: dict) -> None:
        if job.snap.state.finished:
            return
        f = dict(fields)
        results = f.pop("results", None)
        now = time.time()
        done, total = f.get("bytes_done", job.snap.bytes_done), f.get("bytes_total", job.snap.bytes_total)
        elapsed = now - job.snap.started if job.snap.started else 0
        rate = done / elapsed if elapsed > 0.5 else 0.0
        eta = now + (total - done) / rate if rate > 0 and total > done else 0.0
        allowed = {k: v for k, v in f.items() if k in ("bytes_done", "bytes_total", "files_done", "files_total",
                                                        "current_file")}
        if results is not None:
            allowed["results"] = tuple(results)
        self._set(job, rate=rate, expected_end=eta, **allowed)
