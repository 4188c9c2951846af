"""The freeze timeout path: a freeze the kernel does not confirm in time is reverted.

A real kernel cannot be made to withhold confirmation on demand, so these tests give the waiting code
plain files in a tmp directory that never report the frozen state (the one place a fake stands in for
the kernel). The confirmed path runs against real kernels in tests/host and tests/v2.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from drivers.api import FreezeTimeoutError
from drivers.cgroupfs.freezer import set_frozen_v1, set_frozen_v2
from drivers.cgroupfs.safefs import GroupDir


def group_dir(path: Path) -> GroupDir:
    return GroupDir(os.open(path, os.O_RDONLY | os.O_DIRECTORY), str(path), ("web",))


def test_v2_freeze_not_confirmed_in_time_is_reverted(tmp_path: Path) -> None:
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (tmp_path / "cgroup.freeze").write_text("0")
    start = time.monotonic()
    with group_dir(tmp_path) as gd, pytest.raises(FreezeTimeoutError) as info:
        set_frozen_v2(gd, True, timeout=0.05)
    assert 0.05 <= time.monotonic() - start < 1.0
    assert (tmp_path / "cgroup.freeze").read_text() == "0"  # the request was taken back
    assert info.value.group == ("web",) and "reverted" in str(info.value)


def test_v2_thaw_under_a_frozen_ancestor_returns_at_once(tmp_path: Path) -> None:
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    (tmp_path / "cgroup.freeze").write_text("1")
    with group_dir(tmp_path) as gd:
        assert set_frozen_v2(gd, False, timeout=5, ancestor_frozen=True) == 0.0
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


def test_v1_freeze_stuck_in_freezing_is_thawed_back(tmp_path: Path) -> None:
    # A plain file keeps whatever follows the written text: "FROZEN" over "FREEZING\n" reads
    # "FROZENNG", i.e. never FROZEN, like a freezer stuck in FREEZING.
    (tmp_path / "freezer.state").write_text("FREEZING\n")
    (tmp_path / "freezer.parent_freezing").write_text("0\n")
    with group_dir(tmp_path) as gd, pytest.raises(FreezeTimeoutError, match="FROZENNG"):
        set_frozen_v1(gd, True, timeout=0.12)
    assert (tmp_path / "freezer.state").read_text().startswith("THAWED")
