"""The recorder's share on a real core: the adapter exports the demo library and smbd serves it."""
from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import subprocess

import pytest

from steno_exportd import events
from steno_exportd.samba import adapter
from steno_exportd.samba import share as samba
from steno_exportd.core import Core
from tests.parts.smbdata import client_kw, close, read_remote
from tests.configs import make_config
from tests.recorder_db import add_session_like, delete_session
from tests.parts import until

SHARE = "\\\\127.0.0.1\\meetings"
ANNOUNCED = f"steno-core-{secrets.token_hex(3)}"


@pytest.fixture
async def shared(smb_tmp, smbd_factory, tmp_path, avahi, demo_library):
    snippet = smb_tmp / "samba" / "steno-exportd.conf"
    smbd = smbd_factory(include=str(snippet))
    await asyncio.to_thread(smbd.start)
    db = await asyncio.to_thread(demo_library, tmp_path / "library", sessions=4, seed=6)
    cfg = make_config(tmp_path, samba={
        "enabled": True, "guest_ok": True, "export_dir": str(smb_tmp / "export"), "snippet_path": str(snippet),
        "formats": ["txt", "json"], "reload_command": smbd.reload_command(),
        "close_command": smbd.close_command(), "announce_name": ANNOUNCED})
    core = Core(cfg)
    await core.start()
    task = asyncio.create_task(adapter.run(core))
    kw = None
    try:
        kw = await asyncio.to_thread(client_kw, smbd.port)
        yield core, db, smb_tmp / "export", kw, avahi
    finally:
        if kw is not None:
            close(kw)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)   # the announcement withdrawn
        await core.stop()


def served_sums(kw) -> dict[str, str]:
    import smbclient
    try:
        if "SHA256SUMS" not in smbclient.listdir(SHARE, **kw):
            return {}
        text = read_remote(SHARE + "\\SHA256SUMS", kw).decode()
    except Exception:  # noqa: BLE001 - not served yet
        return {}
    return {rel: h for h, rel in (ln.split("  ", 1) for ln in text.splitlines())}


async def test_share_serves_the_library_and_follows_new_sessions(shared):
    import smbclient
    core, db, export, kw, avahi = shared
    n = len([s for s in core.library.list_sessions(exportable_only=True)])
    await until(lambda: len({r.split("/")[0] for r in served_sums(kw)}) == n, "the library on the share")
    sums = served_sums(kw)
    await until(lambda: ANNOUNCED in avahi.names(), "the share announced on mDNS")
    for rel, h in sums.items():
        data = await asyncio.to_thread(read_remote, SHARE + "\\" + rel.replace("/", "\\"), kw)
        assert hashlib.sha256(data).hexdigest() == h, rel
    # what the engine writes while it works is vetoed
    root = export / "SilentSteno"
    (root / f"{samba.TEMP_PREFIX}half").write_bytes(b"x")
    (root / f"2026 cut{samba.PARTIAL_SUFFIX}").mkdir()
    (root / samba.MARKER).write_bytes(b"incomplete\n")
    names = set(await asyncio.to_thread(smbclient.listdir, SHARE, **kw))
    assert {f"{samba.TEMP_PREFIX}half", f"2026 cut{samba.PARTIAL_SUFFIX}", samba.MARKER}.isdisjoint(names)
    assert "manifest.json" in names

    add_session_like(db, title="Shared when it appears")
    for _ in range(3):                        # several changes at once: one refresh job at a time
        await core.refresh_library()
    await until(lambda: any("Shared when it appears" in r for r in served_sums(kw)), "the new session")
    exports = [await core.jobs.wait(j.id, 60) for j in core.jobs.list() if j.operation == "export"]
    # the first export, and one more for the new session however many changes were seen meanwhile
    assert len(exports) == 2 and all(j.state == events.JobState.COMPLETED for j in exports), exports

    core.set_sharing(False)

    def gone():
        try:
            smbclient.listdir(SHARE, **kw)
        except Exception:  # noqa: BLE001 - the share is gone
            return True
        return False
    await until(gone, "the share to go away")
    await until(lambda: ANNOUNCED not in avahi.names(), "the mDNS announcement to be withdrawn")


async def test_config_reload_switches_sharing_and_auto_export(tmp_path, demo_library):
    """A switch changed in the config file takes effect on reload; an unchanged one keeps what
    D-Bus or the web page set since."""
    from steno_exportd.config import replace
    await asyncio.to_thread(demo_library, tmp_path / "library", sessions=1, seed=2)
    cfg = make_config(tmp_path, **{"samba.enabled": False})
    core = Core(cfg)
    await core.start()
    seen = []

    async def watch():
        async for ev in core.events.subscribe():
            if isinstance(ev, events.StatusChanged) and ev.key in ("samba_enabled", "auto_export"):
                seen.append((ev.key, ev.value))
    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    try:
        on = replace(cfg, **{"samba.enabled": True, "usb.auto_export.enabled": not cfg.usb.auto_export.enabled})
        await core.reload(on)
        assert core.sharing_enabled is True and core.auto_export is on.usb.auto_export.enabled
        core.set_sharing(False)                       # switched off over D-Bus
        await core.reload(on)                         # the same file again: D-Bus's choice stands
        assert core.sharing_enabled is False
        await until(lambda: ("samba_enabled", True) in seen and ("samba_enabled", False) in seen, "the events")
    finally:
        watcher.cancel()
        await core.stop()


async def test_a_session_deleted_on_the_recorder_leaves_the_share_but_not_a_stick(tmp_path, demo_library):
    """The share's folder mirrors the recorder (prune); an export to a stick or folder keeps it."""
    from steno_exportd.engine.options import ExportOptions
    db = await asyncio.to_thread(demo_library, tmp_path / "library", sessions=3, seed=4)
    cfg = make_config(tmp_path)
    core = Core(cfg)
    await core.start()
    share, stick = tmp_path / "share", tmp_path / "stick"
    share.mkdir()
    stick.mkdir()

    async def export(target, prune):
        job = await core.export_sessions("all", ["txt", "json"], str(target), ExportOptions(prune=prune),
                                         trusted=True)
        done = await core.jobs.wait(job.id, 60)
        assert done.state == events.JobState.COMPLETED, done

    def folders(target):
        return {p.name for p in (target / "SilentSteno").iterdir() if p.is_dir()}

    try:
        await export(share, True)
        await export(stick, False)
        gone = core.library.list_sessions(exportable_only=True)[0]
        manifest = json.loads((share / "SilentSteno" / "manifest.json").read_text())
        folder = manifest["sessions"][gone.uuid]["folder"]
        (share / "SilentSteno" / "2026 kept" ).mkdir()
        (share / "SilentSteno" / "2026 kept" / "notes.txt").write_text("an admin's file")
        before = folders(share)
        delete_session(db, gone.uuid)
        await core.refresh_library()
        await export(share, True)
        await export(stick, False)
        assert folders(share) == before - {folder}
        # a file someone else put in a deleted session's folder keeps it (only ours goes)
        other = core.library.list_sessions(exportable_only=True)[0]
        other_folder = json.loads((share / "SilentSteno" / "manifest.json").read_text())["sessions"][other.uuid]["folder"]
        (share / "SilentSteno" / other_folder / "extra.txt").write_text("not ours")
        delete_session(db, other.uuid)
        await core.refresh_library()
        await export(share, True)
        assert sorted(p.name for p in (share / "SilentSteno" / other_folder).iterdir()) == ["extra.txt"]
        sums = (share / "SilentSteno" / "SHA256SUMS").read_text()
        assert folder not in sums and gone.uuid not in (share / "SilentSteno" / "manifest.json").read_text()
        assert (share / "SilentSteno" / "2026 kept" / "notes.txt").exists()     # not ours: untouched
        assert folder in folders(stick), "an export to a stick is an archive: nothing is removed"
        # a file that cannot be removed (immutable here; in use on a NAS) does not fail the export:
        # that session's folder stays and goes with the next export once it can
        last = core.library.list_sessions(exportable_only=True)[0]
        last_folder = json.loads((share / "SilentSteno" / "manifest.json").read_text())["sessions"][last.uuid]["folder"]
        stuck = next((share / "SilentSteno" / last_folder).iterdir())
        subprocess.run(["chattr", "+i", str(stuck)], check=True)
        try:
            delete_session(db, last.uuid)
            await core.refresh_library()
            await export(share, True)                  # COMPLETED (asserted in export)
            assert last_folder in folders(share)
        finally:
            subprocess.run(["chattr", "-i", str(stuck)], check=True)
        await export(share, True)
        assert last_folder not in folders(share)
        assert last.uuid not in (share / "SilentSteno" / "manifest.json").read_text()
    finally:
        await core.stop()
