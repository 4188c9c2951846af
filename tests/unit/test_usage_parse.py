"""Parsing of cgroupfs usage files, from file texts captured on real kernels (v2 6.x, v1 6.18)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from drivers.api import CpuMax, IoMax
from drivers.cgroupfs import usage as u

V2_FILES: dict[str, bytes] = {
    "cpu.stat": (
        b"usage_usec 2500000\nuser_usec 1500000\nsystem_usec 1000000\ncore_sched.force_idle_usec 0\n"
        b"nr_periods 40\nnr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\nburst_usec 0\n"
    ),
    "memory.current": b"10485760\n",
    "memory.stat": (
        b"anon 4194304\nfile 6291456\nkernel 524288\nkernel_stack 16384\npagetables 65536\n"
        b"sec_pagetables 0\npercpu 0\nsock 4096\nvmalloc 0\nshmem 8192\nzswap 0\nzswapped 0\n"
        b"file_mapped 2097152\nfile_dirty 12288\nfile_writeback 0\nswapcached 0\nanon_thp 0\n"
        b"inactive_anon 4194304\nactive_anon 0\ninactive_file 2097152\nactive_file 4194304\n"
        b"unevictable 0\nslab_reclaimable 200000\nslab_unreclaimable 100000\nslab 300000\n"
        b"pgfault 1234\npgmajfault 2\n"
    ),
    "memory.events": b"low 0\nhigh 3\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
    "memory.swap.current": b"0\n",
    "io.stat": (
        b"8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
        b"253:1 rbytes=100 wbytes=0 rios=3 wios=0 dbytes=0 dios=0\n"
    ),
    "pids.current": b"3\n",
    "pids.max": b"max\n",
    "cpu.pressure": (
        b"some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n"
        b"full avg10=0.00 avg60=0.00 avg300=0.00 total=250\n"
    ),
    "memory.pressure": (
        b"some avg10=0.00 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
    ),
    "cgroup.events": b"populated 1\nfrozen 0\n",
    "cpu.max": b"50000 100000\n",
    "cpu.weight": b"200\n",
    "memory.max": b"max\n",
    "memory.high": b"8388608\n",
    "memory.low": b"0\n",
    "io.max": b"8:0 rbps=1048576 wbps=max riops=max wiops=100\n",
    "io.weight": b"default 100\n",
}

V1_FILES: dict[str, bytes] = {
    "cpuacct.usage": b"3000000000\n",
    "cpuacct.stat": b"user 150\nsystem 50\n",
    "cpu.stat": b"nr_periods 12\nnr_throttled 4\nthrottled_time 2500000000\nnr_bursts 0\nburst_time 0\n",
    "memory.usage_in_bytes": b"20971520\n",
    "memory.stat": (
        b"cache 1\nrss 2\nrss_huge 0\nshmem 0\nmapped_file 0\ndirty 0\nwriteback 0\nswap 0\n"
        b"inactive_file 3\nactive_file 4\nhierarchical_memory_limit 9223372036854771712\n"
        b"total_cache 8388608\ntotal_rss 12582912\ntotal_rss_huge 0\ntotal_shmem 4096\n"
        b"total_mapped_file 1048576\ntotal_dirty 8192\ntotal_writeback 0\ntotal_swap 65536\n"
        b"total_inactive_anon 0\ntotal_active_anon 12582912\ntotal_inactive_file 25165824\n"
        b"total_active_file 2097152\ntotal_unevictable 0\n"
    ),
    "memory.max_usage_in_bytes": b"31457280\n",
    "memory.memsw.usage_in_bytes": b"23068672\n",
    "memory.failcnt": b"9\n",
    "memory.oom_control": b"oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    "blkio.throttle.io_service_bytes_recursive": (
        b"8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n"
        b"8:0 Total 12288\nTotal 12288\n"
    ),
    "blkio.throttle.io_serviced_recursive": b"8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
    "pids.current": b"4\n",
    "pids.max": b"64\n",
    "freezer.state": b"FROZEN\n",
    "cpu.cfs_quota_us": b"-1\n",
    "cpu.cfs_period_us": b"100000\n",
    "cpu.shares": b"1024\n",
    "memory.limit_in_bytes": b"67108864\n",
    "memory.memsw.limit_in_bytes": b"100663296\n",
    "blkio.throttle.read_bps_device": b"8:0 1048576\n",
    "blkio.throttle.write_iops_device": b"8:0 50\n",
}


def test_v2_files_convert_microseconds_and_keep_units() -> None:
    usage = u.usage_from_v2("/cgctl/web", V2_FILES)
    assert usage.cgroup == "/cgctl/web"
    assert usage.cpu_usage_seconds == 2.5
    assert usage.cpu_user_seconds == 1.5
    assert usage.cpu_system_seconds == 1.0
    assert usage.cpu_periods == 40
    assert usage.cpu_throttled_periods == 7
    assert usage.cpu_throttled_seconds == 0.35
    assert usage.memory_usage_bytes == 10485760
    assert usage.memory_working_set_bytes == 10485760 - 2097152
    assert usage.memory_stat_bytes["anon"] == 4194304
    assert usage.memory_stat_bytes["slab"] == 300000
    assert "pgfault" not in usage.memory_stat_bytes  # only the small byte-valued subset
    assert usage.memory_events == {
        "low": 0,
        "high": 3,
        "max": 5,
        "oom": 1,
        "oom_kill": 1,
        "oom_group_kill": 0,
    }
    assert usage.memory_swap_usage_bytes == 0
    assert usage.io == {
        "8:0": {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2},
        "253:1": {"rbytes": 100, "wbytes": 0, "rios": 3, "wios": 0},
    }
    assert usage.pids_current == 3
    assert usage.pids_max == math.inf
    assert usage.pressure_some_seconds == {"cpu": 1.5, "memory": 42e-6}
    assert usage.pressure_full_seconds == {"cpu": 250e-6, "memory": 7e-6}
    assert usage.frozen is False
    assert usage.populated is True


def test_v2_missing_memory_peak_stays_none_never_zero() -> None:
    usage = u.usage_from_v2("/g", V2_FILES)
    assert "memory.peak" not in V2_FILES
    assert usage.memory_peak_bytes is None
    with_peak = u.usage_from_v2("/g", {**V2_FILES, "memory.peak": b"123456\n"})
    assert with_peak.memory_peak_bytes == 123456


def test_v2_limits_parse_max_as_unlimited() -> None:
    limits = u.usage_from_v2("/g", V2_FILES).limits
    assert limits["cpu.max"] == CpuMax(50000, 100000)
    assert limits["cpu.weight"] == 200
    assert limits["io.weight"] == 100
    assert limits["memory.max"] is None
    assert limits["memory.high"] == 8388608
    assert limits["memory.low"] == 0
    assert limits["io.max[8:0]"] == IoMax(rbps=1048576, wbps=None, riops=None, wiops=100)
    assert limits["pids.max"] is None  # "max"


def test_v2_working_set_is_clamped_at_zero() -> None:
    files = {"memory.current": b"1000\n", "memory.stat": b"inactive_file 5000\n"}
    assert u.usage_from_v2("/g", files).memory_working_set_bytes == 0


def test_v2_absent_files_give_no_fields() -> None:
    usage = u.usage_from_v2("/", {"cpu.stat": b"usage_usec 10\nuser_usec 6\nsystem_usec 4\n"})
    assert usage.cpu_usage_seconds == 10e-6
    assert usage.cpu_periods is None  # cpu controller not enabled: no bandwidth fields
    assert usage.memory_usage_bytes is None
    assert usage.memory_working_set_bytes is None
    assert usage.pids_max is None
    assert usage.frozen is None
    assert usage.pressure_some_seconds == {}
    assert usage.limits == {}


def test_v1_files_convert_nanoseconds_and_user_hz_ticks() -> None:
    usage = u.usage_from_v1("/cgctl/web", V1_FILES, clk_tck=100.0)
    assert usage.cpu_usage_seconds == 3.0
    assert usage.cpu_user_seconds == 1.5
    assert usage.cpu_system_seconds == 0.5
    assert usage.cpu_periods == 12
    assert usage.cpu_throttled_periods == 4
    assert usage.cpu_throttled_seconds == 2.5
    assert usage.memory_usage_bytes == 20971520
    # inactive_file (24 MiB) exceeds the fuzzy v1 usage (20 MiB): clamped, not negative
    assert usage.memory_working_set_bytes == 0
    assert usage.memory_stat_bytes == {
        "anon": 12582912,
        "file": 8388608,
        "shmem": 4096,
        "file_mapped": 1048576,
        "file_dirty": 8192,
        "file_writeback": 0,
        "active_file": 2097152,
        "inactive_file": 25165824,
    }
    assert usage.memory_peak_bytes == 31457280
    assert usage.memory_swap_usage_bytes == 65536  # memory.stat total_swap, exact
    assert usage.memory_events == {"max": 9, "oom_kill": 2}
    assert usage.io == {"8:0": {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2}}
    assert usage.pids_current == 4
    assert usage.pids_max == 64.0
    assert usage.frozen is True
    assert usage.populated is None


def test_v1_limits_map_to_v2_knobs() -> None:
    limits = u.usage_from_v1("/g", V1_FILES).limits
    assert limits["cpu.max"] == CpuMax(None, 100000)
    assert limits["cpu.weight"] == 100  # 1024 shares: the driver's linear mapping, default to default
    assert limits["memory.max"] == 67108864
    assert "memory.low" not in limits  # v1 has no equivalent
    assert limits["memory.swap.max"] == 100663296 - 67108864
    assert limits["io.max[8:0]"] == IoMax(rbps=1048576, wiops=50)


def test_v1_swap_falls_back_to_memsw_minus_usage() -> None:
    files = {"memory.usage_in_bytes": b"1000\n", "memory.memsw.usage_in_bytes": b"1500\n"}
    assert u.usage_from_v1("/g", files).memory_swap_usage_bytes == 500
    assert u.usage_from_v1("/g", {"memory.usage_in_bytes": b"1000\n"}).memory_swap_usage_bytes is None


def test_v1_freezing_is_not_frozen() -> None:
    assert u.usage_from_v1("/g", {"freezer.state": b"FREEZING\n"}).frozen is False
    assert u.usage_from_v1("/g", {"freezer.state": b"THAWED\n"}).frozen is False


def test_malformed_content_gives_none_not_an_exception() -> None:
    usage = u.usage_from_v2(
        "/g",
        {
            "cpu.stat": b"usage_usec abc\nuser_usec\n",
            "memory.current": b"\n",
            "pids.max": b"lots\n",
            "io.stat": b"8:0 rbytes=x wbytes=1\n\n",
            "cpu.pressure": b"some total=\n",
            "cpu.max": b"\n",
        },
    )
    assert usage.cpu_usage_seconds is None
    assert usage.memory_usage_bytes is None
    assert usage.pids_max is None
    assert usage.io == {"8:0": {"wbytes": 1}}
    assert usage.pressure_some_seconds == {}
    assert "cpu.max" not in usage.limits


def _make_tree(root: Path, files: dict[str, bytes], *groups: str) -> None:
    for group in groups:
        directory = root / group.strip("/")
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)


def test_read_v2_reads_a_tree_and_drops_vanished_groups(tmp_path: Path) -> None:
    _make_tree(tmp_path, V2_FILES, "/a", "/a/b")
    result = u.read_v2(str(tmp_path), ["/a", "a/b", "/gone"], limits=True)
    assert sorted(result) == ["/a", "/a/b"]
    assert result["/a/b"].cgroup == "/a/b"
    assert result["/a"].cpu_usage_seconds == 2.5
    assert result["/a"].limits["cpu.weight"] == 200
    assert u.read_v2(str(tmp_path), ["/a"])["/a"].limits == {}


def test_read_v1_uses_each_controllers_hierarchy(tmp_path: Path) -> None:
    hierarchies = {}
    for ctrl in ("cpu", "cpuacct", "memory", "pids"):
        hierarchies[ctrl] = str(tmp_path / ctrl)
        own = {k: v for k, v in V1_FILES.items() if k.split(".")[0] == ctrl}
        _make_tree(tmp_path / ctrl, own, "/x")
    unified = tmp_path / "unified"
    _make_tree(unified, {"cpu.pressure": V2_FILES["cpu.pressure"]}, "/x")
    result = u.read_v1(hierarchies, ["/x", "/y"], unified=str(unified))
    assert list(result) == ["/x"]
    usage = result["/x"]
    assert usage.cpu_usage_seconds == 3.0
    assert usage.cpu_user_seconds == 150 / os.sysconf("SC_CLK_TCK")
    assert usage.memory_usage_bytes == 20971520
    assert usage.pids_max == 64.0
    assert usage.frozen is None  # no freezer hierarchy given
    assert usage.pressure_some_seconds == {"cpu": 1.5}


def test_read_file_handles_files_larger_than_one_chunk(tmp_path: Path) -> None:
    big = b"".join(b"%d:0 rbytes=1 wbytes=2 rios=3 wios=4\n" % i for i in range(2000))
    (tmp_path / "io.stat").write_bytes(big)
    assert u.read_file(str(tmp_path / "io.stat")) == big
    assert u.read_file(str(tmp_path / "absent")) is None


def test_v1_hierarchies_from_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n"
    )
    assert u.v1_hierarchies(str(mounts)) == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for path in (
        "system.slice/a.service",
        "system.slice/b.service",
        "system.slice/run-1.scope",
        "kubepods/pod1/c1",
        "cgctl/web/deep/er",
    ):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "system.slice" / "cpu.stat").write_text("usage_usec 0\n")  # files are not groups
    (tmp_path / "link").symlink_to(tmp_path / "cgctl")  # never followed
    return tmp_path


def test_discover_walks_from_prefixes_with_depth_limit(tree: Path) -> None:
    assert u.discover(str(tree), ["/system.slice"], max_depth=1) == [
        "/system.slice",
        "/system.slice/a.service",
        "/system.slice/b.service",
        "/system.slice/run-1.scope",
    ]
    assert u.discover(str(tree), ["/cgctl"], max_depth=0) == ["/cgctl"]
    assert u.discover(str(tree), ["/absent"]) == []


def test_discover_include_and_exclude_prune_subtrees(tree: Path) -> None:
    found = u.discover(
        str(tree), ["/"], include=["/system.slice/*.service", "/cgctl/*"], exclude=["/kubepods*"]
    )
    assert found == [
        "/cgctl/web",
        "/cgctl/web/deep",
        "/cgctl/web/deep/er",
        "/system.slice/a.service",
        "/system.slice/b.service",
    ]
    everything = u.discover(str(tree), ["/"], exclude=["/kubepods", "*.scope"])
    assert "/kubepods/pod1" not in everything  # excluded group's subtree is pruned
    assert "/system.slice/run-1.scope" not in everything
    assert "/" in everything
    assert not any(path.startswith("/link") for path in everything)
