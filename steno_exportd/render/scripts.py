"""Writing direction and language of a paragraph from its script; visual order for renderers without bidi.

The recorder does not store a language per line, so a paragraph is marked by what its letters
tell for sure: Arabic, Hebrew, Greek, Japanese (kana), Korean (hangul), Chinese (Han only), Thai.
Latin and Cyrillic paragraphs keep the document's language (config render.language).
"""
from __future__ import annotations

import functools
import re
import unicodedata

# Strong right-to-left letters (Hebrew, Arabic, Syriac, Thaana, NKo, ... and their presentation forms).
_RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc\U00010800-\U00010fff\U0001e800-\U0001efff]")
_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_SCRIPTS = (("ar", re.compile("[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufefc]")),
            ("he", re.compile("[\u0590-\u05ff\ufb1d-\ufb4f]")),
            ("el", re.compile("[\u0370-\u03ff\u1f00-\u1fff]")),
            ("th", re.compile("[\u0e00-\u0e7f]")))


def has_rtl(text: str) -> bool:
    """True when text holds a right-to-left letter (it needs bidi reordering to be drawn)."""
    return _RTL.search(text) is not None


def direction(text: str) -> str:
    """'rtl' or 'ltr': the direction of the first strong letter (Unicode bidi rule P2)."""
    if not has_rtl(text):
        return "ltr"
    for c in text:
        b = unicodedata.bidirectional(c)
        if b in ("R", "AL"):
            return "rtl"
        if b == "L":
            return "ltr"
    return "ltr"


def language(text: str, default: str) -> str:
    """The language the script of text shows for sure, else default."""
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if _HAN.search(text):
        return "zh"
    letters = [c for c in text if c.isalpha()]
    for lang, rx in _SCRIPTS:
        hits = len(rx.findall(text))
        if hits and hits * 2 >= len(letters):
            return lang
    return default


def is_cjk(lang: str) -> bool:
    return lang in ("ja", "zh", "ko")


_ARABIC = _SCRIPTS[0][1]


def shape(text: str) -> str:
    """Arabic letters replaced by their joined presentation forms (logical order kept)."""
    if _ARABIC.search(text) is None:
        return text
    import arabic_reshaper          # only the PDF renderer needs this
    return arabic_reshaper.reshape(text)


def reorder(line: str, base: str | None = None) -> str:
    """One line in visual (left-to-right drawing) order; base 'R'/'L' or None (first strong letter)."""
    from bidi import get_display    # only the PDF renderer needs this
    return get_display(line, base_dir=base)


@functools.lru_cache(maxsize=4096)
def visual(line: str) -> str:
    """A single line shaped and in visual order (for renderers that draw glyphs left to right)."""
    return reorder(shape(line))
