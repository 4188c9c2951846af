"""cgctl: declarative cgroup resource control and accounting."""

__version__ = "0.1.0"
