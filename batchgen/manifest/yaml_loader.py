"""YAML read the way YAML 1.2 defines it, with line numbers, and bounded.

- Scalars follow the YAML 1.2 *core schema*, not PyYAML's YAML 1.1 rules: `5e0` is a float, `010` is ten
  and octal is written `0o17`, `0x1f` is hexadecimal, `1:30` is text (no base 60), `1_000` is text,
  `yes`/`no`/`on`/`off` are text (only `true`/`false` are booleans), dates are text.
- Merge keys (`<<: *base`, `<<: [*a, *b]`) are honoured as the merge-key spec says: a key written in the
  mapping itself overrides a merged one, and among several merged mappings the first wins. Only a key written
  twice in the mapping itself is a duplicate.
- Aliases are bounded: once every alias is expanded the document may have at most MAX_EXPANDED_NODES nodes
  and nest at most MAX_DEPTH deep. This is measured on the composed node graph (each node once, memoised),
  before anything is constructed, so a "billion laughs" file is refused at once and in little memory.
- Every mapping remembers its line and the line of each key, every list the line of each item (1-based).

The parser is PyYAML's (libyaml's when installed, for manifests of thousands of jobs) with PyYAML's safe
constructor; only the scalar resolution, mappings and lists are batchgen's.
"""

from __future__ import annotations

import re
from collections.abc import Hashable

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

#: Nodes a document may have with every alias expanded: about 60,000 jobs of eight fields written out in full.
#: Larger batches: a prompts_file (or a CSV) with seeds:, which take no nodes per prompt.
MAX_EXPANDED_NODES = 1_000_000
#: Deepest nesting of lists and mappings (a manifest needs 4).
MAX_DEPTH = 64
#: Longest number, in characters; Python refuses to convert longer ones anyway (and slowly).
MAX_NUMBER_CHARS = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"


class Refused(Exception):
    """The document cannot be read; the problem is already recorded."""


class LineDict(dict):
    """A mapping that remembers its line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict
    duplicate_keys: list  # (key, first line, repeated line)


class LineList(list):
    """A list that remembers its line and each item's line (1-based)."""

    line: int = 0
    item_lines: list


class _CoreResolver(BaseResolver):
    """YAML 1.2 core schema (yaml.org/spec/1.2.2 section 10.3.2) plus the merge key."""


_CoreResolver.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    ("tag:yaml.org,2002:int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
        list("-+0123456789."),
    ),
    (_MERGE_TAG, r"<<", ["<"]),
):
    _CoreResolver.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), _first)


class _CoreConstructor(SafeConstructor):
    def _number_text(self, node: ScalarNode) -> str:
        text = self.construct_scalar(node)
        if len(text) > MAX_NUMBER_CHARS:
            raise ConstructorError(None, None, f"a number of {len(text)} characters is far out of range", node.start_mark)
        return text

    def construct_core_int(self, node: ScalarNode) -> int:
        text = self._number_text(node)
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text)

    def construct_core_float(self, node: ScalarNode) -> float:
        text = self._number_text(node).lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        if text == ".nan":
            return float("nan")
        return float(text)

    def construct_core_bool(self, node: ScalarNode) -> bool:
        return self.construct_scalar(node).lower() == "true"

    def _merged_pairs(self, node: MappingNode) -> tuple[list, list]:
        """(pairs merged in through `<<`, in an order where a later pair overrides an earlier one; the mapping's
        own pairs). Not PyYAML's flatten_mapping: its 6.0 version lets the last of several merged mappings win,
        where the merge-key spec says the first does."""
        sources: list[MappingNode] = []
        own = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            items = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for item in items:
                if not isinstance(item, MappingNode):
                    raise ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        "'<<' (a merge key) takes a mapping or a list of mappings", item.start_mark,
                    )
                sources.append(item)
        merged = []
        for source in reversed(sources):
            inner, inner_own = self._merged_pairs(source)
            merged += inner + inner_own
        return merged, own

    def construct_line_mapping(self, node: MappingNode) -> LineDict:
        merged_pairs, own = self._merged_pairs(node)
        pairs = merged_pairs + own
        merged = len(merged_pairs)
        mapping = LineDict()
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        mapping.duplicate_keys = []
        for position, (key_node, value_node) in enumerate(pairs):
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise ConstructorError(
                    "while constructing a mapping", node.start_mark, "found a key that is a list or mapping",
                    key_node.start_mark,
                )
            line = key_node.start_mark.line + 1
            # The pairs are ordered so that the last is the one the spec keeps: a key repeated through a merge
            # is an override, only one written twice in this mapping itself is a mistake.
            if key in mapping.key_lines and mapping.key_lines[key][1] and position >= merged:
                mapping.duplicate_keys.append((key, mapping.key_lines[key][0], line))
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_lines[key] = (line, position >= merged)
        mapping.key_lines = {key: line for key, (line, _written) in mapping.key_lines.items()}
        return mapping

    def construct_line_sequence(self, node: SequenceNode) -> LineList:
        seq = LineList(self.construct_object(child, deep=True) for child in node.value)
        seq.line = node.start_mark.line + 1
        seq.item_lines = [child.start_mark.line + 1 for child in node.value]
        return seq


for _tag, _method in (
    ("int", _CoreConstructor.construct_core_int),
    ("float", _CoreConstructor.construct_core_float),
    ("bool", _CoreConstructor.construct_core_bool),
    ("map", _CoreConstructor.construct_line_mapping),
    ("seq", _CoreConstructor.construct_line_sequence),
):
    _CoreConstructor.add_constructor(f"tag:yaml.org,2002:{_tag}", _method)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def check_expansion(root: Node) -> tuple[str, Node] | None:
    """None when the document is within the bounds, else what is wrong and where (each distinct node is
    visited once, so this takes time in proportion to the text, however much the aliases expand)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            visiting.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_EXPANDED_NODES:
                return (
                    f"with its aliases expanded, the part starting here has more than {MAX_EXPANDED_NODES:,} "
                    "nodes (the limit); write the jobs out, or use prompts_file: with seeds:",
                    node,
                )
            continue
        if key in sizes:
            continue
        if key in visiting:
            return "an alias refers to the mapping or list that contains it (it would never end); remove it", node
        visiting.add(key)
        if len(visiting) > MAX_DEPTH:
            return f"lists and mappings nest more than {MAX_DEPTH} deep here; a manifest needs 4", node
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return None


def _loader_class() -> type:
    try:
        from yaml.cyaml import CParser

        bases: tuple = (CParser,)
    except ImportError:  # pragma: no cover - PyYAML built without libyaml
        from yaml.composer import Composer
        from yaml.parser import Parser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        bases = (Reader, Scanner, Parser, Composer)

    class CoreLoader(*bases, _CoreConstructor, _CoreResolver):  # type: ignore[misc]
        def __init__(self, stream):
            bases[0].__init__(self, stream)
            for base in bases[1:]:
                base.__init__(self)
            _CoreConstructor.__init__(self)
            _CoreResolver.__init__(self)

    return CoreLoader


_Loader = _loader_class()


def _mark_location(display: str, mark) -> tuple[str, str]:
    if mark is None:
        return display, " this line"
    return f"{display}:{mark.line + 1}", f" column {mark.column + 1}"


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str, display: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where, col = _mark_location(display, mark)
    what = exc.problem or exc.context or "invalid YAML"
    if isinstance(exc, ConstructorError):
        return f"{where}: {what}"
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    lines = text.split("\n")
    if mark and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
        hint = "indent with spaces: YAML does not allow tabs for indentation"
    else:
        hint = (
            "check the indentation and the colons, and quote text that contains ': ', ' #' "
            "or starts with a special character"
        )
    return f"{where}: YAML syntax error at{col}: {what}{context}; {hint}"


def _compose_and_construct(text: str, display: str):
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        bound = check_expansion(node)
        if bound:
            message, where = bound
            raise _Bounded(f"{display}:{where.start_mark.line + 1}: {message}")
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _Bounded(Exception):
    pass


def parse_yaml(text: str, display: str, problems: list[str]):
    """The document built from `text` (None when empty), or raises Refused after recording the problem."""
    try:
        return _compose_and_construct(text, display)
    except _Bounded as exc:
        problems.append(str(exc))
    except yaml.MarkedYAMLError as exc:
        problems.append(_syntax_problem(exc, text, display))
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = exc.character
        code = char if isinstance(char, int) else ord(char) if isinstance(char, str) and len(char) == 1 else None
        shown = f"U+{code:04X}" if code is not None else "a character"
        problems.append(
            f"{display}:{line}: the control character {shown} is not allowed in YAML; remove it "
            f"(write \\n in a double-quoted string for a line break)"
        )
    except yaml.YAMLError as exc:  # pragma: no cover - other YAML errors carry no mark
        problems.append(f"{display}: invalid YAML ({exc})")
    raise Refused
