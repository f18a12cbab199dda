"""One self-contained HTML page; with audio beside it, clicking a line seeks the player."""
from steno_exportd.render.textual import TemplateRenderer


class HtmlRenderer(TemplateRenderer):
    name, extension, media_type, version = "html", "html", "text/html; charset=utf-8", 1
    autoescape = True


RENDERER = HtmlRenderer()
