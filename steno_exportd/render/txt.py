"""Plain text: header, summary, action items, then `[HH:MM:SS] Speaker: text`."""
from steno_exportd.render.textual import TemplateRenderer


class TxtRenderer(TemplateRenderer):
    name, extension, media_type, version = "txt", "txt", "text/plain; charset=utf-8", 1


RENDERER = TxtRenderer()
