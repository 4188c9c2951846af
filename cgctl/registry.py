"""Finding drivers: every driver, built-in or third-party, registers under the ``cgctl.drivers``
entry-point group, and cgctl looks it up there by name (``driver:`` in the policy, ``--driver``).

The lookup reads the installed distributions' ``entry_points.txt`` directly: ``importlib.metadata``
costs ≈ 20 ms of imports (email, zipfile, csv…) on every ``cgctl freeze``, a command whose whole budget is
150 ms (bench/RESULTS.md). ``importlib.metadata`` stays the fallback for layouts this reader does not know
(eggs, zip imports).
"""

from __future__ import annotations

import importlib
import os
import sys

from drivers.api import NOT_BOOTED, Driver, DriverOptions, systemd_booted

ENTRY_POINT_GROUP = "cgctl.drivers"


class UnknownDriverError(Exception):
    pass


def _scan_entry_points(group: str) -> dict[str, str]:
    """name → "module:attr" for ``group``, from every ``*.dist-info/entry_points.txt`` on sys.path.
    Earlier sys.path entries win, as importlib.metadata's do."""
    found: dict[str, str] = {}
    for directory in sys.path:
        try:
            entries = [e.name for e in os.scandir(directory or ".") if e.name.endswith(".dist-info")]
        except OSError:
            continue
        for name in sorted(entries):
            try:
                with open(os.path.join(directory or ".", name, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            section = None
            for raw in text.splitlines():
                line = raw.strip()
                if not line or line.startswith(("#", ";")):
                    continue
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1].strip()
                elif section == group and "=" in line:
                    key, value = (part.strip() for part in line.split("=", 1))
                    found.setdefault(key, value)
    return found


def _entry_points() -> dict[str, str]:
    found = _scan_entry_points(ENTRY_POINT_GROUP)
    if found:
        return found
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def driver_names() -> list[str]:
    return sorted(_entry_points())


def driver_class(name: str) -> type[Driver]:
    target = _entry_points().get(name)
    if target is None:
        known = ", ".join(driver_names()) or "none installed"
        raise UnknownDriverError(f"unknown driver {name!r} (known: {known})")
    module_name, _, attr = target.partition(":")
    obj: object = importlib.import_module(module_name.strip())
    for part in attr.strip().split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise UnknownDriverError(f"entry point {target!r} for driver {name!r} is not a Driver")
    return obj


def choose_driver(name: str) -> tuple[type[Driver], str]:
    """Resolve ``auto`` the way ARCHITECTURE.md says: systemd where systemd runs the host (it is then the
    single writer of the tree), cgroupfs otherwise. Returns the class and why it was picked."""
    if name != "auto":
        return driver_class(name), f"driver {name!r} requested"
    if not systemd_booted():  # no systemd driver can be usable: not worth importing one (~60 ms)
        why = NOT_BOOTED
        return driver_class("cgroupfs"), f"auto: cgroupfs, because systemd driver is not usable ({why})"
    try:
        systemd = driver_class("systemd")
    except UnknownDriverError:
        return driver_class("cgroupfs"), "auto: cgroupfs (no systemd driver installed)"
    ok, why = systemd.usable()
    if ok:
        return systemd, f"auto: {why or 'systemd is PID 1 and owns the cgroup tree'}"
    return driver_class("cgroupfs"), f"auto: cgroupfs, because systemd driver is not usable ({why})"


def make_driver(name: str, options: DriverOptions) -> tuple[Driver, str]:
    cls, why = choose_driver(name)
    return cls(options), why
