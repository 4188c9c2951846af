"""YAML text → plain data, plus the position of every key and value, with strict YAML rules.

PyYAML's constructor is not used: it silently keeps the last of two duplicate keys and applies YAML 1.1
guesses (``yes`` is true, ``0755`` is octal, ``8:0`` is the sexagesimal number 480). We compose the node
tree once (C loader when available) and build the data ourselves:

* duplicate keys are errors naming both places;
* plain scalars become int/float only in their plain decimal forms, bool only for true/false, null for
  ``~``/``null``/empty; anything YAML 1.1 would reinterpret stays the string the user wrote, so the
  field's own validator explains what it wants;
* mapping keys are always the strings as written (a group may be called ``1`` or ``on``);
* tags other than the standard ones, and merge keys (``<<``), are refused.
"""

from __future__ import annotations

import re
from typing import TypeAlias

import yaml

from cgctl.policy.types import PolicyIssue, SourceRef
from drivers.records import field, record

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

# Tag given to plain (unquoted, untagged) scalars: the builder types them itself with YAML 1.2-like rules.
_PLAIN = "!cgctl/plain"


class _Loader(_BaseLoader):
    """The C loader with PyYAML's YAML 1.1 implicit resolver replaced: plain scalars are only marked
    as plain (typed later by :meth:`_Builder._scalar`); this is also a fifth of the parse time saved."""

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            return _PLAIN if implicit[0] else _TAG + "str"
        if kind is yaml.SequenceNode:
            return _TAG + "seq"
        return _TAG + "map"


Loc: TypeAlias = tuple[str | int, ...]
Data: TypeAlias = "dict[str, Data] | list[Data] | str | int | float | bool | None"

_TAG = "tag:yaml.org,2002:"
# Decimal only (underscores between digits allowed, as Python and YAML 1.1 do): 0x10, 0o7, 1:30 stay strings.
_INT_RE = re.compile(r"[-+]?[0-9]+(?:_[0-9]+)*")
_FLOAT_RE = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_STRING_TAGS = frozenset({_TAG + "str", _TAG + "timestamp", _TAG + "value"})
_SCALAR_TAGS = _STRING_TAGS | {_TAG + "int", _TAG + "float", _TAG + "bool", _TAG + "null"}

# Aliases can make a tiny file expand exponentially ("billion laughs"); a real policy has far fewer nodes.
MAX_NODES = 2_000_000
MAX_NESTING = 100


@record
class Source:
    """One parsed file. ``marks[loc]`` is (key line, key col, value line, value col), 0-based."""

    file: str
    data: Data = None
    marks: dict[Loc, tuple[int, int, int, int]] = field(default_factory=dict)
    issues: list[PolicyIssue] = field(default_factory=list)
    # Places already reported here (bad tags, duplicate keys): validation errors under them would only
    # repeat the problem in other words.
    reported: set[Loc] = field(default_factory=set)

    def already_reported(self, loc: Loc) -> bool:
        return any(loc[:size] in self.reported for size in range(len(loc) + 1))

    def _nearest(self, loc: Loc) -> tuple[Loc, tuple[int, int, int, int]]:
        while loc not in self.marks and loc:
            loc = loc[:-1]
        return loc, self.marks.get(loc, (0, 0, 0, 0))

    def value_ref(self, loc: Loc) -> SourceRef:
        """Where the value at ``loc`` starts (or its nearest written ancestor's value)."""
        _found, mark = self._nearest(loc)
        return SourceRef(self.file, mark[2] + 1, mark[3] + 1)

    def key_ref(self, loc: Loc) -> SourceRef:
        """Where the key of ``loc`` is written (a list item's position for list indexes)."""
        _found, mark = self._nearest(loc)
        return SourceRef(self.file, mark[0] + 1, mark[1] + 1)

    def issue(self, ref: SourceRef, loc: Loc, message: str, *, replaces_value: bool = False) -> None:
        """Record a problem; ``replaces_value`` when the value at ``loc`` was dropped because of it."""
        self.issues.append(PolicyIssue.at(ref, dotted(loc), message))
        if replaces_value:
            self.reported.add(loc)


def dotted(loc: Loc) -> str:
    """``('groups', 'web', 'io', 'max', 0, 'device')`` → ``groups.web.io.max[0].device``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def parse_source(text: str, file: str) -> Source:
    """Parse ``text``; problems are collected in ``Source.issues`` (data is None if unusable)."""
    source = Source(file)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        source.issues.append(PolicyIssue(file, line, col, "", f"invalid YAML: {problem}"))
        return source
    except yaml.YAMLError as exc:  # pragma: no cover - reader errors without a mark
        source.issues.append(PolicyIssue(file, 1, 1, "", f"invalid YAML: {exc}"))
        return source
    if root is None:
        source.issues.append(PolicyIssue(file, 1, 1, "", "the policy file is empty"))
        return source
    if not isinstance(root, yaml.MappingNode):
        mark = root.start_mark
        source.issues.append(
            PolicyIssue(file, mark.line + 1, mark.column + 1, "", "the policy must be a mapping (key: value)")
        )
        return source
    builder = _Builder(source, root)
    source.marks[()] = (root.start_mark.line, root.start_mark.column) * 2
    source.data = builder.build(root, ())
    return source


class _Builder:
    def __init__(self, source: Source, root: yaml.Node) -> None:
        self.source = source
        self.root = root
        self.nodes = 0
        self.collections: set[int] = set()
        self.size_checked = False

    def _revisit(self, node: yaml.Node) -> None:
        """A collection seen twice comes from an alias: check once, before expanding anything more,
        that the whole document stays reasonable once aliases are expanded."""
        if id(node) not in self.collections:
            self.collections.add(id(node))
        elif not self.size_checked:
            self.size_checked = True
            if _expanded_size(self.root, {}, set(), 0) > MAX_NODES:
                raise _TooLarge(node)

    def _ref(self, node: yaml.Node) -> SourceRef:
        return SourceRef(self.source.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, loc: Loc) -> Data:
        self.nodes += 1
        if self.nodes > MAX_NODES or len(loc) > MAX_NESTING:
            raise _TooLarge(node)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc)
        self._revisit(node)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                self.source.issue(
                    self._ref(node), loc, f"unsupported YAML tag {node.tag!r}", replaces_value=True
                )
                return None
            items: list[Data] = []
            marks = self.source.marks
            for index, item in enumerate(node.value):
                item_loc = (*loc, index)
                start = item.start_mark
                marks[item_loc] = (start.line, start.column, start.line, start.column)
                items.append(self.build(item, item_loc))
            return items
        assert isinstance(node, yaml.MappingNode)
        if node.tag != _TAG + "map":
            self.source.issue(self._ref(node), loc, f"unsupported YAML tag {node.tag!r}", replaces_value=True)
            return None
        return self._mapping(node, loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Data]:
        result: dict[str, Data] = {}
        marks = self.source.marks
        scalar = yaml.ScalarNode
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.source.issue(
                    self._ref(key_node), loc, "a key must be a plain name, not a list or mapping"
                )
                continue
            if key_node.tag == _TAG + "merge" or (key_node.tag == _PLAIN and key_node.value == "<<"):
                self.source.issue(self._ref(key_node), loc, "YAML merge keys (<<) are not supported")
                continue
            key = key_node.value
            key_loc = (*loc, key)
            key_mark = key_node.start_mark
            if key in result:
                first = marks[key_loc]
                first_ref = SourceRef(self.source.file, first[0] + 1, first[1] + 1)
                self.source.issue(
                    self._ref(key_node), key_loc, f"duplicate key {key!r} (first written at {first_ref})"
                )
                continue
            value_mark = value_node.start_mark
            marks[key_loc] = (key_mark.line, key_mark.column, value_mark.line, value_mark.column)
            if value_node.__class__ is scalar and value_node.tag == _PLAIN:  # most values: build() inlined
                self.nodes += 1
                result[key] = _plain(value_node.value)
            else:
                result[key] = self.build(value_node, key_loc)
        return result

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Data:
        tag: str = node.tag
        text: str = node.value
        if tag == _PLAIN:
            return _plain(text)
        if tag not in _SCALAR_TAGS:
            self.source.issue(self._ref(node), loc, f"unsupported YAML tag {tag!r}", replaces_value=True)
            return None
        if tag in _STRING_TAGS or node.style:  # quoted or block scalars are always strings
            return text
        if tag == _TAG + "int":
            return int(text) if _INT_RE.fullmatch(text) else text
        if tag == _TAG + "float":
            return float(text) if _FLOAT_RE.fullmatch(text) else text
        if tag == _TAG + "bool":
            return _BOOLS.get(text, text)
        return None  # the null tag


_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _plain(text: str) -> Data:
    """Type a plain scalar: null, true/false, decimal int, decimal float; anything else is the string
    as written (so ``yes``, ``0x10``, ``8:0``, ``1_000``… reach the field validators unchanged)."""
    if text.isdigit() and text.isascii():  # the common case, before the regular expressions
        return int(text)
    if text in _NULLS:
        return None
    boolean = _BOOLS.get(text)
    if boolean is not None:
        return boolean
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    return text


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int], depth: int) -> int:
    """How many nodes the document has with every alias expanded (memoized per node, so it is cheap)."""
    if isinstance(node, yaml.ScalarNode):
        return 1
    key = id(node)
    known = memo.get(key)
    if known is not None:
        return known
    if key in active or depth > MAX_NESTING:  # a recursive alias, or absurd nesting
        raise _TooLarge(node)
    active.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, memo, active, depth + 1)
    else:
        for key_node, value_node in node.value:
            total += _expanded_size(key_node, memo, active, depth + 1)
            total += _expanded_size(value_node, memo, active, depth + 1)
    active.discard(key)
    memo[key] = total
    return total


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node) -> None:
        super().__init__("too large")
        self.node = node


def parse_source_safe(text: str, file: str) -> Source:
    """:func:`parse_source` that turns alias bombs and absurd nesting into an issue instead of a hang."""
    try:
        return parse_source(text, file)
    except _TooLarge as exc:
        mark = exc.node.start_mark
        source = Source(file)
        source.issues.append(
            PolicyIssue(
                file,
                mark.line + 1,
                mark.column + 1,
                "",
                f"the document is too large or nested too deeply (over {MAX_NODES} nodes or {MAX_NESTING}"
                " levels, e.g. through aliases)",
            )
        )
        return source
