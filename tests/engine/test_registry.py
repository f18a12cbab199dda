"""Target kinds chosen by the target string: what each accepts, refuses and opens."""
from __future__ import annotations

import pytest

from steno_exportd import config
from steno_exportd.engine.registry import ArchiveKind, Checked, FolderKind, local
from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.errors import InvalidArgument, TargetError


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "exports" / "stick").mkdir(parents=True)
    (tmp_path / "recorder" / "audio").mkdir(parents=True)
    return config.from_dict({"recorder": {"db_path": str(tmp_path / "recorder" / "silent_steno.db"),
                                          "data_dir": str(tmp_path / "recorder" / "audio")},
                             "export": {"allowed_dirs": [str(tmp_path / "exports")]}})


def test_each_string_goes_to_its_kind(cfg, tmp_path):
    targets = local()
    assert isinstance(targets.kind_for(str(tmp_path / "exports" / "a.ZIP")), ArchiveKind)
    assert targets.kind_for(str(tmp_path / "exports" / "a.zip")).fmt == "zip"
    assert targets.kind_for(str(tmp_path / "exports" / "a.tgz")).fmt == "tar.gz"
    assert targets.kind_for(str(tmp_path / "exports" / "a.tar.gz")).fmt == "tar.gz"
    assert isinstance(targets.kind_for(str(tmp_path / "exports" / "stick")), FolderKind)
    with pytest.raises(InvalidArgument, match=r"^smb: targets are not supported here \(known: FILE.zip, "
                                               r"FILE.tar.gz, a folder\)$"):
        targets.kind_for("smb:office")
    with pytest.raises(InvalidArgument, match="^no target given$"):
        targets.kind_for("")


def test_a_folder_named_like_an_archive_is_exported_into_not_beside(cfg, tmp_path):
    """A stick labelled 'REC.zip' is mounted at /media/<user>/REC.zip. Exported to by hand (the touchscreen's
    ExportToDevice, the page's "device", the CLI's --to), its mount point was taken for an archive to write: a temp
    file of every selected session beside the mount point, outside the stick, then 'refusing to replace a dir'. A
    folder named like an archive is a folder: the export lands in it, and nothing is written beside it."""
    from steno_exportd.engine.export import SimpleSpec, run_export
    from steno_exportd.engine.options import ExportOptions
    from tests.fakes import library
    stick = tmp_path / "exports" / "media" / "REC1234.zip"
    stick.mkdir(parents=True)
    assert isinstance(local().kind_for(str(stick)), FolderKind)
    res = run_export(library(tmp_path, 1), SimpleSpec(str(stick), (1,), ("txt",), ExportOptions()), cfg)
    assert [r.ok for r in res] == [True], res
    assert sorted(p.name for p in stick.parent.iterdir()) == ["REC1234.zip"]
    assert (stick / "SilentSteno" / "SHA256SUMS").is_file()


def test_folders_allowed_existing_and_never_the_recorders(cfg, tmp_path):
    targets = local()
    stick = str(tmp_path / "exports" / "stick")
    assert targets.check(stick, cfg) == Checked("export", stick)
    with pytest.raises(InvalidArgument, match="is not under an allowed folder"):
        targets.check(str(tmp_path), cfg)
    assert targets.check(str(tmp_path), cfg, trusted=True).operation == "export"     # the CLI, a stick
    with pytest.raises(InvalidArgument, match="target folder does not exist"):
        targets.check(str(tmp_path / "exports" / "gone"), cfg)
    for d in ("recorder", "recorder/audio"):
        with pytest.raises(InvalidArgument, match="refusing to export into the recorder's data folder"):
            targets.check(str(tmp_path / d), cfg, trusted=True)
    kind = targets.kind_for(stick)
    assert kind.root(stick, cfg) == "SilentSteno" and not kind.again(TargetError("x"), 1, lambda: False)
    with kind.open(stick, cfg, None) as t:
        assert isinstance(t, DirectoryTarget) and t.root == tmp_path / "exports" / "stick"
    with pytest.raises(TargetError, match="recorder's data folder"):
        with kind.open(str(tmp_path / "recorder"), cfg, None):
            pass


def test_a_folder_gone_by_the_time_its_job_runs_is_a_pulled_stick(cfg, tmp_path):
    """A stick yanked between the export's check and its start: udisks has already removed the mount point, so the
    job found no folder and failed with 'target folder does not exist: /media/root/REC...' (seen in CI), not with
    the 'target gone (stick pulled?)' a person acts on. A folder that was checked and is gone when opened is a
    pulled target."""
    targets = local()
    stick = tmp_path / "exports" / "stick"
    assert targets.check(str(stick), cfg).operation == "export"
    stick.rmdir()
    with pytest.raises(TargetError, match="target folder does not exist") as e:
        with targets.kind_for(str(stick)).open(str(stick), cfg, None):
            pass
    assert e.value.kind == "pulled"


def test_archives_need_an_allowed_folder(cfg, tmp_path):
    targets = local()
    ok = str(tmp_path / "exports" / "all.zip")
    assert targets.check(ok, cfg) == Checked("export", ok)
    with pytest.raises(InvalidArgument, match="is not under an allowed folder"):
        targets.check(str(tmp_path / "all.tar.gz"), cfg)


def test_a_registered_kind_takes_its_scheme(cfg):
    class Office:
        label = "office:<x>"

        def matches(self, target):
            return target.startswith("office:")

        def check(self, target, cfg, *, trusted):
            return Checked("push", target, ("txt",))
    targets = local()
    kind = Office()
    targets.register(kind)
    assert targets.kind_for("office:a") is kind
    assert targets.check("office:a", cfg) == Checked("push", "office:a", ("txt",))
    with pytest.raises(InvalidArgument, match=r"known: FILE.zip, FILE.tar.gz, office:<x>, a folder"):
        targets.kind_for("ftp:x")
