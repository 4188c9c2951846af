"""YAML text → the node tree of one policy file, read with strict YAML rules, and the few ways the schema
walk (:mod:`.schema`) reads nodes: typed scalars, checked mapping entries, positions.

PyYAML's constructor is not used: it silently keeps the last of two duplicate keys and applies YAML 1.1
guesses (``yes`` is true, ``0755`` is octal, ``8:0`` is the sexagesimal number 480). We compose the node
tree once (C loader when available) and read it ourselves:

* duplicate keys are errors naming both places (the first one is read);
* plain scalars become int/float only in their plain decimal forms, bool only for true/false, null for
  ``~``/``null``/empty; anything YAML 1.1 would reinterpret stays the string the user wrote, so the
  field's own validator explains what it wants;
* mapping keys are always the strings as written (a group may be called ``1`` or ``on``);
* tags other than the standard ones, and merge keys (``<<``), are refused;
* aliases are followed, but a document that would grow past :data:`MAX_NODES` once they are expanded,
  or that loops back into itself, is refused before anything is expanded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TypeAlias

import yaml

from cgctl.policy.types import PolicyIssue, SourceRef

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

ScalarNode = yaml.ScalarNode
MappingNode = yaml.MappingNode
SequenceNode = yaml.SequenceNode

# Tag given to plain (unquoted, untagged) scalars: they are typed by :func:`plain` with YAML 1.2-like rules.
PLAIN = "!cgctl/plain"


class _Loader(_BaseLoader):
    """The C loader with PyYAML's YAML 1.1 implicit resolver replaced: plain scalars are only marked
    as plain (typed later by :func:`plain`); this is also a fifth of the parse time saved."""

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        # Called by the C parser once per untagged node (16,000 times for 1000 groups): constants only.
        if kind is ScalarNode:
            return PLAIN if implicit[0] else STR_TAG
        return SEQ_TAG if kind is SequenceNode else MAP_TAG


Loc: TypeAlias = tuple[str | int, ...]
Data: TypeAlias = "dict[str, Data] | list[Data] | str | int | float | bool | None"

_TAG = "tag:yaml.org,2002:"
MAP_TAG = _TAG + "map"
SEQ_TAG = _TAG + "seq"
STR_TAG = _TAG + "str"
# Decimal only (underscores between digits allowed, as Python and YAML 1.1 do): 0x10, 0o7, 1:30 stay strings.
_INT_RE = re.compile(r"[-+]?[0-9]+(?:_[0-9]+)*")
_FLOAT_RE = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_STRING_TAGS = frozenset({_TAG + "str", _TAG + "timestamp", _TAG + "value"})
_SCALAR_TAGS = _STRING_TAGS | {_TAG + "int", _TAG + "float", _TAG + "bool", _TAG + "null", PLAIN}

# Aliases can make a tiny file expand exponentially ("billion laughs"); a real policy has far fewer nodes.
MAX_NODES = 2_000_000
MAX_NESTING = 100


def dotted(loc: Loc) -> str:
    """``('groups', 'web', 'io', 'max', 0, 'device')`` → ``groups.web.io.max[0].device``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class TooLarge(Exception):
    """The document is too large or nested too deeply once aliases are expanded."""

    def __init__(self, node: yaml.Node) -> None:
        super().__init__("too large")
        self.node = node


class Source:
    """One policy file being read: where its nodes are, and every problem found in it so far."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[PolicyIssue] = []
        self.root: yaml.Node | None = None
        self._nodes = 0
        self._collections: set[int] = set()
        self._size_checked = False

    def ref(self, node: yaml.Node) -> SourceRef:
        """Where ``node`` starts (1-based line and column)."""
        mark = node.start_mark
        return SourceRef(self.file, mark.line + 1, mark.column + 1)

    def issue(self, node: yaml.Node, loc: Loc, message: str) -> None:
        self.issues.append(PolicyIssue.at(self.ref(node), dotted(loc), message))

    def refused(self, node: yaml.Node, loc: Loc) -> bool:
        """True, once reported, if ``node`` carries a tag cgctl does not read: its value counts as
        given but is not read, so nothing else is said about it."""
        tag = node.tag
        if node.__class__ is ScalarNode:
            if tag in _SCALAR_TAGS:
                return False
        elif tag == (MAP_TAG if node.__class__ is MappingNode else SEQ_TAG):
            return False
        self.issue(node, loc, f"unsupported YAML tag {tag!r}")
        return True

    def is_null(self, node: yaml.Node) -> bool:
        """A null scalar (``~``, ``null``, nothing at all, or tagged ``!!null``)."""
        return node.__class__ is ScalarNode and self.scalar(node) is None

    def scalar(self, node: yaml.ScalarNode) -> Data:
        """A scalar node's value (its tag accepted by :meth:`refused`)."""
        tag: str = node.tag
        text: str = node.value
        if tag == PLAIN:
            return plain(text)
        if tag in _STRING_TAGS or node.style:  # quoted or block scalars are always strings
            return text
        if tag == _TAG + "int":
            return int(text) if _INT_RE.fullmatch(text) else text
        if tag == _TAG + "float":
            return float(text) if _FLOAT_RE.fullmatch(text) else text
        if tag == _TAG + "bool":
            return _BOOLS.get(text, text)
        return None  # the null tag

    def entries(self, node: yaml.Node, loc: Loc) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """A mapping's (key, key node, value node), keys as written; keys that are lists or mappings,
        merge keys and second occurrences of a key are reported and skipped."""
        self._visit(node, loc)
        first: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.__class__ is not ScalarNode:
                self.issue(key_node, loc, "a key must be a plain name, not a list or mapping")
                continue
            key: str = key_node.value
            if key_node.tag == _TAG + "merge" or (key_node.tag == PLAIN and key == "<<"):
                self.issue(key_node, loc, "YAML merge keys (<<) are not supported")
                continue
            if key in first:
                self.issue(
                    key_node, (*loc, key), f"duplicate key {key!r} (first written at {self.ref(first[key])})"
                )
                continue
            first[key] = key_node
            yield key, key_node, value_node

    def items(self, node: yaml.Node, loc: Loc) -> Iterator[tuple[int, yaml.Node]]:
        self._visit(node, loc)
        yield from enumerate(node.value)

    def data(self, node: yaml.Node, loc: Loc) -> Data:
        """Plain data for a value the schema does not read itself (an unknown key's, or a list where a
        number belongs: the message shows it). Problems inside are reported as everywhere else."""
        if node.__class__ is ScalarNode:
            return self.scalar(node)
        if node.__class__ is SequenceNode:
            return [
                None if self.refused(item, (*loc, index)) else self.data(item, (*loc, index))
                for index, item in self.items(node, loc)
            ]
        return {
            key: None if self.refused(value, (*loc, key)) else self.data(value, (*loc, key))
            for key, _key_node, value in self.entries(node, loc)
        }

    def _visit(self, node: yaml.Node, loc: Loc) -> None:
        """Every collection passes here before it is read. One seen twice comes from an alias: check
        once, before expanding anything more, that the whole document stays reasonable expanded."""
        self._nodes += len(node.value)
        if self._nodes > MAX_NODES or len(loc) > MAX_NESTING:
            raise TooLarge(node)
        if id(node) not in self._collections:
            self._collections.add(id(node))
        elif not self._size_checked:
            self._size_checked = True
            if self.root is not None and _expanded_size(self.root, {}, set(), 0) > MAX_NODES:
                raise TooLarge(node)


_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def plain(text: str) -> Data:
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
        raise TooLarge(node)
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


def parse_source(text: str, file: str) -> tuple[Source, yaml.MappingNode | None]:
    """Compose ``text``; the root mapping, or None with the reason in ``Source.issues``."""
    source = Source(file)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        source.issues.append(PolicyIssue(file, line, col, "", f"invalid YAML: {problem}"))
        return source, None
    except yaml.YAMLError as exc:  # pragma: no cover - reader errors without a mark
        source.issues.append(PolicyIssue(file, 1, 1, "", f"invalid YAML: {exc}"))
        return source, None
    if root is None:
        source.issues.append(PolicyIssue(file, 1, 1, "", "the policy file is empty"))
        return source, None
    if root.__class__ is not MappingNode:
        source.issue(root, (), "the policy must be a mapping (key: value)")
        return source, None
    if source.refused(root, ()):
        return source, None
    source.root = root
    return source, root


def too_large_issue(source: Source, exc: TooLarge) -> PolicyIssue:
    return PolicyIssue.at(
        source.ref(exc.node),
        "",
        f"the document is too large or nested too deeply (over {MAX_NODES} nodes or {MAX_NESTING}"
        " levels, e.g. through aliases)",
    )
