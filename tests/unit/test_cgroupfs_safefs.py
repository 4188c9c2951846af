"""The safe file layer refuses every way out of the managed root (on ordinary tmp directories: the
refusals do not depend on cgroupfs, and the fs-magic check is shown refusing a non-cgroup tree)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.api import DriverError, UnsafePathError
from drivers.cgroupfs import safefs


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each resolution test through openat2 and through the fallback walk (kernels < 5.6)."""
    monkeypatch.setattr(safefs, "_openat2_available", None if request.param == "openat2" else False)
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    (tmp_path / "root" / "web" / "worker").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("x")
    (tmp_path / "root" / "escape").symlink_to(tmp_path / "outside")
    (tmp_path / "root" / "web" / "inner").symlink_to("worker")
    (tmp_path / "root" / "web" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "root" / "web" / "memory.max").symlink_to(tmp_path / "outside" / "secret")
    fd = os.open(tmp_path / "root", os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, fd, os.fstat(fd).st_dev
    os.close(fd)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/etc", "a\0b"])
def test_names_that_are_not_plain_entries_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError):
        safefs.check_name(name)


def test_a_plain_path_resolves(tree: tuple[Path, int, int], resolver: str) -> None:
    _, fd, dev = tree
    got = safefs.resolve_beneath(fd, ("web", "worker"), dev, "root/web/worker", ("web", "worker"))
    try:
        assert os.path.samestat(os.fstat(got), os.stat(tree[0] / "root" / "web" / "worker"))
    finally:
        os.close(got)


@pytest.mark.parametrize("parts", [("escape",), ("web", "inner"), ("..", "outside"), ("web", "..", "..")])
def test_symlinks_and_dotdot_are_refused(
    tree: tuple[Path, int, int], resolver: str, parts: tuple[str, ...]
) -> None:
    _, fd, dev = tree
    with pytest.raises(UnsafePathError):
        safefs.resolve_beneath(fd, parts, dev, "/".join(parts), ())


def test_crossing_into_another_mount_is_refused(resolver: str) -> None:
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        if os.stat("/proc").st_dev == os.fstat(fd).st_dev:
            pytest.skip("/proc is not a separate mount here")
        with pytest.raises(UnsafePathError) as info:
            safefs.resolve_beneath(fd, ("proc",), os.fstat(fd).st_dev, "/proc", ())
        assert info.value.errno == errno.EXDEV
    finally:
        os.close(fd)


def test_files_are_opened_without_following_symlinks(tree: tuple[Path, int, int]) -> None:
    _, fd, _ = tree
    web = safefs.GroupDir(os.open("web", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), "/x/web", ("web",))
    with web:
        assert web.read("cpu.max") == "max 100000\n"
        with pytest.raises(DriverError) as info:
            web.read("memory.max")
        assert info.value.errno == errno.ELOOP
        assert info.value.target == "/x/web/memory.max"
        with pytest.raises(UnsafePathError):
            web.read("../web/cpu.max")


def test_a_new_directory_by_path_follows_the_same_rules(tree: tuple[Path, int, int]) -> None:
    """A directory handed out unopened (files opened by path from the mount with openat2) refuses what
    an opened one refuses, and opens itself once something needs its descriptor."""
    if not safefs._openat2_available:
        safefs.resolve_beneath(tree[1], ("web",), tree[2], "probe", ())  # learns whether openat2 exists
    if not safefs._openat2_available:
        pytest.skip("this kernel has no openat2: directories are always opened")
    _, fd, _ = tree
    web = safefs.GroupDir(-1, "/x/web", ("web",), base_fd=fd, rel="web")
    assert web.read("cpu.max") == "max 100000\n"
    with pytest.raises(DriverError) as info:
        web.read("memory.max")  # a symlink, to outside the root
    assert info.value.errno == errno.ELOOP and info.value.target == "/x/web/memory.max"
    with pytest.raises(UnsafePathError):
        web.read("../web/cpu.max")
    assert web.fd == -1  # file reads needed no directory descriptor
    assert web.has("cpu.max") and web.fd >= 0
    web.release()
    for rel in ("escape", "web/inner"):  # the directory itself is reached under the same rules
        link = safefs.GroupDir(-1, f"/x/{rel}", ("x",), base_fd=fd, rel=rel)
        with pytest.raises(DriverError) as info:
            link.read_optional("secret")
        assert info.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)
        with pytest.raises(UnsafePathError):
            link.subdirs()


def test_write_errors_name_the_file_the_value_and_the_kernel_error(tree: tuple[Path, int, int]) -> None:
    _, fd, _ = tree
    web = safefs.GroupDir(os.open("web", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), "/x/web", ("web",))
    with web:
        with pytest.raises(DriverError) as info:
            web.write("pids.max", "5")  # absent file
        err = info.value
        assert err.errno == errno.ENOENT and err.target == "/x/web/pids.max" and err.group == ("web",)
        assert "ENOENT" in str(err)
        assert web.read_optional("pids.max") is None


def test_a_tree_that_is_not_cgroupfs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="not a cgroup filesystem"):
        safefs.Tree(str(tmp_path))


def test_fs_magic_of_a_cgroup_mount() -> None:
    for path in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.isdir(path):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                magic = safefs.fs_magic(fd)
            finally:
                os.close(fd)
            if magic in safefs.CGROUP_MAGICS:
                return
    pytest.skip("no cgroup filesystem mounted")
