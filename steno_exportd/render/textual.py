"""Renderers that go through a Jinja2 template (txt, md, html)."""
from __future__ import annotations

from steno_exportd.model import Session
from steno_exportd.render import templates
from steno_exportd.render.base import Renderer, RenderOptions
from steno_exportd.render.common import SPEAKER_COLOURS, one_line, session_context


class TemplateRenderer(Renderer):
    """A text format rendered by template `<name>.j2` (user folder first)."""

    mergeable = True
    autoescape = False

    def filename(self, session: Session | None, options: RenderOptions) -> str:
        suffix = "" if options.template == "detailed" else f"-{options.template}"
        return f"{self.basename}{suffix}.{self.extension}"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        sections = options.doc_template(warnings).sections
        ctx = {"sessions": [session_context(s, sections, options.time_zone, options.language) for s in sessions],
               "merged": merged, "company": one_line(options.company), "accent": options.accent_color,
               "audio": options.audio_filename if not merged else None, "template": options.template,
               "lang": options.language, "palette": SPEAKER_COLOURS}
        text = templates.render(f"{self.name}.j2", ctx, options.template_dir, warnings, self.autoescape)
        return text.encode("utf-8")
