"""Names of the export formats and templates, without importing any renderer."""
from __future__ import annotations

FORMATS: tuple[str, ...] = (
    "txt", "md", "html", "json", "srt", "vtt", "csv", "xlsx", "pdf", "docx", "ics", "audio",
)
DOCUMENT_TEMPLATES: tuple[str, ...] = ("summary", "detailed", "action_items", "transcript")
