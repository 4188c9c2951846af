"""Mode and mount detection from captured /proc/self/mountinfo texts."""

from __future__ import annotations

from drivers.api import CgroupMode
from drivers.cgroupfs.mountinfo import parse_mountinfo

# This project's host (captured 2026-11-29): separate cpu and cpuacct, name=systemd, controller-less v2.
HOST_HYBRID = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# The project's v2 test VM (tests/vm/run, captured 2026-11-29): cgroup2 only, with nsdelegate.
VM_V2 = """\
21 28 0:19 / /proc rw,relatime - proc proc rw
22 28 0:20 / /sys rw,relatime - sysfs sysfs rw
28 1 0:23 / / rw,relatime - overlay overlay rw,lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work
29 28 0:26 / /work/main rw,relatime - 9p project rw,dirsync,loose,access=client,msize=512000,trans=virtio
33 28 0:30 / /run rw,relatime - tmpfs tmpfs rw,mode=755,inode64
34 22 0:31 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""

# A systemd host booted with systemd.unified_cgroup_hierarchy=1 (Debian 12).
PURE_V2 = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
26 23 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
27 23 0:25 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
"""

# A legacy systemd v1 host: cpu,cpuacct and net_cls,net_prio co-mounted, no cgroup2 mount at all.
COMOUNTED_V1 = """\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 25 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
27 26 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:3 - tmpfs tmpfs ro,mode=755
28 27 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:4 - cgroup cgroup rw,xattr,\
release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
31 27 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:7 - cgroup cgroup \
rw,cpu,cpuacct
32 27 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup \
rw,net_cls,net_prio
33 27 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,memory
34 27 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,pids
35 27 0:31 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpuset,\
clone_children
36 27 0:24 / /sys/fs/cgroup/cpu rw,relatime shared:7 - cgroup cgroup rw,cpu,cpuacct
"""


def test_host_hybrid_layout_uses_v1_controllers_and_sees_unified_mount() -> None:
    layout = parse_mountinfo(HOST_HYBRID)
    assert layout.mode is CgroupMode.HYBRID
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.by_controller["cpu"].mountpoint == "/sys/fs/cgroup/cpu"
    assert layout.by_controller["cpuacct"].mountpoint == "/sys/fs/cgroup/cpuacct"
    assert layout.by_controller["cpu"] is not layout.by_controller["cpuacct"]
    named = [h for h in layout.hierarchies if h.name == "systemd"]
    assert len(named) == 1 and named[0].controllers == frozenset()
    assert set(layout.by_controller) == {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
    }


def test_the_test_vm_is_pure_v2() -> None:
    layout = parse_mountinfo(VM_V2)
    assert layout.mode is CgroupMode.V2
    assert layout.unified == "/sys/fs/cgroup" and layout.unified_options == {"rw", "nsdelegate"}
    assert layout.by_controller == {}


def test_pure_v2_layout() -> None:
    layout = parse_mountinfo(PURE_V2)
    assert layout.mode is CgroupMode.V2
    assert layout.unified == "/sys/fs/cgroup"
    assert layout.unified_options >= {"nsdelegate", "memory_recursiveprot"}
    assert layout.hierarchies == ()


def test_comounted_v1_controllers_share_one_hierarchy_and_first_mount_wins() -> None:
    layout = parse_mountinfo(COMOUNTED_V1)
    assert layout.mode is CgroupMode.V1
    assert layout.unified is None
    cpu = layout.by_controller["cpu"]
    assert cpu is layout.by_controller["cpuacct"]
    assert cpu.mountpoint == "/sys/fs/cgroup/cpu,cpuacct"  # the later bind mount at .../cpu is the same one
    assert cpu.controllers == frozenset({"cpu", "cpuacct"})
    assert layout.by_controller["net_prio"].mountpoint == "/sys/fs/cgroup/net_cls,net_prio"
    # mount flags are not controllers
    assert layout.by_controller["cpuset"].controllers == frozenset({"cpuset"})
    assert "xattr" not in layout.by_controller and "clone_children" not in layout.by_controller


def test_mounts_outside_the_mount_point_are_ignored_and_escapes_decoded() -> None:
    text = (
        "40 31 0:40 / /var/lib/container\\040x/cgroup rw - cgroup2 cgroup2 rw\n"
        "41 31 0:41 / /srv/my\\040cg rw - cgroup cgroup rw,memory\n"
    )
    assert parse_mountinfo(text).mode is None
    layout = parse_mountinfo(text, mountpoint="/srv")
    assert layout.by_controller["memory"].mountpoint == "/srv/my cg"


def test_describe_lists_every_mount_for_check() -> None:
    facts = parse_mountinfo(HOST_HYBRID).describe()
    assert facts["cgroup_mode"] == "hybrid"
    assert facts["cgroup2_mount"] == "/sys/fs/cgroup/unified"
    assert facts["cgroup1_mount[memory]"] == "/sys/fs/cgroup/memory"
    assert facts["cgroup1_mount[name=systemd]"] == "/sys/fs/cgroup/systemd"
