"""The page's "Send to <remote>" (a push to a real smbd through the API) and the share's real state."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html as htmllib
import logging
import re
import subprocess
import urllib.parse

import pytest

from steno_exportd.rclone.kind import RcloneKind
from steno_exportd.samba import share as samba
from steno_exportd.samba import adapter
from steno_exportd.smb.push import SmbKind
from tests import parts
from tests.parts import sha256sum_check
from tests.parts.rclone import RcloneServer
from tests.parts.smbd import make_smbd
from tests.web.helpers import csrf, next_status, sharing_state


async def job_done(client, job_id: int, timeout: float = 60.0) -> dict:
    """Poll the job over the API until it finished (bounded)."""
    async def finished() -> dict | None:
        job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return job if job["state"] in ("completed", "failed", "cancelled") else None
    return await parts.until(finished, f"job {job_id} to finish", timeout, 0.1)


async def test_send_to_office_from_the_page_lands_verified_on_the_share(web_client, office):
    smbd, remote, root, _ = office
    client, core = await web_client(**{
        "smb.recorder_folder": "rec-web",
        "smb.remotes": [dataclasses.asdict(dataclasses.replace(remote, formats=["txt", "json"]))]})
    core.targets.register(SmbKind())            # as the daemon does
    listing = await (await client.get("/")).text()
    ids = re.findall(r'<input type="checkbox" name="id" value="([0-9a-f-]{36})"', listing)[:2]     # (uuids)
    assert len(ids) == 2
    assert re.search(r'<button type="button" data-push="office"[^>]*>Send selected to office</button>', listing)
    page = await (await client.get(f"/sessions/{ids[0]}")).text()
    assert re.search(rf'data-push="office" data-sessions="{ids[0]}"[^>]*>Send to office</button>', page)
    # what static/app.js sends for the two ticked meetings (digits as numbers: none here)
    token = await csrf(client)
    r = await client.post("/api/v1/exports", json={"sessions": ids, "target": "smb:office"},
                          headers={"X-CSRF-Token": token})
    assert r.status == 202, await r.text()
    job = await r.json()
    assert job["operation"] == "push" and job["target"] == "smb:office"
    assert job["formats"] == ["txt", "json"]                     # the remote's formats
    done = await job_done(client, job["id"])
    assert done["state"] == "completed", done["error"]
    nas = root / "nas" / "rec-web"
    assert not await asyncio.to_thread(sha256sum_check, nas)
    assert len(list(nas.rglob("transcript.txt"))) == 2 and not list(nas.rglob("*.pdf"))
    jobs = await (await client.get("/devices")).text()
    row = re.search(rf'<tr data-id="{job["id"]}">(.*?)</tr>', jobs, re.S).group(1)
    assert "smb:office" in row and "completed" in row
    # a remote that is gone from the config (a stale page): a clear error, nothing started
    r = await client.post("/api/v1/exports", json={"sessions": [ids[0]], "target": "smb:nas2"},
                          headers={"X-CSRF-Token": token})
    assert r.status == 404
    assert (await r.json())["error"] == "no SMB remote 'nas2' (known: office)"
    assert len(core.jobs.list()) == 1


async def test_no_remotes_no_send_buttons(web_client):
    client, _ = await web_client()
    listing = await (await client.get("/")).text()
    sid = re.search(r'name="id" value="([0-9a-f-]{36})"', listing).group(1)
    page = await (await client.get(f"/sessions/{sid}")).text()
    assert "data-push" not in listing and "data-push" not in page and "Send" not in listing + page


async def test_a_share_that_fails_shows_its_error_on_the_page_and_live(web_client, tmp_path):
    """The real samba adapter, smbd not running: the reload fails and the page says so."""
    parts.require_tool("testparm", "smbcontrol")
    smbd = make_smbd(tmp_path / "smbd")          # configured, never started
    smbd.write_conf()
    client, core = await web_client(**{
        "samba.enabled": True, "samba.export_dir": str(tmp_path / "share"), "samba.announce": False,
        "samba.snippet_path": str(tmp_path / "samba" / "steno.conf"), "samba.formats": ["txt"],
        "samba.reload_command": smbd.reload_command(), "samba.close_command": smbd.close_command()})
    resp = await client.get("/api/v1/events")
    task = asyncio.create_task(adapter.run(core))
    try:
        assert await next_status(resp, "samba_state") == "off"               # the state when connected
        state = await next_status(resp, "samba_state", timeout=30)
        assert state.startswith("error: samba reload failed"), state
        html = await (await client.get("/devices")).text()
        assert htmllib.unescape(sharing_state(html)) == state
        assert re.search(r'id="sharing-state"[^>]*class="error"', html)
        assert (await (await client.get("/api/v1/status")).json())["samba_state"] == state
    finally:
        resp.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _leaked(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text or urllib.parse.quote(s) in text]


@pytest.mark.parametrize("how", ["connection string, url unquoted", "connection string, url with a typo",
                                 "config file, url with a typo"])
async def test_a_remotes_credentials_never_reach_the_jobs_error_the_page_or_the_log(web_client, rclone_tmp, caplog,
                                                                                     how):
    """A careless admin's rclone remote: a connection string written as rclone's docs show one, its URL not quoted
    (":webdav,url=http://user:pw@host/dav,pass=...:path": rclone then reads the URL's own colon as the remote's end),
    or a URL with a typo (a '%' not followed by two hex digits: Go's URL parser quotes the URL whole in its error),
    in the connection string or in the rclone config. rclone's error names the remote's path or URL, and it was the
    job's error as it was: the login's password in clear and the obscured one (which 'rclone reveal' turns back
    into the password) on the page and its API to every browser, in the live events, on D-Bus and in the log
    ("rclone:cloud: read metadata failed: Propfind "http/./steno:<password>@127.0.0.1:.../,pass=<obscured>:office"
    ..."). Now the error still says what failed, every credential in it masked."""
    parts.require_tool("rclone")
    srv = RcloneServer("webdav", rclone_tmp / "served", rclone_tmp)
    srv.served.mkdir()
    srv.start()
    try:
        obscured = subprocess.run(["rclone", "obscure", srv.password], check=True, capture_output=True,
                                  text=True).stdout.strip()
        conf = srv.client_config(rclone_tmp / "rclone.conf")
        url = f"http://{srv.user}:{srv.password}@127.0.0.1:{srv.port}/"
        if how == "connection string, url unquoted":
            remote = f":webdav,url={url},vendor=other,pass={obscured}:office"
        elif how == "connection string, url with a typo":
            remote = f":webdav,url='{url}%zz',vendor=other,pass={obscured}:office"
        else:
            conf.write_text(f"[nas]\ntype = webdav\nurl = {url}%zz\nvendor = other\npass = {obscured}\n")
            remote = "nas:office"
        client, core = await web_client(**{"rclone.config_file": str(conf),
                                           "rclone.remotes": [{"name": "cloud", "remote": remote, "timeout": 5}]})
        core.targets.register(RcloneKind(sleep=lambda s: None))         # as the daemon does (no waits between tries)
        listing = await (await client.get("/")).text()
        sid = re.findall(r'<input type="checkbox" name="id" value="([0-9a-f-]{36})"', listing)[0]
        events = await client.get("/api/v1/events")
        caplog.set_level(logging.DEBUG, logger="steno_exportd")
        r = await client.post("/api/v1/exports", json={"sessions": [sid], "target": "rclone:cloud"},
                              headers={"X-CSRF-Token": await csrf(client)})
        assert r.status == 202, await r.text()
        done = await job_done(client, (await r.json())["id"])
        streamed = b""
        with contextlib.suppress(asyncio.TimeoutError):
            while b'"state":"failed"' not in streamed:
                streamed += await asyncio.wait_for(events.content.readany(), 10)
        events.close()
        said = done["error"] or " ".join(x.get("error") or "" for x in done.get("results") or [])
        assert done["state"] == "failed" and said.startswith("rclone:cloud: "), done
        secrets = [srv.password, obscured]
        shown = {"the job's error": said, "the jobs' API": await (await client.get("/api/v1/jobs")).text(),
                 "the page": await (await client.get("/devices")).text(), "the live events": streamed.decode(),
                 "the log": "\n".join(r.getMessage() for r in caplog.records)}
        assert {where: _leaked(text, secrets) for where, text in shown.items() if _leaked(text, secrets)} == {}, said
    finally:
        srv.stop()
