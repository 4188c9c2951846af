"""Group paths ↔ slice names. Expectations are `systemd-escape --suffix=slice` outputs captured from
systemd 252 (the binary is not needed to run these tests)."""

from __future__ import annotations

import pytest

from drivers.systemd import naming

# (component, what `systemd-escape --suffix=slice -- COMPONENT` printed, without the suffix)
SYSTEMD_ESCAPE_OUTPUTS = [
    ("web", "web"),
    ("my-app", r"my\x2dapp"),
    (".hidden", r"\x2ehidden"),
    ("a b", r"a\x20b"),
    ("ü", r"\xc3\xbc"),
    ("x.y", "x.y"),
    ("a:b_c", "a:b_c"),
    ("back\\slash", r"back\x5cslash"),
    ("a.-", r"a.\x2d"),
    ("%40", r"\x2540"),
]


@pytest.mark.parametrize(("component", "escaped"), SYSTEMD_ESCAPE_OUTPUTS)
def test_escape_matches_systemd_escape(component: str, escaped: str) -> None:
    assert naming.escape(component) == escaped
    assert naming.unescape(escaped) == component


def test_managed_root_is_its_own_slice() -> None:
    assert naming.slice_name("cgctl", ()) == "cgctl.slice"


def test_nested_groups_join_with_dashes() -> None:
    assert naming.slice_name("cgctl", ("web",)) == "cgctl-web.slice"
    assert naming.slice_name("cgctl", ("web", "worker")) == "cgctl-web-worker.slice"


def test_dash_in_a_group_name_does_not_add_a_level() -> None:
    name = naming.slice_name("cgctl", ("my-app", "db"))
    assert name == r"cgctl-my\x2dapp-db.slice"
    assert naming.parent_slice(name) == r"cgctl-my\x2dapp.slice"
    assert naming.path_of_slice("cgctl", name) == ("my-app", "db")


def test_nested_root_path_becomes_nested_slice() -> None:
    assert naming.slice_name("a/b", ()) == "a-b.slice"
    assert naming.slice_name("a/b", ("web",)) == "a-b-web.slice"
    assert naming.parent_slice("a-b.slice") == "a.slice"
    assert naming.parent_slice("cgctl.slice") is None


def test_root_with_dash_is_escaped_too() -> None:
    assert naming.slice_name("cgctl-test-1f", ("x",)) == r"cgctl\x2dtest\x2d1f-x.slice"
    assert naming.path_of_slice("cgctl-test-1f", r"cgctl\x2dtest\x2d1f-x.slice") == ("x",)


@pytest.mark.parametrize(
    "path", [(), ("web",), ("web", "worker"), ("my-app", ".cache", "ü b"), ("a", "-", "--")]
)
def test_round_trip(path: tuple[str, ...]) -> None:
    assert naming.path_of_slice("cgctl", naming.slice_name("cgctl", path)) == path


def test_slices_outside_the_root_are_rejected() -> None:
    with pytest.raises(naming.UnitNameError):
        naming.path_of_slice("cgctl", "system.slice")
    with pytest.raises(naming.UnitNameError):
        naming.path_of_slice("cgctl", "cgctlx-web.slice")
    with pytest.raises(naming.UnitNameError):
        naming.path_of_slice("cgctl", "cgctl-web.scope")


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_unnameable_components(bad: str) -> None:
    with pytest.raises(naming.UnitNameError):
        naming.escape(bad)


@pytest.mark.parametrize("bad", [r"a\x2", r"a\y20", r"\xzz", "a-b", r"\xff"])
def test_malformed_escapes(bad: str) -> None:
    with pytest.raises(naming.UnitNameError):
        naming.unescape(bad)


def test_overlong_names_are_refused() -> None:
    with pytest.raises(naming.UnitNameError):
        naming.slice_name("cgctl", ("x" * 250,))


def test_scope_names_are_unique_and_say_where_they_go() -> None:
    first = naming.scope_name("cgctl", ("web", "worker"))
    second = naming.scope_name("cgctl", ("web", "worker"))
    assert first != second
    assert first.startswith("cgctl-web-worker-") and first.endswith(".scope")
    assert naming.scope_name("cgctl", ("web",), token="abc") == "cgctl-web-abc.scope"
    long_scope = naming.scope_name("cgctl", ("x" * 240,), token="abc")
    assert long_scope == "cgctl-abc.scope"
