"""The exported interfaces: Manager (root object), Device and Job.

No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures
from the annotations.
"""
from typing import TYPE_CHECKING

from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

from steno_exportd.dbus import DEVICE_IFACE, JOB_IFACE, MANAGER_IFACE
from steno_exportd.dbus.errors import mapped

if TYPE_CHECKING:
    from steno_exportd.dbus.service import Service

READ = PropertyAccess.READ


class Manager(ServiceInterface):
    """org.silentsteno.Export1.Manager on the root object; methods delegate to the service."""

    def __init__(self, service: "Service") -> None:
        super().__init__(MANAGER_IFACE)
        self._svc = service

    @method()
    @mapped
    async def ListSessions(self, filter: "a{sv}") -> "aa{sv}":  # noqa: A002
        return await self._svc.list_sessions(filter)

    @method()
    @mapped
    async def GetSession(self, id: "s") -> "a{sv}":  # noqa: A002
        return await self._svc.get_session(id)

    @method()
    @mapped
    async def SearchSessions(self, query: "s", limit: "u") -> "aa{sv}uu":
        return await self._svc.search_sessions(query, limit)

    @method()
    @mapped
    async def CreateShareLink(self, id: "s", options: "a{sv}") -> "a{sv}":  # noqa: A002
        return await self._svc.create_share_link(id, options)

    @method()
    @mapped
    async def ExportSessions(self, ids: "as", formats: "as", target: "s", options: "a{sv}") -> "o":
        return await self._svc.export_sessions(ids, formats, target, options)

    @method()
    @mapped
    async def EmailSessions(self, ids: "as", formats: "as", recipients: "as", options: "a{sv}") -> "t":
        return await self._svc.email_sessions(ids, formats, recipients, options)

    @method()
    @mapped
    def ListOutbox(self) -> "aa{sv}":
        return self._svc.list_outbox()

    @method()
    @mapped
    async def RetryMail(self, id: "t") -> "a{sv}":  # noqa: A002
        return await self._svc.retry_mail(id)

    @method()
    @mapped
    async def CancelMail(self, id: "t") -> "a{sv}":  # noqa: A002
        return await self._svc.cancel_mail(id)

    @method()
    @mapped
    def ListSchedules(self) -> "aa{sv}":
        return self._svc.list_schedules()

    @method()
    @mapped
    def ListFormats(self) -> "as":
        return self._svc.list_formats()

    @method()
    @mapped
    def ListTemplates(self) -> "as":
        return self._svc.list_templates()

    @method()
    @mapped
    async def Reload(self):
        await self._svc.reload()

    @method()
    @mapped
    async def StartPairing(self) -> "a{sv}":
        return await self._svc.start_pairing()

    @method()
    @mapped
    async def ListPairedBrowsers(self) -> "aa{sv}":
        return await self._svc.list_browsers()

    @method()
    @mapped
    async def RevokeBrowser(self, id: "s"):  # noqa: A002
        await self._svc.revoke_browser(id)

    @method()
    @mapped
    async def SetWebPassword(self, password: "s"):
        await self._svc.set_web_password(password)

    @method()
    @mapped
    async def SetSambaPassword(self, password: "s"):
        await self._svc.set_samba_password(password)

    @dbus_property(access=READ)
    def WebAccess(self) -> "s":
        return self._svc.core.web_access()

    @dbus_property(access=READ)
    def Version(self) -> "s":
        return self._svc.version

    @dbus_property(access=READ)
    def State(self) -> "s":
        return self._svc.state

    @dbus_property(access=READ)
    def Status(self) -> "s":
        return self._svc.status_text()

    @dbus_property(access=READ)
    def SessionCount(self) -> "u":
        return self._svc.session_count

    @dbus_property()
    def AutoExport(self) -> "b":
        return bool(self._svc.core.auto_export)

    @AutoExport.setter
    @mapped
    def AutoExport(self, value: "b"):
        self._svc.core.set_auto_export(bool(value))

    @dbus_property()
    def SambaEnabled(self) -> "b":
        return self._svc.core.sharing_enabled

    @SambaEnabled.setter
    @mapped
    def SambaEnabled(self, value: "b"):
        self._svc.core.set_sharing(bool(value))

    @dbus_property(access=READ)
    def SambaState(self) -> "s":
        return self._svc.core.samba_state

    @dbus_property(access=READ)
    def RemoteFolder(self) -> "s":
        return self._svc.core.remote_folder

    @dbus_property(access=READ)
    def HttpUrl(self) -> "s":
        return self._svc.http_url

    @dbus_property(access=READ)
    def NextScheduledRun(self) -> "t":
        return self._svc.next_scheduled_run()

    @signal()
    def OutboxUpdated(self, entry: "a{sv}") -> "a{sv}":
        return entry

    @signal()
    def SessionsChanged(self, added: "ax", changed: "ax", removed: "ax") -> "axaxax":
        return [list(added), list(changed), list(removed)]


class Device(ServiceInterface):
    """org.silentsteno.Export1.Device: one USB stick (filesystem)."""

    def __init__(self, service: "Service", props: dict) -> None:
        super().__init__(DEVICE_IFACE)
        self._svc = service
        self.props = props

    def update(self, props: dict) -> None:
        changed = {k: v for k, v in props.items() if self.props.get(k) != v}
        self.props = props
        if changed:
            self.emit_properties_changed(changed)

    @method()
    @mapped
    async def Export(self, ids: "as", formats: "as", options: "a{sv}") -> "o":
        return await self._svc.export_to_device(self.props["Id"], ids, formats, options)

    @method()
    @mapped
    async def Eject(self) -> "o":
        return await self._svc.eject(self.props["Id"])

    @dbus_property(access=READ)
    def Id(self) -> "s":
        return self.props["Id"]

    @dbus_property(access=READ)
    def Label(self) -> "s":
        return self.props["Label"]

    @dbus_property(access=READ)
    def Uuid(self) -> "s":
        return self.props["Uuid"]

    @dbus_property(access=READ)
    def FsType(self) -> "s":
        return self.props["FsType"]

    @dbus_property(access=READ)
    def DevicePath(self) -> "s":
        return self.props["DevicePath"]

    @dbus_property(access=READ)
    def Size(self) -> "t":
        return self.props["Size"]

    @dbus_property(access=READ)
    def Free(self) -> "t":
        return self.props["Free"]

    @dbus_property(access=READ)
    def MountPoint(self) -> "s":
        return self.props["MountPoint"]

    @dbus_property(access=READ)
    def State(self) -> "s":
        return self.props["State"]

    @dbus_property(access=READ)
    def Error(self) -> "s":
        return self.props["Error"]

    @dbus_property(access=READ)
    def SkipReason(self) -> "s":
        return self.props["SkipReason"]


class Job(ServiceInterface):
    """org.silentsteno.Export1.Job, modelled on org.freedesktop.UDisks2.Job."""

    def __init__(self, service: "Service", job_id: int, props: dict) -> None:
        super().__init__(JOB_IFACE)
        self._svc = service
        self.job_id = job_id
        self.props = props

    @method()
    @mapped
    async def Cancel(self):
        await self._svc.cancel(self.job_id)

    @signal()
    def Completed(self, success: "b", message: "s") -> "bs":
        return [success, message]

    @dbus_property(access=READ)
    def Operation(self) -> "s":
        return self.props["Operation"]

    @dbus_property(access=READ)
    def State(self) -> "s":
        return self.props["State"]

    @dbus_property(access=READ)
    def Progress(self) -> "d":
        return self.props["Progress"]

    @dbus_property(access=READ)
    def BytesDone(self) -> "t":
        return self.props["BytesDone"]

    @dbus_property(access=READ)
    def BytesTotal(self) -> "t":
        return self.props["BytesTotal"]

    @dbus_property(access=READ)
    def FilesDone(self) -> "u":
        return self.props["FilesDone"]

    @dbus_property(access=READ)
    def FilesTotal(self) -> "u":
        return self.props["FilesTotal"]

    @dbus_property(access=READ)
    def Rate(self) -> "t":
        return self.props["Rate"]

    @dbus_property(access=READ)
    def ExpectedEndTime(self) -> "t":
        return self.props["ExpectedEndTime"]

    @dbus_property(access=READ)
    def StartTime(self) -> "t":
        return self.props["StartTime"]

    @dbus_property(access=READ)
    def CurrentFile(self) -> "s":
        return self.props["CurrentFile"]

    @dbus_property(access=READ)
    def Sessions(self) -> "ax":
        return self.props["Sessions"]

    @dbus_property(access=READ)
    def Formats(self) -> "as":
        return self.props["Formats"]

    @dbus_property(access=READ)
    def Target(self) -> "s":
        return self.props["Target"]

    @dbus_property(access=READ)
    def Device(self) -> "o":
        return self.props["Device"]

    @dbus_property(access=READ)
    def Error(self) -> "s":
        return self.props["Error"]

    @dbus_property(access=READ)
    def Results(self) -> "aa{sv}":
        return self.props["Results"]
