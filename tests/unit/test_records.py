"""drivers/records.py: ``@record`` behaves as ``@dataclass`` does for everything cgctl relies on."""

from __future__ import annotations

import dataclasses
import pickle
from typing import ClassVar

import pytest

from drivers.records import FrozenInstanceError, field, record


@record(frozen=True, order=True)
class Point:
    KIND: ClassVar[str] = "point"
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)


@dataclasses.dataclass(frozen=True, order=True)
class DataPoint:
    KIND: ClassVar[str] = "point"
    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


@record
class Counter:
    name: str
    seen: dict[str, int] = field(default_factory=dict)


@record(frozen=True)
class Labelled(Point):
    label: str = ""


def test_init_defaults_and_factories_as_dataclasses() -> None:
    assert (Point(1).x, Point(1).y, Point(1).tags) == (1, 0, [])
    assert Point(1).tags is not Point(1).tags  # a fresh list for each instance
    assert Point(1, 2, ["a"]) == Point(x=1, y=2, tags=["a"])
    assert "tags" not in Point.__dict__  # no shared class attribute for a factory default
    assert Point.KIND == "point" and "KIND" not in Point.__record_fields__  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, [], 4)  # type: ignore[call-arg]


def test_repr_equality_order_and_hash_match_dataclasses() -> None:
    pairs = [((1, 2), (1, 3)), ((2, 0), (1, 5)), ((1, 1), (1, 1))]
    for a, b in pairs:
        mine, theirs = (Point(*a), Point(*b)), (DataPoint(*a), DataPoint(*b))
        assert (mine[0] < mine[1], mine[0] <= mine[1], mine[0] > mine[1], mine[0] >= mine[1]) == (
            theirs[0] < theirs[1],
            theirs[0] <= theirs[1],
            theirs[0] > theirs[1],
            theirs[0] >= theirs[1],
        )
        assert (mine[0] == mine[1]) == (theirs[0] == theirs[1])
    assert repr(Point(1, 2)) == repr(DataPoint(1, 2)).replace("DataPoint", "Point")
    assert hash(Point(1, 2, ())) == hash(Point(1, 2, ()))  # type: ignore[arg-type]
    assert sorted([Point(3), Point(1, 5), Point(1, 2)]) == [Point(1, 2), Point(1, 5), Point(3)]
    assert Point(1) != DataPoint(1) and Point(1) != (1, 0, [])  # another class is never equal
    with pytest.raises(TypeError):
        _ = Point(1) < (1, 0)  # type: ignore[operator]


def test_frozen_refuses_assignment_and_mutable_is_unhashable() -> None:
    point = Point(1)
    with pytest.raises(FrozenInstanceError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del point.x  # type: ignore[misc]
    assert isinstance(FrozenInstanceError("x"), AttributeError)
    counter = Counter("a")
    counter.name = "b"
    counter.seen["x"] = 1
    assert counter == Counter("b", {"x": 1})
    with pytest.raises(TypeError):
        hash(counter)


def test_inheritance_puts_base_fields_first_and_pickles() -> None:
    labelled = Labelled(1, 2, [], "here")
    assert labelled.__match_args__ == ("x", "y", "tags", "label")  # type: ignore[attr-defined]
    assert labelled != Point(1, 2, [])
    assert pickle.loads(pickle.dumps(labelled)) == labelled
    assert pickle.loads(pickle.dumps(Counter("c", {"k": 2}))) == Counter("c", {"k": 2})


def test_own_methods_are_kept_and_post_init_runs() -> None:
    @record(frozen=True)
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Named) and other.name.lower() == self.name.lower()

        def __hash__(self) -> int:
            return hash(self.name.lower())

    assert repr(Named("a")) == "<a>" and Named("A") == Named("a") and hash(Named("A")) == hash(Named("a"))

    @record
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError("negative")

    with pytest.raises(ValueError, match="negative"):
        Checked(-1)


def test_definitions_dataclasses_refuses_are_refused() -> None:
    with pytest.raises(ValueError, match="default_factory"):

        @record
        class Shared:
            items: list[int] = []  # noqa: RUF012 - the point of the test

    with pytest.raises(TypeError, match="without a default"):

        @record
        class Misordered:
            first: int = 0
            second: int  # type: ignore[misc]
