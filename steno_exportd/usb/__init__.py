"""USB sticks: udev.py (events), udisks.py (mount, unmount, power off), policy.py (what to export),
manager.py (one error boundary per stick)."""
