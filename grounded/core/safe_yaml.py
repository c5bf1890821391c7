"""The one YAML reader and writer of the project: safe types only, and bounded documents.

Every YAML the project reads (pipeline files, ``--set`` values, ``data.yaml``) goes through :func:`load_yaml`
or :func:`read_yaml`. A document is refused, with one line naming its source, when it is larger than
:data:`MAX_BYTES`, nests deeper than :data:`MAX_DEPTH`, or when its aliases would expand it past
:data:`MAX_EXPANDED` (a "billion laughs" document) or make it refer to itself. Anchors and aliases stay
allowed within those bounds (a pipeline may share a block of parameters with ``<<: *common``). What
:func:`dump_yaml` writes never holds an alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from grounded.core.errors import UserError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_EXPANDED", "YamlError", "dump_yaml", "load_yaml", "read_yaml"]

#: the largest document read, in bytes (the bundled pipelines are about 1 KB; PyYAML reads ~150 KB a second)
MAX_BYTES = 256 * 1024
#: the deepest nesting of lists and mappings, aliases expanded
MAX_DEPTH = 64
#: the largest document once its aliases are expanded: one unit per value plus one per scalar character
MAX_EXPANDED = 4 * MAX_BYTES


class YamlError(UserError):
    """A YAML document that cannot be read: invalid, unsafe, or over a size limit; one line naming its source."""


class _Refused(Exception):
    """A limit reached while composing (turned into :class:`YamlError` with the source's name)."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` whose composer refuses nesting deeper than :data:`MAX_DEPTH` (before Python's stack)."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand it past :data:`MAX_EXPANDED` or :data:`MAX_DEPTH`, or loop.

    Each node is measured once (aliases share nodes), so the check costs time linear in the text.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in open_nodes:
            raise _Refused("has an alias that refers to itself")
        if key not in measured:
            if depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded")
            open_nodes.add(key)
            if isinstance(node, yaml.ScalarNode):
                children: list[yaml.Node] = []
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            else:
                children = [part for pair in node.value for part in pair]
            size, height = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0), 1
            for child in children:
                child_size, child_height = measure(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
                if size > MAX_EXPANDED:
                    raise _Refused(
                        f"expands through its aliases to more than {MAX_EXPANDED} values and characters "
                        '(a "billion laughs" document?)'
                    )
            open_nodes.discard(key)
            measured[key] = (size, height)
        size, height = measured[key]
        if depth + height - 1 > MAX_DEPTH:
            raise _Refused(f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded")
        return size, height

    measure(root, 1)


def _describe(exc: yaml.YAMLError) -> str:
    """A PyYAML error as one line: the problem and where it is."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what
    return " ".join(str(exc).split())


def load_yaml(text: str | bytes, source: str) -> Any:
    """The value of one YAML document (safe types only); ``source`` names it in errors (a path, an option).

    Raises :class:`YamlError` for invalid or unsafe YAML and for a document over the limits.
    """
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlError(f"{source}: {size} bytes of YAML; at most {MAX_BYTES} are read")
    loader = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise YamlError(f"{source}: YAML refused: the document {exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{source}: invalid YAML: {_describe(exc)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """:func:`load_yaml` of a file, reading no more than :data:`MAX_BYTES` + 1 bytes of it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise YamlError(f"{path}: more than {MAX_BYTES} bytes of YAML; at most {MAX_BYTES} are read")
    return load_yaml(data, str(path))


class _NoAliasDumper(yaml.SafeDumper):
    """``SafeDumper`` that writes a shared list or mapping out again instead of an anchor and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any, *, allow_unicode: bool = False) -> str:
    """``data`` as YAML text, keys in their order, without anchors or aliases."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=allow_unicode)
