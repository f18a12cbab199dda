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
