"""Block devices: cgctl names them ``MAJ:MIN`` (the kernel's io.max key), systemd wants a device *path*
in ``IO*Max`` properties and resolves it back to the device number itself (stat → st_rdev)."""

from __future__ import annotations

import os
import stat

from drivers.api import DriverError


def parse_majmin(device: str) -> tuple[int, int]:
    try:
        major_s, minor_s = device.split(":", 1)
        major, minor = int(major_s), int(minor_s)
    except ValueError:
        raise DriverError("a device must be given as MAJ:MIN", target="io.max", value=device) from None
    if major < 0 or minor < 0:
        raise DriverError("a device must be given as MAJ:MIN", target="io.max", value=device)
    return major, minor


def _rdev_of(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def device_path(device: str, *, sysfs: str = "/sys", dev: str = "/dev") -> str:
    """``254:0`` → ``/dev/vda``: the node named by sysfs's uevent (DEVNAME), else udev's
    ``/dev/block/MAJ:MIN`` link; either must really be that block device."""
    major, minor = parse_majmin(device)
    wanted = os.makedev(major, minor)
    candidates: list[str] = []
    try:
        with open(f"{sysfs}/dev/block/{major}:{minor}/uevent", encoding="utf-8") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    candidates.append(f"{dev}/{line.split('=', 1)[1].strip()}")
    except OSError:
        pass
    candidates.append(f"{dev}/block/{major}:{minor}")
    for candidate in candidates:
        if _rdev_of(candidate) == wanted:
            return candidate
    raise DriverError(
        "no block device node for this device (systemd needs a device path for IO*Max)",
        target="io.max",
        value=device,
        cause=f"tried {', '.join(candidates)}",
    )


def majmin_of(path: str) -> str | None:
    """A device path from a unit property → ``MAJ:MIN``; None if it is not a block device node."""
    rdev = _rdev_of(path)
    return None if rdev is None else f"{os.major(rdev)}:{os.minor(rdev)}"
