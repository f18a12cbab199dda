"""The one shared render worker under cancel churn: a caller's cancel never fails another caller's render."""
from __future__ import annotations

import collections
import contextvars
import os
import struct
import sys
import random
import re
import threading
import time
from pathlib import Path

from steno_exportd import render
from steno_exportd.errors import CancelledJob, RenderError
from tests.parts import wait_for
from tests.render import sessions as S

OPTS = render.RenderOptions()


def pdf_body(data: bytes) -> bytes:
    """A PDF without what differs between two renders of the same session (its /ID and dates)."""
    data = re.sub(rb"\[<[0-9a-f]{32}><[0-9a-f]{32}>\]", b"[ID]", data)
    return re.sub(rb"\(D:\d{14}[^)]*\)", b"(D:date)", data)


def test_cancels_under_churn_never_fail_another_callers_render():
    """Threads cancel their running PDF renders over and over (a guest's ZIP left, a job cancelled) while
    others render and wait: every render nobody cancelled comes back whole (no BrokenProcessPool, no
    OSError from a worker spawned while another was killed), and the cancels took effect."""
    small = S.multilingual_session()
    medium = S.long_session(300)            # ~0.15 s in the worker: cancelled while it runs
    expected = pdf_body(render.get("pdf").render_result(small, OPTS).data)
    end = time.monotonic() + 10
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def stay(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < end:
            try:
                data = render.render_in_process("pdf", small, OPTS)
                outcome = "whole" if pdf_body(data) == expected else "wrong"
            except Exception as e:     # noqa: BLE001 - counted: any of them is the failure this test is about
                outcome = "failed"
                with lock:
                    failures.append(repr(e))
            with lock:
                counts[outcome] += 1
            time.sleep(rnd.uniform(0, 0.2))     # gaps: moments when a canceller is alone in the worker

    def cancel(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < end:
            at = time.monotonic() + rnd.uniform(0.0, 0.25)
            try:
                render.render_in_process("pdf", medium, OPTS, cancelled=lambda: time.monotonic() >= at)
                outcome = "rendered"
            except CancelledJob:
                outcome = "cancelled"
            except Exception as e:     # noqa: BLE001
                outcome = "cancel failed"
                with lock:
                    failures.append(f"cancelled render: {e!r}")
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=stay, args=(i,)) for i in range(3)] + \
              [threading.Thread(target=cancel, args=(10 + i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a render never returned"
        stayed = counts["whole"] + counts["wrong"] + counts["failed"]
        assert stayed >= 10 and counts["cancelled"] >= 10, counts
        assert counts["whole"] == stayed and not failures, \
            f"{counts['whole']} of {stayed} renders nobody cancelled came back whole; {counts}; {failures[:5]}"
    finally:
        render.shutdown()


def test_a_stop_ends_the_running_render_and_those_waiting_without_a_new_worker():
    """The daemon stopping (render.shutdown) while one PDF renders and another waits its turn: both callers get
    CancelledJob at once, and no new worker is started behind the stop to render them again."""
    long = S.long_session(20_000)               # far longer than the test in the worker (4,000: done in 1.2 s here)
    outcomes: list[str] = []
    took: list[float] = []

    def caller() -> None:
        t0 = time.monotonic()
        try:
            render.render_in_process("pdf", long, OPTS)
            outcomes.append("rendered")
        except CancelledJob:
            outcomes.append("cancelled")
        except Exception as e:  # noqa: BLE001 - what a caller would see
            outcomes.append(f"{type(e).__name__}: {e}")
        took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for th in threads:
        th.start()
        time.sleep(0.3)
    time.sleep(0.7)                             # one renders, the other waits its turn
    t0 = time.monotonic()
    render.shutdown()
    for th in threads:
        th.join(30)
    try:
        assert sorted(outcomes) == ["cancelled", "cancelled"], \
            f"after the stop the callers saw {outcomes} ({[round(x, 1) for x in took]} s each)"
        assert time.monotonic() - t0 < 2, f"the stop took {time.monotonic() - t0:.1f} s to end both renders"
        assert render._pool is None, "a new render worker was started after the stop"
    finally:
        render.shutdown()


def test_renders_take_the_worker_in_the_order_they_asked_and_a_cancelled_waiter_leaves_the_queue():
    """A job's render (a USB export, a mail) is never overtaken by renders asked for after it (a guest's): while one
    render holds the worker, eight more ask in a known order and get it in that order; one cancelled while it waits
    in the middle of the queue leaves at once (before the worker is free) and holds up none of those behind it."""
    held = S.long_session(20_000)               # far longer than the test: it holds the worker until cancelled
    small = S.multilingual_session()
    polls: collections.Counter = collections.Counter()     # a caller's cancel flag was looked at: it waits its turn
    ran: list[tuple[object, str]] = []          # (caller, outcome) in the order the renders ended
    lock = threading.Lock()
    release, leave, never = threading.Event(), threading.Event(), threading.Event()

    def caller(who: object, session, flag: threading.Event) -> None:
        def cancelled() -> bool:
            with lock:
                polls[who] += 1
            return flag.is_set()
        try:
            render.render_in_process("pdf", session, OPTS, cancelled=cancelled)
            outcome = "rendered"
        except CancelledJob:
            outcome = "cancelled"
        except Exception as e:     # noqa: BLE001 - what the caller would see
            outcome = repr(e)
        with lock:
            ran.append((who, outcome))

    threads = [threading.Thread(target=caller, args=("holder", held, release))]
    try:
        threads[0].start()
        wait_for(lambda: polls["holder"], 60, what="the long render to hold the worker")
        for i in range(8):                      # each asks only once the one before it waits its turn
            threads.append(threading.Thread(target=caller, args=(i, small, leave if i == 3 else never)))
            threads[-1].start()
            wait_for(lambda: polls[i], 10, what=f"caller {i} to wait its turn")
        leave.set()
        wait_for(lambda: ran, 10, what="the cancelled waiter to leave")
        assert ran == [(3, "cancelled")], f"while the worker was held: {ran}"
        release.set()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), f"a render never returned: {ran}"
        assert ran[1] == ("holder", "cancelled"), ran
        assert ran[2:] == [(i, "rendered") for i in (0, 1, 2, 4, 5, 6, 7)], \
            f"the renders did not take the worker in the order they asked for it: {ran[2:]}"
    finally:
        release.set()
        leave.set()
        render.shutdown()
        for t in threads:
            t.join(30)


def worker() -> list:
    """The processes of the render worker in use now (none when there is none)."""
    with render._pool_lock:
        pool = render._pool
        return list((pool._processes or {}).values()) if pool is not None else []


WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def test_a_call_waiting_for_the_worker_runs_in_its_callers_context():
    """What runs in a thread that waits for the worker (a mail's compose, a ZIP's plan) sees the contextvars of the
    coroutine that asked, as under asyncio.to_thread (a caller's name for its log lines, a request's cancel), and
    what it sets there stays there."""
    def seen() -> str:
        got = WHO.get()
        WHO.set("set in the thread")
        return got

    async def ask(who: str) -> tuple[str, str]:
        WHO.set(who)
        got = await render.waiting_for_worker(seen)
        return got, WHO.get()

    try:
        results = [await ask(f"caller {i}") for i in range(3)]
    finally:
        render.shutdown()
    assert results == [(f"caller {i}", f"caller {i}") for i in range(3)], results


def test_a_render_whose_worker_died_keeps_its_turn():
    """The worker dies under a job's render (the kernel's OOM killer) while two later renders wait their turn: the
    render is made again in a new worker before either of them, not sent to the back of the queue behind renders
    that asked after it (a USB export overtaken by every guest download that came meanwhile)."""
    first = S.long_session(6_000)               # ~2 s in the worker: still rendering when its worker is killed
    small = S.multilingual_session()
    polls: collections.Counter = collections.Counter()     # a caller's cancel flag was looked at
    ran: list[tuple[str, str]] = []             # (caller, outcome) in the order the renders ended
    lock = threading.Lock()

    def caller(who: str, session) -> None:
        def cancelled() -> bool:
            with lock:
                polls[who] += 1
            return False
        try:
            render.render_in_process("pdf", session, OPTS, cancelled=cancelled)
            outcome = "rendered"
        except Exception as e:     # noqa: BLE001 - what the caller would see
            outcome = repr(e)
        with lock:
            ran.append((who, outcome))

    threads = [threading.Thread(target=caller, args=("A", first))]
    try:
        threads[0].start()
        dead = wait_for(worker, 60, what="the worker to start for A")[0]
        for who in ("B", "C"):                  # each asks only once the one before it waits its turn
            threads.append(threading.Thread(target=caller, args=(who, small)))
            threads[-1].start()
            wait_for(lambda: polls[who], 10, what=f"{who} to wait its turn")
        assert ran == [], f"A's render ended before its worker was killed: {ran}"
        dead.kill()                             # SIGKILL, as the OOM killer does
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), f"a render never returned: {ran}"
        assert [w.pid for w in worker()] != [dead.pid], "A's render was not made again in a new worker"
        assert ran == [("A", "rendered"), ("B", "rendered"), ("C", "rendered")], \
            f"the render whose worker died lost its turn: {ran}"
    finally:
        render.shutdown()
        for t in threads:
            t.join(30)


def test_a_worker_that_died_while_idle_is_replaced_for_the_next_render():
    """The idle worker is killed between two renders (the OOM killer, someone's kill): the next render is made
    in a new worker, and the ones after it too (before, every render failed with BrokenProcessPool until the
    daemon was restarted)."""
    small = S.multilingual_session()
    expected = pdf_body(render.get("pdf").render_result(small, OPTS).data)
    try:
        render.render_in_process("pdf", small, OPTS)
        with render._pool_lock:
            idle = list(render._pool._processes.values())
        assert len(idle) == 1
        idle[0].kill()
        idle[0].join(30)
        wait_for(lambda: render._pool._broken, 30, what="the pool to see its worker gone")
        got = [pdf_body(render.render_in_process("pdf", small, OPTS)) == expected for _ in range(3)]
        assert got == [True, True, True], got
    finally:
        render.shutdown()


def _stuck(mark: str | None = None, then: object = None, half_sent: bool = True) -> object:
    """In the worker: a call that never ends. ``half_sent``: once it sent the first bytes of its result message (its
    length says 1 MiB), as a worker killed while it sends a big document leaves it. With a ``mark`` (a file's path):
    only in the first worker that gets here, which then writes its pid there; a later one returns ``then``."""
    if mark is not None and os.path.exists(mark):
        return then
    if half_sent:
        frame = sys._getframe()
        while "result_queue" not in frame.f_locals:        # concurrent.futures.process._process_worker's own
            frame = frame.f_back
        os.write(frame.f_locals["result_queue"]._writer.fileno(), struct.pack("!i", 1 << 20) + b"%PDF-1.4 ")
    if mark is not None:
        with open(mark + ".part", "w") as f:
            f.write(str(os.getpid()))
        os.rename(mark + ".part", mark)
    time.sleep(3600)
    return None


class _StuckFirst:
    """A session as a render sends it to the worker: the first worker unpickles it (before it renders) into a render
    that never ends (_stuck), the next one into the session itself."""

    def __init__(self, mark: Path, session, half_sent: bool) -> None:
        self.mark, self.session, self.half_sent = str(mark), session, half_sent

    def __reduce__(self):
        return _stuck, (self.mark, self.session, self.half_sent)


def _render(what, expected: bytes, got: list[str]) -> None:
    """A PDF render as its caller sees it, appended to ``got``: "whole" (the expected document), "wrong", or the
    error."""
    try:
        data = render.render_in_process("pdf", what, OPTS)
        got.append("whole" if pdf_body(data) == expected else "wrong")
    except Exception as e:     # noqa: BLE001 - what the caller would see
        got.append(repr(e))


def test_a_cancel_that_kills_the_worker_while_it_sends_its_result_ends_and_the_next_render_is_made():
    """A render is cancelled just as the worker sends its result (the cancel kills the worker mid-send): the cancel
    ends at once and the next render is made in a new worker (before, the pool's manager thread waited forever for
    the rest of the result, and the cancel, the worker's turn and every render after it with it; the killed worker
    was left unreaped: a defunct python child of a hung test run)."""
    small = S.multilingual_session()
    outcome: list[str] = []
    try:
        render.render_in_process("pdf", small, OPTS)           # the worker started
        with render._pool_lock:
            pool = render._pool
            fut = pool.submit(_stuck)
            worker = list(pool._processes.values())[0]
        wait_for(lambda: fut.running() and not fut.done(), 30, what="the worker to take the call")
        time.sleep(0.5)                                         # it sent the first bytes and waits

        def cancel() -> None:
            try:
                render._wait(pool, fut, lambda: True)           # the cancel path of render_result_in_process
            except CancelledJob:
                outcome.append("cancelled")
            except Exception as e:     # noqa: BLE001 - what the caller would see
                outcome.append(repr(e))
        t = threading.Thread(target=cancel, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive() and outcome == ["cancelled"], \
            f"the cancel of a render whose worker was killed mid-send never ended: {outcome}"
        worker.join(30)
        assert worker.exitcode is not None, "the killed worker was left unreaped"
        assert pdf_body(render.render_in_process("pdf", small, OPTS)) == \
            pdf_body(render.get("pdf").render_result(small, OPTS).data)
    finally:
        if pool._result_queue is not None:                      # unblock a hung manager thread (old code)
            pool._result_queue._writer.close()
        render.shutdown()


def test_a_worker_killed_while_it_sends_its_result_is_replaced_and_the_render_made(tmp_path):
    """The worker dies on its own (the OOM killer) while it sends a render's result: the render is made again in a
    new worker and returned, and the next render too (before, the pool's manager thread waited forever for the rest
    of the result, this process holding the pipe's write end too: the render hung until someone cancelled it)."""
    small = S.multilingual_session()
    expected = pdf_body(render.get("pdf").render_result(small, OPTS).data)
    mark = tmp_path / "sent-half"
    got: list[str] = []
    pool = None
    t = threading.Thread(target=_render, args=(_StuckFirst(mark, small, half_sent=True), expected, got), daemon=True)
    try:
        t.start()
        wait_for(mark.exists, 60, what="the worker to send the first bytes of its result")
        with render._pool_lock:
            pool = render._pool
        (dying,) = worker()
        assert dying.pid == int(mark.read_text())
        dying.kill()                            # SIGKILL, as the OOM killer does
        t.join(60)
        assert not t.is_alive(), "the render whose worker was killed while it sent its result never ended"
        assert got == ["whole"], f"the render whose worker was killed while it sent its result: {got}"
        assert worker() and dying not in worker(), "the render was not made again in a new worker"
        assert pdf_body(render.render_in_process("pdf", small, OPTS)) == expected
    finally:
        if pool is not None and pool._result_queue is not None:    # unblock a hung manager thread (old code)
            pool._result_queue._writer.close()
        render.shutdown()
        t.join(30)


def test_a_worker_that_died_while_idle_leaves_the_next_render_its_retry(tmp_path):
    """The idle worker dies between two renders, then the next render's new worker dies under it too (the OOM killer
    twice): that render is still made, in a third worker, as the idle death was no attempt of it (before, it took the
    render's one retry, and the user got BrokenProcessPool although only one worker had tried to render it)."""
    small = S.multilingual_session()
    expected = pdf_body(render.get("pdf").render_result(small, OPTS).data)
    mark = tmp_path / "rendering"
    got: list[str] = []
    t = threading.Thread(target=_render, args=(_StuckFirst(mark, small, half_sent=False), expected, got))
    try:
        render.render_in_process("pdf", small, OPTS)           # the worker started
        (idle,) = worker()
        idle.kill()
        idle.join(30)
        wait_for(lambda: render._pool._broken, 30, what="the pool to see its worker gone")
        t.start()
        wait_for(mark.exists, 60, what="a new worker to take the render")
        (fresh,) = worker()
        assert fresh is not idle and fresh.pid == int(mark.read_text())
        fresh.kill()                            # SIGKILL, as the OOM killer does
        t.join(60)
        assert not t.is_alive(), "the render never returned"
        assert got == ["whole"], f"the render whose worker died after an idle one died: {got}"
        assert worker() and not {idle, fresh} & set(worker()), "the render was not made in a third worker"
    finally:
        render.shutdown()
        if t.is_alive():
            t.join(30)


def test_a_render_whose_worker_dies_twice_fails_with_a_message_a_person_reads(tmp_path, caplog):
    """The worker dies under a render, and again under its one retry (the OOM killer twice): the render fails with
    a message a person reads (the web page's download, D-Bus, the job's results show it) and one log line says so
    (before: the bare "BrokenProcessPool(...)" of concurrent.futures, and nothing in the log)."""
    mark = tmp_path / "rendering"
    got: list[str] = []
    t = threading.Thread(target=_render, args=(_StuckFirst(mark, S.multilingual_session(), half_sent=False), b"", got))
    try:
        with caplog.at_level("WARNING", logger="steno_exportd.render"):
            t.start()
            killed = []
            for attempt in (1, 2):
                wait_for(mark.exists, 60, what=f"worker {attempt} to take the render")
                (dying,) = worker()
                assert dying.pid == int(mark.read_text()) and dying not in killed
                mark.unlink()                   # the next worker gets stuck too (it starts only once this one died)
                dying.kill()                    # SIGKILL, as the OOM killer does
                killed.append(dying)
            t.join(60)
        assert not t.is_alive(), "the render whose worker died twice never returned"
        assert got == [repr(RenderError("the PDF renderer stopped unexpectedly (out of memory?); try again"))], got
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "died" in errors[0], [r.getMessage() for r in caplog.records]
    finally:
        render.shutdown()
        if t.is_alive():
            t.join(30)
