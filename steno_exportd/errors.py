"""The project's exceptions: one base class, a few meaningful subclasses."""
from __future__ import annotations


class StenoError(Exception):
    """Base of every error steno-exportd raises on purpose."""


class ConfigError(StenoError):
    """The configuration is invalid; ``problems`` lists every ``key.path: reason``."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class SourceError(StenoError):
    """The recorder database (or a file it names) cannot be read."""


class SourceLockedError(SourceError):
    """The recorder's database stayed locked longer than recorder.lock_timeout (transient: retried)."""


class NotFoundError(StenoError):
    """An unknown session, job, device, format or template."""


class SessionReplaced(NotFoundError):
    """The session id a caller holds names another meeting now (another uuid: the recorder's database was restored
    from a backup since it was looked up)."""


class InvalidArgument(StenoError):
    """A caller passed something that makes no sense."""


class NotAllowedError(InvalidArgument):
    """A caller asked for something it may not have (a target outside export.allowed_dirs)."""


class BusyError(StenoError):
    """The device or target cannot take this now (a stick not mounted, being ejected)."""


class RenderError(StenoError):
    """A renderer failed for one session."""


class TargetError(StenoError):
    """The export target cannot be written (read-only, gone, hostile content)."""

    kind = ""        # what a person acts on: "full", "pulled", "read-only", "permission" or "" (other)

    def __init__(self, *args: object, kind: str | None = None) -> None:
        super().__init__(*args)
        if kind is not None:
            self.kind = kind


class NameTaken(TargetError):
    """A rename or a create that never replaces found its name taken (another writer was first)."""


class TargetFullError(TargetError):
    """Not enough free space, or a file over the filesystem's per-file limit."""

    kind = "full"


class VerifyError(StenoError):
    """Read-back verification found different bytes than were written."""


class CancelledJob(StenoError):
    """A job was cancelled by request."""


class Throttled(StenoError):
    """Too many attempts (a password, a PIN) or too many at once: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1.0, float(retry_after))
