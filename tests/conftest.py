"""Root fixtures: the real parts every test folder may use (udev, D-Bus, udisks2, smbd, avahi,
systemd, Chromium, loop filesystems, the daemon as a process)."""

pytest_plugins = [      # a module another one imports comes first (assertion rewriting)
    "tests.parts.udev",
    "tests.parts.dbus",
    "tests.parts.smbd",
    "tests.parts.daemon",
    "tests.parts.systemd",
    "tests.parts.loopfs",
    "tests.parts.chromium",
    "tests.parts.avahi",
    "tests.parts.netns",
]
