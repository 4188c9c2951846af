"""io.max device resolution: paths and MAJ:MIN → the whole disk's MAJ:MIN, through a fake sysfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cgctl.devices import DeviceError, resolve_device


def _block(sysfs: Path, devices_dir: str, number: str, *, partition: bool = False) -> None:
    """Add a block device to a fake sysfs: /sys/devices/<dir> with a dev file and its /sys/dev/block link."""
    device = sysfs / "devices" / devices_dir
    device.mkdir(parents=True)
    (device / "dev").write_text(number + "\n")
    if partition:
        (device / "partition").write_text(devices_dir.rsplit("/", 1)[-1][-1] + "\n")
    links = sysfs / "dev" / "block"
    links.mkdir(parents=True, exist_ok=True)
    (links / number).symlink_to(os.path.relpath(device, links))


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    _block(root, "pci0000:00/0000:00:1f.2/ata1/host0/block/sda", "8:0")
    _block(root, "pci0000:00/0000:00:1f.2/ata1/host0/block/sda/sda1", "8:1", partition=True)
    _block(root, "pci0000:00/0000:00:1f.2/ata1/host0/block/sda/sda2", "8:2", partition=True)
    _block(root, "pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1", "259:0")
    _block(root, "pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/nvme0n1p3", "259:3", partition=True)
    _block(root, "virtual/block/dm-0", "253:0")
    return root


def test_whole_disk_number_stays_as_is(sysfs: Path) -> None:
    assert resolve_device("8:0", str(sysfs)) == "8:0"
    assert resolve_device("259:0", str(sysfs)) == "259:0"


def test_partition_number_maps_to_its_disk(sysfs: Path) -> None:
    assert resolve_device("8:1", str(sysfs)) == "8:0"
    assert resolve_device("8:2", str(sysfs)) == "8:0"
    assert resolve_device("259:3", str(sysfs)) == "259:0"


def test_device_mapper_devices_are_whole_devices(sysfs: Path) -> None:
    assert resolve_device("253:0", str(sysfs)) == "253:0"


def test_leading_zeros_and_spaces_are_normalized(sysfs: Path) -> None:
    assert resolve_device(" 08:001 ", str(sysfs)) == "8:0"


def test_unknown_number_is_an_error_naming_it(sysfs: Path) -> None:
    with pytest.raises(DeviceError, match=r"^9:9: no such block device on this host$"):
        resolve_device("9:9", str(sysfs))


def test_partition_whose_disk_has_no_dev_file_is_an_error(sysfs: Path) -> None:
    (sysfs / "devices/pci0000:00/0000:00:1f.2/ata1/host0/block/sda/dev").unlink()
    with pytest.raises(DeviceError, match=r"^8:1: partition 8:1 has no readable parent disk"):
        resolve_device("8:1", str(sysfs))


def test_block_device_path_resolves_through_st_rdev(tmp_path: Path, sysfs: Path) -> None:
    node = tmp_path / "sda1"
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(8, 1))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    assert resolve_device(str(node), str(sysfs)) == "8:0"
    link = tmp_path / "by-id-disk-part1"
    link.symlink_to(node)  # like /dev/disk/by-id/...: symlinks are followed
    assert resolve_device(str(link), str(sysfs)) == "8:0"


def test_block_device_path_unknown_to_sysfs_names_path_and_number(tmp_path: Path, sysfs: Path) -> None:
    node = tmp_path / "sdz"
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(65, 240))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with pytest.raises(DeviceError) as info:
        resolve_device(str(node), str(sysfs))
    assert str(info.value) == f"{node} (65:240): no such block device on this host"


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DeviceError) as info:
        resolve_device(str(missing))
    assert str(info.value) == f"{missing}: no such device"


def test_regular_file_and_char_device_are_not_block_devices(tmp_path: Path) -> None:
    regular = tmp_path / "disk.img"
    regular.write_bytes(b"")
    with pytest.raises(DeviceError) as info:
        resolve_device(str(regular))
    assert str(info.value) == f"{regular}: not a block device"
    with pytest.raises(DeviceError, match=r"^/dev/null: not a block device$"):
        resolve_device("/dev/null")


def test_relative_name_is_refused() -> None:
    with pytest.raises(
        DeviceError, match=r"^vda: not a device path or MAJ:MIN \(write e.g. /dev/vda or 8:0\)$"
    ):
        resolve_device("vda")


def _host_block_devices() -> list[tuple[str, str, bool]]:
    """(name, MAJ:MIN, is_partition) for every block device the real sysfs lists with a /dev node."""
    found: list[tuple[str, str, bool]] = []
    base = Path("/sys/class/block")
    if not base.is_dir():
        return found
    for entry in sorted(base.iterdir()):
        dev = Path("/dev") / entry.name
        if dev.exists() and stat.S_ISBLK(dev.stat().st_mode) and (entry / "dev").exists():
            found.append((entry.name, (entry / "dev").read_text().strip(), (entry / "partition").exists()))
    return found


def test_real_host_disks_resolve_to_their_sysfs_numbers() -> None:
    disks = [(name, number) for name, number, partition in _host_block_devices() if not partition]
    if not disks:
        pytest.skip("no block devices with /dev nodes on this host")
    for name, number in disks:
        assert resolve_device(f"/dev/{name}") == number
        assert resolve_device(number) == number


def test_real_host_partitions_resolve_to_their_disk() -> None:
    parts = [(name, number) for name, number, partition in _host_block_devices() if partition]
    if not parts:
        pytest.skip("this host has no partitions")
    for name, _number in parts:
        disk_dir = Path(os.path.realpath(f"/sys/class/block/{name}")).parent
        assert resolve_device(f"/dev/{name}") == (disk_dir / "dev").read_text().strip()
