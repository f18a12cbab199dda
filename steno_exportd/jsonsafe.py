"""JSON someone else wrote (a store, a stick, a request, the recorder's database), parsed with json.loads; text
nested too deeply for the parser (200 KB of '[') is malformed like any other: json.JSONDecodeError, a ValueError
every caller handles, not the RecursionError json.loads raises, which escaped those handlers (a manifest.json
that failed every push instead of being rebuilt, a request body answered with a traceback)."""
from __future__ import annotations

import json
from typing import Any


def loads(raw: str | bytes | bytearray) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", raw if isinstance(raw, str) else "", 0) from None
