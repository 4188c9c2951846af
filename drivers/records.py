"""``@record``: the part of :func:`dataclasses.dataclass` cgctl uses, at a third of the start-up cost.

Why not dataclasses: on Python 3.11 ``@dataclass`` compiles every generated method with an ``exec`` of its
own (6 to 10 per frozen, ordered class) and imports ``inspect``. The ~30 classes every ``cgctl apply``
loads spent 11.5 ms in it, plus 4 ms for the import: 4 % of a whole 1000-group apply, one that is
benchmarked against a raw ``os.mkdir``/``os.write`` script (bench/RESULTS.md). ``@record`` writes the
same methods as one source text and compiles it with a single ``exec`` per class.

What it does, as ``@dataclass`` does it:

* fields are the class's own annotations (``ClassVar`` ones excepted) after those of record bases;
  defaults must follow fields without one; a default is a plain value or ``field(default_factory=...)``
  (a list, dict or set default is refused: it would be shared by every instance);
* ``__init__`` in field order, ``__repr__``, ``__eq__`` (same class, fields compared as a tuple) and
  ``__match_args__``;
* ``frozen=True``: assignment and deletion raise :class:`FrozenInstanceError`, and ``__hash__`` hashes
  the fields; without it, ``__hash__`` is None (an equal-by-value mutable object must not be hashed);
* ``order=True``: ``<``, ``<=``, ``>``, ``>=`` compare the fields as a tuple;
* a method the class defines itself is kept, and ``__post_init__`` is called when there is one.

Instances pickle as dataclass instances do (their ``__dict__``). mypy reads the decorator through
``typing.dataclass_transform``. ``cgctl/`` and ``drivers/`` use it; ``exporters/`` keeps stdlib
dataclasses (it needs ``slots=True``, and only the long-running agent loads it).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, TypeVar, overload

_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)

_MISSING: Any = object()
_MUTABLE_DEFAULTS = (list, dict, set)


class FrozenInstanceError(AttributeError):
    """An assignment to (or deletion of) a field of a frozen record."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], _T]) -> _T:
    """A field whose default is made anew for each instance: ``tags: list[str] = field(default_factory=list)``
    (as ``dataclasses.field``)."""
    return _Factory(default_factory)  # type: ignore[return-value]


@overload
def record(cls: _C, /) -> _C: ...


@overload
def record(*, frozen: bool = False, order: bool = False) -> Callable[[_C], _C]: ...


@typing.dataclass_transform(field_specifiers=(field,))
def record(cls: _C | None = None, /, *, frozen: bool = False, order: bool = False) -> Any:
    """Make ``cls`` a record (see the module docstring); ``@record`` or ``@record(frozen=..., order=...)``."""

    def wrap(cls: _C) -> _C:
        return _build(cls, frozen, order)

    return wrap if cls is None else wrap(cls)


def _is_class_var(annotation: object) -> bool:
    if isinstance(annotation, str):  # postponed annotations (from __future__ import annotations)
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is typing.ClassVar or typing.get_origin(annotation) is typing.ClassVar


def _fields(cls: type) -> dict[str, object]:
    """Field name → default (``_MISSING``, a value, or a ``_Factory``), bases' fields first."""
    fields: dict[str, object] = {}
    for base in reversed(cls.__mro__[1:]):
        fields.update(base.__dict__.get("__record_fields__", {}))
    # The class's own annotations, as dataclasses reads them on 3.11 (inspect.get_annotations would cost
    # the inspect import this module exists to avoid).
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if _is_class_var(annotation):
            continue
        default = getattr(cls, name, _MISSING)
        if isinstance(default, _MUTABLE_DEFAULTS):
            raise ValueError(
                f"{cls.__qualname__}.{name}: a {type(default).__name__} default would be shared by every"
                " instance; use field(default_factory=...)"
            )
        if isinstance(default, _Factory) and name in cls.__dict__:
            delattr(cls, name)  # as dataclasses: no class attribute for a per-instance default
        fields[name] = default
    seen_default = ""
    for name, default in fields.items():
        if default is not _MISSING:
            seen_default = name
        elif seen_default:
            raise TypeError(f"{cls.__qualname__}: field {name!r} without a default follows {seen_default!r}")
    return fields


def _build(cls: _C, frozen: bool, order: bool) -> _C:
    fields = _fields(cls)
    names = list(fields)
    namespace: dict[str, Any] = {
        "_MISSING": _MISSING,
        "FrozenInstanceError": FrozenInstanceError,
        "_object_setattr": object.__setattr__,
    }
    params = ["self"]
    init = []
    for name, default in fields.items():
        if default is _MISSING:
            params.append(name)
        elif isinstance(default, _Factory):
            namespace[f"_factory_{name}"] = default.make
            params.append(f"{name}=_MISSING")
            init.append(f"    if {name} is _MISSING: {name} = _factory_{name}()")
        else:
            namespace[f"_default_{name}"] = default
            params.append(f"{name}=_default_{name}")
        # A frozen record sets its fields past its own __setattr__. Not through self.__dict__: touching it
        # turns the instance's compact attribute storage into a dict (slower attribute reads, measured).
        init.append(f"    _object_setattr(self, {name!r}, {name})" if frozen else f"    self.{name} = {name}")
    if hasattr(cls, "__post_init__"):
        init.append("    self.__post_init__()")
    mine = "(" + "".join(f"self.{name}, " for name in names) + ")"
    theirs = "(" + "".join(f"other.{name}, " for name in names) + ")"
    shown = ", ".join(f"{name}={{self.{name}!r}}" for name in names)
    source = [
        f"def __init__({', '.join(params)}):",
        *(init or ["    pass"]),
        "def __repr__(self):",
        f'    return f"{{self.__class__.__qualname__}}({shown})"',
    ]
    compared = ["__eq__", *(("__lt__", "__le__", "__gt__", "__ge__") if order else ())]
    operators = {"__eq__": "==", "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">="}
    for method in compared:
        source += [
            f"def {method}(self, other):",
            "    if other.__class__ is self.__class__:",
            f"        return {mine} {operators[method]} {theirs}",
            "    return NotImplemented",
        ]
    # A class body that defines __eq__ gets __hash__ = None from Python itself: that is no hash of its own.
    body = cls.__dict__
    own_hash = "__hash__" in body and not (body["__hash__"] is None and "__eq__" in body)
    if frozen:
        source += [
            "def __hash__(self):",
            f"    return hash({mine})",
            "def __setattr__(self, name, value):",
            "    raise FrozenInstanceError(f'cannot assign to field {name!r}')",
            "def __delattr__(self, name):",
            "    raise FrozenInstanceError(f'cannot delete field {name!r}')",
        ]
    exec("\n".join(source), namespace)  # the text is made above from field names only
    methods = ["__init__", "__repr__", *compared]
    if frozen:
        methods += ["__hash__", "__setattr__", "__delattr__"]
    for method in methods:
        if method in cls.__dict__ and not (method == "__hash__" and not own_hash):
            continue  # the class's own definition wins
        function = namespace[method]
        function.__qualname__ = f"{cls.__qualname__}.{method}"
        function.__module__ = cls.__module__
        setattr(cls, method, function)
    if not frozen and not own_hash:
        cls.__hash__ = None  # type: ignore[assignment]
    setattr(cls, "__match_args__", tuple(names))  # noqa: B010 - mypy refuses the plain assignment
    cls.__record_fields__ = fields  # type: ignore[attr-defined]
    return cls
