"""``@record``: the part of :func:`dataclasses.dataclass` cgctl uses, at a sixth of the start-up cost.

Why not dataclasses: on Python 3.11 ``@dataclass`` compiles every generated method with an ``exec`` of its
own (6 to 10 per frozen, ordered class) and imports ``inspect``. The ~25 classes every ``cgctl apply``
loads spent 11.5 ms in it, plus 4 ms for the import: 4 % of a whole 1000-group apply, one that is
benchmarked against a raw ``os.mkdir``/``os.write`` script (bench/RESULTS.md). ``@record`` compiles only
``__init__`` (a plain, fast call with the fields as parameters); the comparisons, hash and repr are
closures over ``operator.attrgetter`` of the fields, made without compiling anything: 2 ms in all.

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

import operator
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


_ORDER = (("__lt__", operator.lt), ("__le__", operator.le), ("__gt__", operator.gt), ("__ge__", operator.ge))


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _tuple_of(names: tuple[str, ...]) -> Callable[[object], tuple[Any, ...]]:
    """A function giving an instance's field values as a tuple (attrgetter: C speed, nothing compiled)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    if names:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _compare(values: Callable[[object], tuple[Any, ...]], test: Callable[[Any, Any], bool]) -> Any:
    def method(self: object, other: object) -> Any:
        if other.__class__ is self.__class__:
            return test(values(self), values(other))
        return NotImplemented

    return method


def _init_source(fields: dict[str, object], frozen: bool, post_init: bool) -> tuple[str, dict[str, Any]]:
    """``__init__``'s text, and the names it needs: the one method compiled, for a plain fast call with
    the fields as its parameters (defaults included)."""
    namespace: dict[str, Any] = {"_MISSING": _MISSING, "_object_setattr": object.__setattr__}
    params = ["self"]
    body = []
    for name, default in fields.items():
        if default is _MISSING:
            params.append(name)
        elif isinstance(default, _Factory):
            namespace[f"_factory_{name}"] = default.make
            params.append(f"{name}=_MISSING")
            body.append(f"    if {name} is _MISSING: {name} = _factory_{name}()")
        else:
            namespace[f"_default_{name}"] = default
            params.append(f"{name}=_default_{name}")
        # A frozen record sets its fields past its own __setattr__. Not through self.__dict__: touching it
        # turns the instance's compact attribute storage into a dict (slower attribute reads, measured).
        body.append(f"    _object_setattr(self, {name!r}, {name})" if frozen else f"    self.{name} = {name}")
    if post_init:
        body.append("    self.__post_init__()")
    return "\n".join([f"def __init__({', '.join(params)}):", *(body or ["    pass"])]), namespace


def _build(cls: _C, frozen: bool, order: bool) -> _C:
    fields = _fields(cls)
    names = tuple(fields)
    source, namespace = _init_source(fields, frozen, hasattr(cls, "__post_init__"))
    exec(source, namespace)  # the text is made above from field names only
    values = _tuple_of(names)

    def __repr__(self: object) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(names, values(self), strict=True))
        return f"{self.__class__.__qualname__}({shown})"

    methods: dict[str, Any] = {
        "__init__": namespace["__init__"],
        "__repr__": __repr__,
        "__eq__": _compare(values, operator.eq),
    }
    if order:
        for method, test in _ORDER:
            methods[method] = _compare(values, test)
    # A class body that defines __eq__ gets __hash__ = None from Python itself: that is no hash of its own.
    body = cls.__dict__
    own_hash = "__hash__" in body and not (body["__hash__"] is None and "__eq__" in body)
    if frozen:
        methods["__hash__"] = lambda self: hash(values(self))
    for method, function in methods.items():
        function.__name__ = method
        function.__qualname__ = f"{cls.__qualname__}.{method}"
        function.__module__ = cls.__module__
    if frozen:  # shared by every frozen record
        methods.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr)
    for method, function in methods.items():
        if method in body and not (method == "__hash__" and not own_hash):
            continue  # the class's own definition wins
        setattr(cls, method, function)
    if not frozen and not own_hash:
        cls.__hash__ = None  # type: ignore[assignment]
    setattr(cls, "__match_args__", names)  # noqa: B010 - mypy refuses the plain assignment
    cls.__record_fields__ = fields  # type: ignore[attr-defined]
    return cls
