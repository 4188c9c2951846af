"""Driver lookup through the cgctl.drivers entry-point group (the installed distribution's metadata)."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from cgctl import registry
from drivers.cgroupfs import CgroupfsDriver
from drivers.systemd import SystemdDriver


def test_reader_agrees_with_importlib_metadata() -> None:
    expected = {ep.name: ep.value for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert registry._scan_entry_points(registry.ENTRY_POINT_GROUP) == expected
    assert {"cgroupfs", "systemd"} <= set(expected)


def test_built_in_drivers_resolve_by_name_and_unknown_names_are_refused() -> None:
    assert registry.driver_class("cgroupfs") is CgroupfsDriver
    assert registry.driver_class("systemd") is SystemdDriver
    with pytest.raises(registry.UnknownDriverError, match="known: cgroupfs, systemd"):
        registry.driver_class("nope")


def test_a_third_party_driver_registers_without_touching_cgctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "thirdparty.py").write_text(
        "from drivers.cgroupfs import CgroupfsDriver\nclass Mine(CgroupfsDriver):\n    name = 'mine'\n"
    )
    info = tmp_path / "thirdparty-1.0.dist-info"
    info.mkdir()
    (info / "entry_points.txt").write_text("[cgctl.drivers]\nmine = thirdparty:Mine\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    cls = registry.driver_class("mine")
    assert cls.__name__ == "Mine" and "mine" in registry.driver_names()
