"""Format and parse of every knob in the v2 and v1 tables, against the kernel's file syntax."""

from __future__ import annotations

import pytest

from drivers.api import CpuList, CpuMax, DriverError, IoMax, Knob, Value
from drivers.cgroupfs import v1, v2
from drivers.cgroupfs.knobs import KnobSpec, ParseError, Writes

MIB = 2**20
UNLIMITED_V1 = "9223372036854771712"


class Files:
    """A group's files (and its parent's) as text — stands in for the Context a writer reads."""

    def __init__(self, own: dict[str, str], parent: dict[str, str] | None = None) -> None:
        self.own, self.parent = own, parent or {}

    def read(self, file: str) -> str | None:
        return self.own.get(file)

    def read_parent(self, file: str) -> str | None:
        return self.parent.get(file)


def parse(spec: KnobSpec, files: dict[str, str], device: str | None = None) -> Value:
    return spec.parse(files.get, device)


def writes(spec: KnobSpec, value: Value, device: str | None = None, ctx: Files | None = None) -> list[Writes]:
    return spec.write(value, device, ctx or Files({}))


def test_tables_cover_every_knob() -> None:
    assert set(v2.TABLE) == set(Knob)
    assert set(v1.TABLE) | set(v1.UNSUPPORTED) == set(Knob)
    assert not set(v1.TABLE) & set(v1.UNSUPPORTED)
    assert all(spec.knob is knob for knob, spec in {**v2.TABLE, **v1.TABLE}.items())
    assert all(v2.TABLE[k].controller == k.controller for k in Knob)


# --- v2 -------------------------------------------------------------------------------------------

V2_CASES: list[tuple[Knob, str | None, str, Value]] = [
    (Knob.CPU_WEIGHT, None, "250\n", 250),
    (Knob.CPU_MAX, None, "max 100000\n", CpuMax(None, 100_000)),
    (Knob.CPU_MAX, None, "150000 100000\n", CpuMax(150_000, 100_000)),
    (Knob.CPUSET_CPUS, None, "0-1,3\n", CpuList((0, 1, 3))),
    (Knob.CPUSET_CPUS, None, "\n", CpuList()),
    (Knob.CPUSET_MEMS, None, "0\n", CpuList((0,))),
    (Knob.MEMORY_MIN, None, "0\n", 0),
    (Knob.MEMORY_LOW, None, "67108864\n", 64 * MIB),
    (Knob.MEMORY_HIGH, None, "max\n", None),
    (Knob.MEMORY_MAX, None, "536870912\n", 512 * MIB),
    (Knob.MEMORY_SWAP_MAX, None, "0\n", 0),
    (Knob.MEMORY_OOM_GROUP, None, "1\n", True),
    (Knob.MEMORY_OOM_GROUP, None, "0\n", False),
    (Knob.PIDS_MAX, None, "max\n", None),
    (Knob.PIDS_MAX, None, "256\n", 256),
]


@pytest.mark.parametrize(("knob", "device", "text", "value"), V2_CASES)
def test_v2_parse_and_format_are_inverse(knob: Knob, device: str | None, text: str, value: Value) -> None:
    spec = v2.TABLE[knob]
    (file,) = spec.files
    assert parse(spec, {file: text}, device) == value
    [[(written_file, written)]] = writes(spec, value, device)
    assert written_file == file
    assert written == (text.strip() if text.strip() else "")


def test_v2_io_weight_manages_only_the_default_line() -> None:
    spec = v2.TABLE[Knob.IO_WEIGHT]
    assert parse(spec, {"io.weight": "default 300\n8:0 50\n"}) == 300
    assert writes(spec, 300) == [[("io.weight", "default 300")]]
    with pytest.raises(ParseError):
        parse(spec, {"io.weight": "8:0 50\n"})


def test_v2_io_max_reads_the_device_line_and_absent_means_unlimited() -> None:
    spec = v2.TABLE[Knob.IO_MAX]
    text = "8:0 rbps=2097152 wbps=max riops=max wiops=120\n254:0 rbps=max wbps=1048576 riops=1000 wiops=max\n"
    assert parse(spec, {"io.max": text}, "8:0") == IoMax(rbps=2097152, wiops=120)
    assert parse(spec, {"io.max": text}, "254:0") == IoMax(wbps=1048576, riops=1000)
    assert parse(spec, {"io.max": ""}, "8:16") == IoMax()
    assert writes(spec, IoMax(rbps=52428800, wiops=500), "254:0") == [
        [("io.max", "254:0 rbps=52428800 wbps=max riops=max wiops=500")]
    ]
    with pytest.raises(DriverError):
        writes(spec, IoMax(), "/dev/vda")


def test_v2_memory_values_read_back_in_whole_pages() -> None:
    assert v2.TABLE[Knob.MEMORY_MAX].effective(1_000_000) == 1_000_000 // 4096 * 4096
    assert v2.TABLE[Knob.MEMORY_MAX].effective(None) is None
    assert v2.TABLE[Knob.CPU_WEIGHT].effective(33) == 33


def test_a_value_of_the_wrong_type_is_refused_before_any_write() -> None:
    with pytest.raises(DriverError):
        writes(v2.TABLE[Knob.CPU_WEIGHT], True)
    with pytest.raises(DriverError):
        writes(v2.TABLE[Knob.CPU_MAX], 5)
    with pytest.raises(ParseError):
        parse(v2.TABLE[Knob.CPU_MAX], {"cpu.max": "max\n"})


# --- v1 -------------------------------------------------------------------------------------------


def test_v1_cpu_weight_goes_through_shares() -> None:
    spec = v1.TABLE[Knob.CPU_WEIGHT]
    assert writes(spec, 200) == [[("cpu.shares", "2048")]]
    assert parse(spec, {"cpu.shares": "1024\n"}) == 100
    assert spec.effective(33) == 33


def test_v1_cpu_max_writes_period_then_quota_with_the_reverse_order_as_fallback() -> None:
    spec = v1.TABLE[Knob.CPU_MAX]
    assert writes(spec, CpuMax(50_000, 100_000)) == [
        [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")],
        [("cpu.cfs_quota_us", "50000"), ("cpu.cfs_period_us", "100000")],
    ]
    # removing the quota first always passes the kernel's bandwidth check
    assert writes(spec, CpuMax(None, 50_000)) == [
        [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "50000")]
    ]
    assert parse(spec, {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}) == CpuMax(None, 100_000)
    assert parse(spec, {"cpu.cfs_quota_us": "20000\n", "cpu.cfs_period_us": "100000\n"}) == CpuMax(20_000)


def test_v1_cpu_max_leaves_an_unchanged_period_unwritten() -> None:
    """Every cfs write makes the kernel re-check all task groups: the period is written only if it
    changes."""
    spec = v1.TABLE[Knob.CPU_MAX]
    now = Files({"cpu.cfs_period_us": "100000\n"})
    assert writes(spec, CpuMax(50_000, 100_000), ctx=now) == [[("cpu.cfs_quota_us", "50000")]]
    assert writes(spec, CpuMax(None, 100_000), ctx=now) == [[("cpu.cfs_quota_us", "-1")]]
    assert writes(spec, CpuMax(5_000, 10_000), ctx=now)[0] == [
        ("cpu.cfs_period_us", "10000"),
        ("cpu.cfs_quota_us", "5000"),
    ]


def test_v1_cpuset_reset_copies_the_parents_list() -> None:
    spec = v1.TABLE[Knob.CPUSET_CPUS]
    assert writes(spec, CpuList((1,))) == [[("cpuset.cpus", "1")]]
    ctx = Files({}, parent={"cpuset.cpus": "0-1\n"})
    assert writes(spec, CpuList(), ctx=ctx) == [[("cpuset.cpus", "0-1")]]
    with pytest.raises(DriverError, match="parent"):
        writes(spec, CpuList(), ctx=Files({}, parent={"cpuset.cpus": "\n"}))
    assert parse(v1.TABLE[Knob.CPUSET_MEMS], {"cpuset.mems": "0\n"}) == CpuList((0,))


def test_v1_memory_max_without_a_swap_limit_writes_only_the_memory_limit() -> None:
    spec = v1.TABLE[Knob.MEMORY_MAX]
    ctx = Files({"memory.limit_in_bytes": UNLIMITED_V1, "memory.memsw.limit_in_bytes": UNLIMITED_V1})
    assert writes(spec, 512 * MIB, ctx=ctx) == [[("memory.limit_in_bytes", str(512 * MIB))]]
    assert writes(spec, None, ctx=ctx) == [[("memory.limit_in_bytes", "-1")]]
    assert parse(spec, {"memory.limit_in_bytes": UNLIMITED_V1 + "\n"}) is None
    assert parse(spec, {"memory.limit_in_bytes": "536870912\n"}) == 512 * MIB


def test_v1_memory_max_keeps_the_swap_allowance_in_the_safe_order() -> None:
    spec = v1.TABLE[Knob.MEMORY_MAX]
    ctx = Files({"memory.limit_in_bytes": str(512 * MIB), "memory.memsw.limit_in_bytes": str(640 * MIB)})
    # raising: memsw first, so memsw >= memory holds after each write
    assert writes(spec, 1024 * MIB, ctx=ctx) == [
        [("memory.memsw.limit_in_bytes", str(1152 * MIB)), ("memory.limit_in_bytes", str(1024 * MIB))]
    ]
    # lowering: memory first
    assert writes(spec, 256 * MIB, ctx=ctx) == [
        [("memory.limit_in_bytes", str(256 * MIB)), ("memory.memsw.limit_in_bytes", str(384 * MIB))]
    ]
    # unlimited memory cannot keep a swap-only limit on v1: memsw is lifted too, first
    assert writes(spec, None, ctx=ctx) == [
        [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1")]
    ]


def test_v1_swap_max_is_memsw_minus_memory() -> None:
    spec = v1.TABLE[Knob.MEMORY_SWAP_MAX]
    ctx = Files({"memory.limit_in_bytes": str(512 * MIB)})
    assert writes(spec, 0, ctx=ctx) == [[("memory.memsw.limit_in_bytes", str(512 * MIB))]]
    assert writes(spec, None, ctx=ctx) == [[("memory.memsw.limit_in_bytes", "-1")]]
    files = {"memory.limit_in_bytes": str(512 * MIB), "memory.memsw.limit_in_bytes": str(640 * MIB)}
    assert parse(spec, files) == 128 * MIB
    assert (
        parse(spec, {"memory.limit_in_bytes": UNLIMITED_V1, "memory.memsw.limit_in_bytes": UNLIMITED_V1})
        is None
    )
    with pytest.raises(DriverError, match=r"needs memory\.max"):
        writes(spec, 0, ctx=Files({"memory.limit_in_bytes": UNLIMITED_V1}))


def test_v1_io_weight_uses_bfq_weight() -> None:
    spec = v1.TABLE[Knob.IO_WEIGHT]
    assert writes(spec, 300) == [[("blkio.bfq.weight", "300")]]
    assert writes(spec, 5000) == [[("blkio.bfq.weight", "1000")]]
    assert parse(spec, {"blkio.bfq.weight": "100\n"}) == 100
    assert parse(spec, {"blkio.bfq.weight": "default 250\n8:0 10\n"}) == 250
    assert spec.effective(5000) == 1000


def test_v1_io_max_uses_one_throttle_file_per_field_and_zero_removes() -> None:
    spec = v1.TABLE[Knob.IO_MAX]
    assert writes(spec, IoMax(rbps=1048576, wiops=500), "254:0") == [
        [
            ("blkio.throttle.read_bps_device", "254:0 1048576"),
            ("blkio.throttle.write_bps_device", "254:0 0"),
            ("blkio.throttle.read_iops_device", "254:0 0"),
            ("blkio.throttle.write_iops_device", "254:0 500"),
        ]
    ]
    files = {
        "blkio.throttle.read_bps_device": "254:0 1048576\n8:0 5\n",
        "blkio.throttle.write_bps_device": "",
        "blkio.throttle.read_iops_device": "",
        "blkio.throttle.write_iops_device": "254:0 500\n",
    }
    assert parse(spec, files, "254:0") == IoMax(rbps=1048576, wiops=500)
    assert parse(spec, files, "8:16") == IoMax()


def test_v1_pids_max() -> None:
    spec = v1.TABLE[Knob.PIDS_MAX]
    assert writes(spec, 5) == [[("pids.max", "5")]]
    assert writes(spec, None) == [[("pids.max", "max")]]
    assert parse(spec, {"pids.max": "max\n"}) is None


def test_v1_unsupported_knobs_carry_a_reason() -> None:
    for knob in (Knob.MEMORY_MIN, Knob.MEMORY_LOW, Knob.MEMORY_HIGH, Knob.MEMORY_OOM_GROUP):
        assert "v2" in v1.UNSUPPORTED[knob]
