"""Push to an office NAS over SMB: push.py (client and verified push), wire.py (fast WRITE requests),
job.py (the push job), triggers.py (schedules and push-on-new)."""
