"""One small file written whole or not at all under its final name."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_file(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """``data`` into ``path`` (created ``mode``): a temp name beside it, every byte written (os.write may write
    fewer: a nearly full card), fsync, rename; never a symlink followed. A failure leaves no temp file and the old
    ``path`` as it was. ``replace`` False: linked to ``path`` instead, which never replaces a file there
    (FileExistsError): of several writers at once exactly one gives ``path`` its content, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")     # a name of its own: two
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)  # writers at once
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)
            return
        os.link(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        os.unlink(tmp)              # (linked: its temp name goes; the file is saved either way)

