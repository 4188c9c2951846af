"""Block device resolution for ``io.max``: a path or ``MAJ:MIN`` → the ``MAJ:MIN`` the kernel accepts.

The kernel's rule for io.max (and blkio.throttle.*) is "a whole device, not a partition": a partition's
number is refused with EINVAL or ENODEV. So a partition maps to its parent disk, found through sysfs:
``/sys/dev/block/MAJ:MIN`` links into ``/sys/devices/.../<disk>/<partition>``, a partition directory has
a ``partition`` file, and its parent directory is the disk, whose ``dev`` file holds the disk's number.

Stacked devices (device-mapper, md RAID, loop) are whole devices with their own queue and are limited
as such (a dm device may even span several disks, so there is no single disk to map it to); they are
kept as they are.
"""

from __future__ import annotations

import os
import re
import stat

_MAJ_MIN_RE = re.compile(r"([0-9]+):([0-9]+)")


class DeviceError(ValueError):
    """The spec names no usable block device; the message names the device and why."""


def resolve_device(spec: str, sysfs: str = "/sys") -> str:
    """``/dev/vda1`` or ``254:1`` → ``254:0`` (the whole disk); raises DeviceError."""
    spec = spec.strip()
    match = _MAJ_MIN_RE.fullmatch(spec)
    number = f"{int(match[1])}:{int(match[2])}" if match is not None else _device_number(spec)
    return whole_disk(number, spec, sysfs)


def _device_number(path: str) -> str:
    if not path.startswith("/"):
        raise DeviceError(f"{path}: not a device path or MAJ:MIN (write e.g. /dev/vda or 8:0)")
    try:
        info = os.stat(path)  # follows symlinks, so /dev/disk/by-id/... works
    except FileNotFoundError:
        raise DeviceError(f"{path}: no such device") from None
    except OSError as exc:
        raise DeviceError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISBLK(info.st_mode):
        raise DeviceError(f"{path}: not a block device")
    return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"


def whole_disk(number: str, spec: str, sysfs: str = "/sys") -> str:
    """The disk that holds block device ``number`` (itself unless it is a partition)."""
    link = os.path.join(sysfs, "dev", "block", number)
    if not os.path.exists(link):
        shown = spec if spec == number else f"{spec} ({number})"
        raise DeviceError(f"{shown}: no such block device on this host")
    device_dir = os.path.realpath(link)
    if not os.path.exists(os.path.join(device_dir, "partition")):
        return number
    disk_dir = os.path.dirname(device_dir)
    try:
        with open(os.path.join(disk_dir, "dev"), encoding="ascii") as handle:
            disk = handle.read().strip()
    except OSError as exc:
        raise DeviceError(
            f"{spec}: partition {number} has no readable parent disk ({exc.strerror})"
        ) from None
    if _MAJ_MIN_RE.fullmatch(disk) is None:
        raise DeviceError(f"{spec}: partition {number}'s parent disk has a bad number {disk!r}")
    return disk
