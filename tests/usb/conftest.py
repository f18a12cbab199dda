"""Fixtures for the USB tests: real udevd, system bus, udisksd and loop-image sticks."""
from tests.real_udev import sticks, usb_stack  # noqa: F401  (pytest fixtures)
