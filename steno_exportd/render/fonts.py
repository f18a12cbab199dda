"""Find a TrueType font with Latin, Greek and Cyrillic (DejaVu Sans) for PDF reports."""
from __future__ import annotations

import glob
import os

SEARCH = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
          "/usr/local/share/fonts", "/usr/share/fonts")


def find_font(configured: str | None, warnings: list[str]) -> tuple[str | None, str | None]:
    """(regular, bold) paths: the configured font first, then a DejaVu Sans search; (None, None) if none."""
    if configured:
        if os.path.isfile(configured):
            bold = configured.replace(".ttf", "-Bold.ttf")
            return configured, bold if os.path.isfile(bold) else None
        warnings.append(f"font {configured} not found; searching for DejaVu Sans")
    for d in SEARCH:
        reg = os.path.join(d, "DejaVuSans.ttf")
        if os.path.isfile(reg):
            bold = os.path.join(d, "DejaVuSans-Bold.ttf")
            return reg, bold if os.path.isfile(bold) else None
    hits = sorted(glob.glob("/usr/share/fonts/**/DejaVuSans.ttf", recursive=True))
    if hits:
        bold = hits[0].replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
        return hits[0], bold if os.path.isfile(bold) else None
    return None, None
