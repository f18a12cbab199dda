"""The D-Bus service (dbus-fast): org.silentsteno.Export1 names, paths and interfaces."""

BUS_NAME = "org.silentsteno.Export1"
ROOT_PATH = "/org/silentsteno/Export1"
MANAGER_IFACE = "org.silentsteno.Export1.Manager"
DEVICE_IFACE = "org.silentsteno.Export1.Device"
JOB_IFACE = "org.silentsteno.Export1.Job"
ERROR_PREFIX = "org.silentsteno.Export1.Error."


def job_path(job_id: int) -> str:
    return f"{ROOT_PATH}/jobs/{int(job_id)}"


def device_path(device_id: str) -> str:
    """Object path of a device; characters outside [A-Za-z0-9_] are escaped as _xx."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c == "_") else f"_{ord(c):02x}" for c in device_id)
    return f"{ROOT_PATH}/devices/{safe or '_'}"
