"""TrueType fonts for PDF reports: DejaVu Sans (Latin, Greek, Cyrillic, Arabic, Hebrew), then a CJK fallback.

reportlab embeds TrueType outlines only (no CFF/OpenType-PS), so the CJK fallback is a .ttf/.ttc:
Debian's fonts-droid-fallback (DroidSansFallbackFull.ttf) first, then whatever fontconfig knows.
"""
from __future__ import annotations

import functools
import glob
import os
import subprocess

SEARCH = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
          "/usr/local/share/fonts", "/usr/share/fonts")
CJK_KNOWN = ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
             "/usr/share/fonts/truetype/droid/DroidSansFallback.ttf",
             "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
             "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
             "/usr/share/fonts/truetype/arphic/uming.ttc")


def _bold_of(regular: str) -> str | None:
    for cand in (regular.replace(".ttf", "-Bold.ttf"), regular.replace("-Regular.ttf", "-Bold.ttf")):
        if cand != regular and os.path.isfile(cand):
            return cand
    return None


def dejavu() -> tuple[str | None, str | None]:
    """(regular, bold) paths of DejaVu Sans, or (None, None)."""
    for d in SEARCH:
        reg = os.path.join(d, "DejaVuSans.ttf")
        if os.path.isfile(reg):
            return reg, _bold_of(reg)
    hits = sorted(glob.glob("/usr/share/fonts/**/DejaVuSans.ttf", recursive=True))
    return (hits[0], _bold_of(hits[0])) if hits else (None, None)


def find_font(configured: str | None, warnings: list[str]) -> tuple[str | None, str | None]:
    """(regular, bold) paths: the configured font first, then a DejaVu Sans search; (None, None) if none."""
    if configured:
        if os.path.isfile(configured):
            return configured, _bold_of(configured)
        warnings.append(f"font {configured} not found; searching for DejaVu Sans")
    return dejavu()


@functools.lru_cache(maxsize=1)
def fallback_fonts() -> tuple[str, ...]:
    """TrueType fonts with CJK glyphs: known Debian paths, then fontconfig's answer for Japanese/Chinese."""
    out = [p for p in CJK_KNOWN if os.path.isfile(p)]
    for lang in ("ja", "zh-cn"):
        try:
            res = subprocess.run(["fc-list", "-f", "%{file}\n", f":lang={lang}"], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            break
        out += sorted(p for p in res.stdout.splitlines() if p.lower().endswith((".ttf", ".ttc")))
    return tuple(dict.fromkeys(out))
