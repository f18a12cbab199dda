"""Map steno_exportd errors to typed D-Bus errors org.silentsteno.Export1.Error.*."""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

from dbus_fast.errors import DBusError

from steno_exportd.dbus import ERROR_PREFIX
from steno_exportd.errors import BusyError, InvalidArgument, NotAllowedError, NotFoundError, StenoError

log = logging.getLogger(__name__)

NOT_FOUND = ERROR_PREFIX + "NotFound"
INVALID_ARGS = ERROR_PREFIX + "InvalidArgs"
BUSY = ERROR_PREFIX + "Busy"
NOT_AUTHORIZED = ERROR_PREFIX + "NotAuthorized"
FAILED = ERROR_PREFIX + "Failed"
STOPPING = "steno-exportd is stopping; try again once it runs"   # a call cut off at the stop (its cancel message)


def to_dbus_error(exc: BaseException) -> DBusError:
    """The typed D-Bus error for an exception, with a readable message (never a traceback's text)."""
    if isinstance(exc, DBusError):
        return exc
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, NotFoundError):
        return DBusError(NOT_FOUND, msg)
    if isinstance(exc, (NotAllowedError, PermissionError)):
        return DBusError(NOT_AUTHORIZED, msg)
    if isinstance(exc, InvalidArgument):
        return DBusError(INVALID_ARGS, msg)
    if isinstance(exc, BusyError):
        return DBusError(BUSY, msg)
    if isinstance(exc, (StenoError, OSError)):
        return DBusError(FAILED, msg)
    log.error("unexpected error in a D-Bus method", exc_info=exc)
    return DBusError(FAILED, "internal error in steno-exportd (details in its log)")


def mapped(fn: Callable) -> Callable:
    """Decorate a D-Bus method so raised errors become typed D-Bus errors."""
    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except asyncio.CancelledError as e:
                if e.args == (STOPPING,):       # cut off by the service's stop (logged there): a typed answer
                    raise DBusError(FAILED, STOPPING) from None
                raise
            except Exception as e:  # noqa: BLE001 - every error becomes a typed reply
                raise to_dbus_error(e) from e
    else:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise to_dbus_error(e) from e
    return wrapper
