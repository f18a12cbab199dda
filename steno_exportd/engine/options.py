"""ExportOptions: what a caller asks of one export job."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class ExportOptions:
    """Options of one export job; None means "the configured default"."""

    template: str | None = None           # PDF/DOCX template
    merge: bool = False                   # one merged document per format instead of per session
    include_audio: bool | None = None
    naming: str | None = None             # pattern | id | title | sequential
    pattern: str | None = None            # folder pattern when naming = pattern
    overwrite_foreign: bool | None = None
    verify: bool | None = None
    priority: int = 0                     # higher runs first
    sessions: str = "all"                 # selector when ids == "new" | "all" | "since_days"
    since_days: int = 30
    continue_on_error: bool | None = None
    device_id: str = ""                   # set when the target is a device
    target_name: str = ""                 # what a person recognises, e.g. "KINGSTON (sdb1)"
    prune: bool = False                   # remove our folders of sessions deleted on the recorder
                                          # (a mirror the daemon owns: the Samba share's folder)
