"""The v2 ↔ v1 formulas (drivers/cgroupfs/convert.py), with exact numbers."""

from __future__ import annotations

import pytest

from drivers.cgroupfs import convert


@pytest.mark.parametrize(
    ("weight", "shares"),
    [(100, 1024), (1, 10), (200, 2048), (50, 512), (33, 338), (10000, 102400), (9999, 102390)],
)
def test_cpu_weight_to_shares_is_linear_with_default_to_default(weight: int, shares: int) -> None:
    assert convert.weight_to_shares(weight) == shares
    assert convert.shares_to_weight(shares) == weight


def test_every_cpu_weight_survives_the_round_trip_through_shares() -> None:
    assert all(convert.shares_to_weight(convert.weight_to_shares(w)) == w for w in range(1, 10001))


@pytest.mark.parametrize(
    ("shares", "weight"), [(2, 1), (5, 1), (262144, 10000), (102400, 10000), (2000, 195)]
)
def test_shares_to_weight_clamps_to_the_v2_range(shares: int, weight: int) -> None:
    assert convert.shares_to_weight(shares) == weight


def test_weight_to_shares_keeps_sibling_ratios() -> None:
    assert convert.weight_to_shares(300) == 3 * convert.weight_to_shares(100)


@pytest.mark.parametrize(("weight", "bfq"), [(100, 100), (1, 1), (1000, 1000), (5000, 1000), (10000, 1000)])
def test_io_weight_maps_to_bfq_weight_default_to_default_clamped(weight: int, bfq: int) -> None:
    assert convert.io_weight_to_bfq(weight) == bfq
    assert convert.bfq_to_io_weight(bfq) == min(weight, 1000)


def test_cpu_quota_unlimited_is_minus_one() -> None:
    assert convert.quota_to_v1(None) == -1
    assert convert.quota_to_v1(50000) == 50000
    assert convert.quota_from_v1(-1) is None
    assert convert.quota_from_v1(150000) == 150000


def test_memory_unlimited_reads_back_as_the_page_counter_maximum() -> None:
    assert convert.bytes_to_v1(None) == -1
    if convert.PAGE_SIZE == 4096:
        assert convert.V1_UNLIMITED == 9223372036854771712
    assert convert.bytes_from_v1(convert.V1_UNLIMITED) is None
    assert convert.bytes_from_v1(536870912) == 536870912


def test_limits_round_down_to_whole_pages() -> None:
    page = convert.PAGE_SIZE
    assert convert.page_floor(10 * page + 1) == 10 * page
    assert convert.page_floor(None) is None


def test_swap_is_memsw_minus_memory_and_back() -> None:
    mib = 2**20
    assert convert.memsw_from_swap(512 * mib, 128 * mib) == 640 * mib
    assert convert.swap_from_memsw(512 * mib, 640 * mib) == 128 * mib
    assert convert.memsw_from_swap(512 * mib, 0) == 512 * mib
    assert convert.memsw_from_swap(None, None) is None
    assert convert.memsw_from_swap(512 * mib, None) is None
    assert convert.swap_from_memsw(512 * mib, None) is None


def test_a_swap_limit_without_a_memory_limit_cannot_be_expressed_on_v1() -> None:
    with pytest.raises(ValueError, match=r"memory\.max"):
        convert.memsw_from_swap(None, 0)
