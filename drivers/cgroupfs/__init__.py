"""The cgroupfs driver: cgctl writes the cgroup filesystem itself (cgroup v2, v1 or hybrid)."""

from drivers.cgroupfs.driver import CgroupfsDriver

__all__ = ["CgroupfsDriver"]
