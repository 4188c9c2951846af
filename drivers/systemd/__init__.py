"""The systemd driver: cgctl groups as slices over systemd's D-Bus API (see driver.py)."""

from drivers.systemd.driver import SystemdDriver

__all__ = ["SystemdDriver"]
