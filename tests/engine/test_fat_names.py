"""A session titled "Réunion café" exported to a FAT stick image here was refused: "permission denied on the target".
The refusal is fusefat's, not our name's: fusefat (the FUSE FAT driver these machines mount FAT through, having no
kernel vfat) answers EPERM to creating any name with a character beyond ASCII, one we never made too, while the
name we map the title to is a valid FAT long name (VFAT keeps such names in UTF-16: the Pi's kernel vfat and every
desktop write them) and exfat-fuse, a FAT-family driver with the same long-name rules, takes it."""
from __future__ import annotations

import errno
import os
import unicodedata

from steno_exportd.engine.naming import MAX_NAME, folder_name, safe_name
from tests.parts.loopfs import loop_fs

TITLE = "Réunion café"
# what VFAT refuses in a long name (Microsoft's FAT specification, "Long Directory Entries"): these, the control
# characters 0x00-0x1F, and a name ending in a dot or a space; at most 255 UTF-16 code units
FAT_FORBIDDEN = set('"*/:<>?\\|') | {chr(c) for c in range(0x20)}
DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


class _Summary:
    id, short_id, uuid, location, start_time = 7, "a1b2c3", "0000-uuid", None, None
    title = TITLE


def _ours(title: str) -> str:
    """The folder name an export gives a session of this title (the 'title' naming, as safe_name makes it)."""
    s = _Summary()
    s.title = title
    return safe_name(folder_name(s, "title", ""))


def _valid_fat_long_name(name: str) -> bool:
    return (0 < len(name.encode("utf-16-le")) // 2 <= MAX_NAME and not (set(name) & FAT_FORBIDDEN)
            and not name.endswith((".", " ")) and name.split(".")[0].upper() not in DEVICES)


def test_the_name_we_give_a_french_title_is_a_valid_fat_long_name_and_keeps_its_accents():
    """Our mapping is not what refused it: "Réunion café" is mapped to itself (accents kept, composed: NFC, as a
    title typed on a Mac arrives decomposed), a valid FAT long name."""
    for title in (TITLE, unicodedata.normalize("NFD", TITLE)):
        name = _ours(title)
        assert name == unicodedata.normalize("NFC", TITLE), name
        assert _valid_fat_long_name(name), name


def test_fusefat_refuses_any_name_beyond_ascii_and_a_fat_family_driver_takes_ours(tmp_path):
    """On a FAT stick image mounted through fusefat, creating a folder or a file named with 'é' is refused EPERM
    whatever the name (ours, or one no export makes), while plain ASCII names are made: fusefat's limit, which the
    Pi (kernel vfat) does not have. On an exFAT image (exfat-fuse) the name we map the title to is made and listed
    back as it was written."""
    ours = _ours(TITLE)
    with loop_fs(tmp_path, "vfat", size_mb=64, label="FATNAMES") as (mnt, _dev, _img):
        for name in (ours, "é", "Cafe\u0301.txt"):
            try:
                os.mkdir(mnt / name)
            except OSError as e:
                assert e.errno == errno.EPERM, (name, e)
            else:
                raise AssertionError(f"fusefat made {name!r}: the export's refusal was not its limit")
        os.mkdir(mnt / "Reunion cafe")
        (mnt / "Reunion cafe" / "transcript.txt").write_bytes(b"ok\n")
        assert (mnt / "Reunion cafe" / "transcript.txt").read_bytes() == b"ok\n"
    with loop_fs(tmp_path, "exfat", size_mb=64, label="EXNAMES") as (mnt, _dev, _img):
        os.mkdir(mnt / ours)
        (mnt / ours / "transcript.txt").write_bytes(b"ok\n")
        assert ours in os.listdir(mnt) and (mnt / ours / "transcript.txt").read_bytes() == b"ok\n"
