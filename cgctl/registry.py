"""Finding drivers: every driver, built-in or third-party, registers under the ``cgctl.drivers``
entry-point group, and cgctl looks it up there by name (``driver:`` in the policy, ``--driver``)."""

from __future__ import annotations

from importlib.metadata import entry_points

from drivers.api import Driver, DriverOptions

ENTRY_POINT_GROUP = "cgctl.drivers"


class UnknownDriverError(Exception):
    pass


def driver_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def driver_class(name: str) -> type[Driver]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise UnknownDriverError(f"entry point {ep.value!r} for driver {name!r} is not a Driver")
            return cls
    known = ", ".join(driver_names()) or "none installed"
    raise UnknownDriverError(f"unknown driver {name!r} (known: {known})")


def choose_driver(name: str) -> tuple[type[Driver], str]:
    """Resolve ``auto`` the way ARCHITECTURE.md says: systemd where systemd runs the host (it is then the
    single writer of the tree), cgroupfs otherwise. Returns the class and why it was picked."""
    if name != "auto":
        return driver_class(name), f"driver {name!r} requested"
    try:
        systemd = driver_class("systemd")
    except UnknownDriverError:
        systemd = None
    if systemd is not None:
        ok, why = systemd.usable()
        if ok:
            return systemd, f"auto: {why or 'systemd is PID 1 and owns the cgroup tree'}"
        cgroupfs = driver_class("cgroupfs")
        return cgroupfs, f"auto: cgroupfs, because systemd driver is not usable ({why})"
    return driver_class("cgroupfs"), "auto: cgroupfs (no systemd driver installed)"


def make_driver(name: str, options: DriverOptions) -> tuple[Driver, str]:
    cls, why = choose_driver(name)
    return cls(options), why
