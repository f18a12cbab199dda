"""Push to an office NAS over SMB: push.py (the smb:<remote> target kind: claim, adoption, retries),
target.py (the share as an engine Target: pipelined writes and read-back, resumable temp files),
client.py (connections, clear fault messages), wire.py (fast WRITE requests), triggers.py
(schedules and push-on-new)."""
