"""A LAN guest (no-login mode) or a copied cookie flooding POST /api/v1/exports: what may wait is bounded by the
core, as for D-Bus (tests/dbus/test_floods.py); the rest gets a clear refusal at once."""
from __future__ import annotations

import asyncio

from steno_exportd.core import MAX_WAITING_JOBS
from tests.web.helpers import csrf

FLOOD = 300


async def test_an_export_flood_over_the_api_queues_a_bounded_number(web_client, tmp_path, sessions):
    client, core = await web_client(**{"export.max_concurrent_jobs": 1})
    (tmp_path / "exports").mkdir(exist_ok=True)
    token = await csrf(client)
    body = {"sessions": list(sessions), "formats": ["txt", "json", "md", "html", "csv"],
            "target": str(tmp_path / "exports")}

    async def post():
        r = await client.post("/api/v1/exports", json=body, headers={"X-CSRF-Token": token})
        return r.status, await r.json()

    flood = asyncio.gather(*[post() for _ in range(FLOOD)])
    answers = await flood
    accepted = [a for s, a in answers if s == 202]
    refused = [a for s, a in answers if s != 202]
    assert len(accepted) + len(refused) == FLOOD
    finished = [j for j in core.jobs.list() if j.state.finished]     # (quick exports end during the flood)
    assert len(accepted) - len(finished) <= MAX_WAITING_JOBS, \
        f"{len(accepted)} exports queued from one address, {len(finished)} of them done"
    assert {s for s, _ in answers if s != 202} == {409}, {s for s, _ in answers}
    text = refused[0]["error"]
    assert "waiting" in text and "try again" in text and len(text) < 200, text
    waiting = [j for j in core.jobs.list() if not j.state.finished]
    assert len(waiting) <= MAX_WAITING_JOBS
    r = await client.get("/api/v1/status")
    assert r.status == 200
    for j in waiting:                       # a hundred queued exports would make the core's stop wait for them
        core.jobs.cancel(j.id)


async def test_the_daemons_own_exports_neither_count_nor_are_refused(web_client, tmp_path, sessions):
    """A stick's auto-export, a schedule or a push trigger is never refused, and 100 of them do not refuse a
    caller's export: the bound is on what callers ask for."""
    client, core = await web_client(**{"export.max_concurrent_jobs": 1})
    (tmp_path / "exports").mkdir(exist_ok=True)
    target, ids = str(tmp_path / "exports"), list(sessions)
    for _ in range(MAX_WAITING_JOBS):
        await core.export_sessions(ids, ["txt"], target, trusted=True)
    for _ in range(5):
        await core.export_sessions(ids, ["txt"], target, internal=True)
    try:
        r = await client.post("/api/v1/exports", json={"sessions": ids, "formats": ["txt"], "target": target},
                              headers={"X-CSRF-Token": await csrf(client)})
        assert r.status == 202, await r.text()
    finally:
        for j in core.jobs.list():
            if not j.state.finished:
                core.jobs.cancel(j.id)
