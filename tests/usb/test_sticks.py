"""The loop-image sticks the USB tests plug in: an insertion is the stick's own partitions, or a clear failure.

A stick's loop may still carry partitions of an earlier stick (udisks' Loop.Delete leaves partx-made partitions
behind) that udev or udisks hold open for a moment; partx then fails quietly (EBUSY). The daemon was left looking
at the old partition: 'the stick was never seen', and a CI run went red for it.
"""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.parts.udev import loop_partitions


pytestmark = pytest.mark.real


def sectors(part: str) -> int:
    return int(Path(f"/sys/class/block/{part}/size").read_text())


def test_a_stick_replaces_the_busy_partitions_an_earlier_stick_left_on_its_loop(sticks):
    earlier = sticks("ext4", part_sizes_mb=[20, 40], labels=["RECOLDA", "RECOLDB"])
    loop = earlier.insert().removesuffix("p1")
    name = os.path.basename(loop)
    subprocess.run(["udevadm", "settle", "-t", "10"], check=False)
    subprocess.run(["losetup", "-d", loop], check=True)          # as Loop.Delete does: the partitions stay
    earlier.loop = ""
    assert loop_partitions(loop) == [f"{name}p1", f"{name}p2"]
    stick = sticks("ext4", size_mb=64)
    fd = os.open(f"{loop}p1", os.O_RDONLY)                       # held open a while, as a prober does
    release = threading.Timer(1.0, os.close, (fd,))
    release.start()
    try:
        part = stick.insert()
    finally:
        release.join()
    assert stick.loop == loop, "the stick did not get the loop the earlier one left (the lowest free)"
    assert loop_partitions(loop) == [f"{name}p1"], "the earlier stick's second partition is still there"
    assert sectors(os.path.basename(part)) == 62 * 2048, "p1 is still the earlier stick's 20 MB partition"
    label = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", part], capture_output=True, text=True)
    assert label.stdout.strip() == stick.label
