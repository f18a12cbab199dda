"""Markdown: the plain text report with headings, tables and checkboxes."""
from steno_exportd.render.textual import TemplateRenderer


class MdRenderer(TemplateRenderer):
    name, extension, media_type, version = "md", "md", "text/markdown; charset=utf-8", 1


RENDERER = MdRenderer()
