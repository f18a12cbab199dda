"""The version comes from one place, the Debian package version (debian/changelog's first line)."""
import re
from pathlib import Path

from setuptools import setup


def package_version() -> str:
    first = (Path(__file__).parent / "debian" / "changelog").read_text(encoding="utf-8").split("\n", 1)[0]
    m = re.match(r"steno-exportd \(([0-9][0-9A-Za-z.+~]*)\) ", first)
    if not m:
        raise SystemExit(f"debian/changelog: cannot read the version from {first!r}")
    return m.group(1).replace("~", "")   # a PEP 440 version; 0.2.0~rc1 -> 0.2.0rc1


setup(version=package_version())
