"""A full stick: the job's headline says full (not a recording missing on the recorder), with counts;
the device's free space is refreshed after the failed job."""
from __future__ import annotations

import shutil

from steno_exportd import events as ev
from steno_exportd.core import Core, ExportOptions
from tests.engine.test_results_truth import add, cfg_for, rec  # noqa: F401 - fixture
from tests.parts.loopfs import loop_fs


async def test_full_stick_headline_says_full_and_free_is_refreshed(tmp_path, rec):
    gone = await add(rec, missing=True, start_time="2026-10-01 08:00:00.000000")
    big = [await add(rec, audio=(3 << 20) + 4, start_time=f"2026-10-0{i} 09:00:00.000000")
           for i in range(2, 7)]
    with loop_fs(tmp_path, "ext4", size_mb=12, label="SMALL") as (mnt, _dev, _img):
        core = Core(cfg_for(tmp_path, rec, free_space_margin_mb=0, continue_on_error=True))
        await core.start()
        try:
            core.devices.change("fs_small", label="SMALL", mount_point=str(mnt), free=123,
                                state=ev.DeviceState.MOUNTED)
            snap = await core.export_sessions([gone, *big], ["txt", "audio"], str(mnt),
                                              ExportOptions(device_id="fs_small"), trusted=True)
            done = await core.jobs.wait(snap.id, 120)
            assert done.state == ev.JobState.FAILED
            assert done.error.startswith("target full"), done.error
            failed = [r for r in done.results if r.status == "failed"]
            assert failed and f"{len(failed)} of {len(done.results)}" in done.error, done.error
            assert "gone.wav" not in done.error.split(";")[0]
            assert {r.session_id: r.status for r in done.results}[gone] == "ok with warnings"
            assert core.devices.get("fs_small").free == shutil.disk_usage(mnt).free, "Free refreshed after the job"
        finally:
            await core.stop()
