"""The CLI's argparse setup: help sized like shutil.get_terminal_size would size it."""

from __future__ import annotations

import pytest

from cgctl.cli import build_parser


@pytest.mark.parametrize(("columns", "widest"), [("60", 58), ("200", 198), ("junk", 78)])
def test_help_is_as_wide_as_columns_says(monkeypatch: pytest.MonkeyPatch, columns: str, widest: int) -> None:
    monkeypatch.setenv("COLUMNS", columns)  # "junk": not a number, so the terminal's width, else 80

    def no_terminal(fd: int) -> object:
        raise OSError("not a terminal")

    monkeypatch.setattr("os.get_terminal_size", no_terminal)
    text = build_parser()._subparsers._group_actions[0].choices["apply"].format_help()  # type: ignore[union-attr]
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= widest
    if widest < 100:
        assert max(len(line) for line in lines) > widest - 25  # wrapped near the edge, not at 40
