"""MAJ:MIN ↔ device paths for systemd's IO*Max properties, against a scratch /sys and /dev."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from drivers.api import DriverError
from drivers.systemd import devices


def make_tree(tmp_path: Path, devname: str, major: int, minor: int) -> tuple[Path, Path]:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    entry = sysfs / "dev" / "block" / f"{major}:{minor}"
    entry.mkdir(parents=True)
    (entry / "uevent").write_text(f"MAJOR={major}\nMINOR={minor}\nDEVNAME={devname}\nDEVTYPE=disk\n")
    dev.mkdir()
    return sysfs, dev


def mknod_or_skip(path: Path, major: int, minor: int) -> None:
    try:
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("creating a block device node needs CAP_MKNOD")


def test_device_path_follows_devname_and_checks_the_node(tmp_path: Path) -> None:
    sysfs, dev = make_tree(tmp_path, "vda", 254, 0)
    mknod_or_skip(dev / "vda", 254, 0)
    assert devices.device_path("254:0", sysfs=str(sysfs), dev=str(dev)) == f"{dev}/vda"
    assert devices.majmin_of(f"{dev}/vda") == "254:0"


def test_a_node_with_another_number_is_not_taken(tmp_path: Path) -> None:
    sysfs, dev = make_tree(tmp_path, "vda", 254, 0)
    mknod_or_skip(dev / "vda", 254, 16)
    with pytest.raises(DriverError, match="no block device node") as info:
        devices.device_path("254:0", sysfs=str(sysfs), dev=str(dev))
    assert info.value.value == "254:0"


def test_udev_link_is_the_fallback(tmp_path: Path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    (dev / "block").mkdir(parents=True)
    mknod_or_skip(dev / "block" / "8:16", 8, 16)
    assert devices.device_path("8:16", sysfs=str(sysfs), dev=str(dev)) == f"{dev}/block/8:16"


@pytest.mark.parametrize("bad", ["8", "8:x", "-1:0", ""])
def test_bad_device_numbers(bad: str) -> None:
    with pytest.raises(DriverError, match="MAJ:MIN"):
        devices.parse_majmin(bad)


def test_regular_files_are_not_devices(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert devices.majmin_of(str(tmp_path / "f")) is None
    assert devices.majmin_of(str(tmp_path / "missing")) is None
