"""Archives: the streamed ZIP is valid, its size is known ahead, layout matches a folder export."""
from __future__ import annotations

import subprocess
import tarfile
import zipfile

from steno_exportd import config
from steno_exportd.engine.archive import build_plan, zip_size, zip_stream
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from tests.engine.fakes import FakeRegistry, library


def _cfg(tmp_path):
    return config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")}})


def test_zip_stream_valid_and_sized(tmp_path):
    lib = library(tmp_path, 3, audio_size=3_000_000)
    plan = build_plan(lib, (1, 2, 3), ("txt", "json", "audio"), "detailed", True, _cfg(tmp_path), FakeRegistry())
    expected = zip_size(plan)
    out = tmp_path / "a.zip"
    with open(out, "wb") as f:
        for b in zip_stream(plan):
            f.write(b)
    assert out.stat().st_size == expected
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None
        names = z.namelist()
        assert "SilentSteno/SHA256SUMS" in names and "SilentSteno/manifest.json" in names
        infos = {i.filename: i for i in z.infolist()}
        assert any(n.endswith("audio.wav") and infos[n].compress_type == zipfile.ZIP_STORED for n in names)
        assert any(n.endswith(".txt") and infos[n].compress_type == zipfile.ZIP_DEFLATED for n in names)
        z.extractall(tmp_path / "x")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp_path / "x" / "SilentSteno").returncode == 0


def test_export_to_zip_and_tar(tmp_path):
    lib = library(tmp_path, 2)
    cfg = _cfg(tmp_path)
    for name in ("out.zip", "out.tar.gz"):
        res = run_export(lib, SimpleSpec(str(tmp_path / name), (1, 2), ("txt", "audio"), ExportOptions()), cfg,
                         reg=FakeRegistry())
        assert all(r.ok for r in res)
    assert zipfile.ZipFile(tmp_path / "out.zip").testzip() is None
    with tarfile.open(tmp_path / "out.tar.gz") as t:
        t.extractall(tmp_path / "t", filter="data")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp_path / "t" / "SilentSteno").returncode == 0
    assert not list(tmp_path.glob(".steno-tmp*"))
