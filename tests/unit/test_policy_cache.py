"""cgctl/policy/cache.py: a validated policy is reused only while everything it was made from is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cgctl.policy import PolicyError, cache, load_policy, loader

POLICY = """\
version: 1
driver: cgroupfs
root: cached
include: policy.d
groups:
  web:
    cpu: {weight: 200}
    io:
      max:
        - {device: /dev/fake, rbps: 1M}
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CGCTL_CACHE_DIR", str(tmp_path / "cache"))
    devices = {"/dev/fake": "254:0"}
    monkeypatch.setattr("cgctl.devices.resolve_device", lambda spec: devices[spec])
    (tmp_path / "policy.d").mkdir()
    (tmp_path / "policy.d" / "batch.yaml").write_text("groups:\n  batch: {pids: {max: 5}}\n")
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every real parse (a cache hit makes none)."""
    calls: list[str] = []
    real = loader.load_policy_and_inputs

    def counting(path, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(os.fspath(path))
        return real(path, **kwargs)

    monkeypatch.setattr(loader, "load_policy_and_inputs", counting)
    return calls


def test_an_unchanged_policy_is_not_parsed_again(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parses = _parses(monkeypatch)
    first = load_policy(setup / "policy.yaml")
    second = load_policy(setup / "policy.yaml")
    assert len(parses) == 1
    assert second == first
    assert set(second.groups) == {("web",), ("batch",)}
    assert "io.max[254:0]" in second.groups[("web",)].resources
    entries = list((setup / "cache" / "policy").iterdir())
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == 0o600
    assert (setup / "cache" / "policy").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "change",
    ["main file", "included file", "new file in included directory", "device number", "cgctl itself"],
)
def test_any_change_to_what_the_policy_was_made_from_parses_again(
    setup: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    load_policy(setup / "policy.yaml")
    parses = _parses(monkeypatch)
    if change == "main file":
        (setup / "policy.yaml").write_text(POLICY.replace("weight: 200", "weight: 300"))
    elif change == "included file":
        (setup / "policy.d" / "batch.yaml").write_text("groups:\n  batch: {pids: {max: 6}}\n")
    elif change == "new file in included directory":
        (setup / "policy.d" / "extra.yml").write_text("groups:\n  extra: {pids: {max: 1}}\n")
    elif change == "device number":
        monkeypatch.setattr("cgctl.devices.resolve_device", lambda spec: "254:16")
    else:
        monkeypatch.setattr(cache, "_fingerprint", lambda: ("another cgctl",))
    policy = load_policy(setup / "policy.yaml")
    assert len(parses) == 1
    if change == "main file":
        assert policy.groups[("web",)].resources["cpu.weight"] == 300
    elif change == "included file":
        assert policy.groups[("batch",)].resources["pids.max"] == 6
    elif change == "new file in included directory":
        assert ("extra",) in policy.groups
    elif change == "device number":
        assert "io.max[254:16]" in policy.groups[("web",)].resources
    # and the new result is what the next load reuses
    assert load_policy(setup / "policy.yaml") == policy
    assert len(parses) == 1


def test_an_entry_anyone_else_could_have_written_is_never_loaded(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_policy(setup / "policy.yaml")
    parses = _parses(monkeypatch)
    entry = next((setup / "cache" / "policy").iterdir())
    entry.chmod(0o622)  # group/world-writable: someone else may have put a pickle there
    load_policy(setup / "policy.yaml")
    assert len(parses) == 1
    (setup / "cache" / "policy").chmod(0o777)  # the directory likewise: not used, not written
    entry.unlink()
    load_policy(setup / "policy.yaml")
    load_policy(setup / "policy.yaml")
    assert len(parses) == 3
    assert list((setup / "cache" / "policy").iterdir()) == []


def test_a_corrupt_entry_means_a_parse_not_an_error(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_policy(setup / "policy.yaml")
    parses = _parses(monkeypatch)
    entry = next((setup / "cache" / "policy").iterdir())
    entry.write_bytes(entry.read_bytes()[:100])
    assert ("web",) in load_policy(setup / "policy.yaml").groups
    assert len(parses) == 1


def test_a_relative_path_is_cached_per_working_directory(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Included files are recorded as the loader reached them (relative to the working directory for a
    relative main path), so the same relative name elsewhere is another policy."""
    other = setup / "other"
    (other / "policy.d").mkdir(parents=True)
    (other / "policy.d" / "batch.yaml").write_text("groups:\n  batch: {pids: {max: 9}}\n")
    (other / "policy.yaml").write_text(POLICY)
    parses = _parses(monkeypatch)
    monkeypatch.chdir(setup)
    assert load_policy("policy.yaml").groups[("batch",)].resources["pids.max"] == 5
    monkeypatch.chdir(other)
    assert load_policy("policy.yaml").groups[("batch",)].resources["pids.max"] == 9
    monkeypatch.chdir(setup)
    assert load_policy("policy.yaml").groups[("batch",)].resources["pids.max"] == 5
    assert len(parses) == 2


def test_two_policies_sharing_an_entry_name_never_get_each_others_policy(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entry names are a 32-bit checksum of the path: a collision must cost a parse, nothing more."""
    monkeypatch.setattr(cache, "_entry_path", lambda key: os.path.join(cache.cache_dir(), "same.pickle"))
    (setup / "other.yaml").write_text(POLICY.replace("cached", "other").replace("include: policy.d\n", ""))
    parses = _parses(monkeypatch)
    assert load_policy(setup / "policy.yaml").root == "cached"
    assert load_policy(setup / "other.yaml").root == "other"
    assert load_policy(setup / "policy.yaml").root == "cached"
    assert len(parses) == 3


def test_an_invalid_policy_is_never_cached(setup: Path) -> None:
    (setup / "policy.yaml").write_text(POLICY.replace("weight: 200", "weight: lots"))
    for _ in range(2):
        with pytest.raises(PolicyError, match="weight"):
            load_policy(setup / "policy.yaml")
    assert not (setup / "cache" / "policy").exists() or not list((setup / "cache" / "policy").iterdir())


def test_a_custom_device_resolver_bypasses_the_cache(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parses = _parses(monkeypatch)
    for _ in range(2):
        load_policy(setup / "policy.yaml", resolve_device=lambda spec: "7:0")
    assert len(parses) == 2
    assert not (setup / "cache" / "policy").exists()
