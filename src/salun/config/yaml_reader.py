"""The one YAML reader (config files and presets, ``key=value`` override values, bench grids
in those files, ``--cluster-arg`` values) and the one writer.

Reading is safe (``yaml.SafeLoader``: tags such as ``!!python/object`` are refused) and bounded
by the limits of :mod:`salun.core.limits`, checked before the work they bound: the size before
the text is read or parsed, the nesting depth while nodes are composed (before the structure is
built, so no ``RecursionError``), and anchors / aliases as soon as one appears (none are
allowed, so an alias bomb or a recursive alias never expands). A key given twice in a mapping
is refused at any level, naming the key and both lines. Every refusal is one
:class:`SalunError` line naming the input, the problem and the line.

Writing (:func:`dump_yaml`) never emits anchors, so what salun writes it can read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from salun.core.errors import SalunError
from salun.core.limits import MAX_CONFIG_BYTES, MAX_YAML_DEPTH

_MERGE = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A limit of this reader, with the position it was found at."""

    def __init__(self, text: str, mark: Any, hint: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.mark = mark
        self.hint = hint


class _Loader(yaml.SafeLoader):
    """SafeLoader with a depth limit, no anchors or aliases, and no duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # flow nesting ([[[...]]]) is refused by the scanner already: its look-ahead for
        # simple keys would otherwise cost time quadratic in the depth before composing
        if self.flow_level >= MAX_YAML_DEPTH:
            raise _Refused(
                f"nests lists or mappings more than {MAX_YAML_DEPTH} levels deep",
                self.get_mark(),
                f"the limit is {MAX_YAML_DEPTH}",
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(
                f"uses the YAML {'alias' if sign == '*' else 'anchor'} {sign}{event.anchor}",
                event.start_mark,
                "anchors and aliases are not allowed in configs: write the values out",
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(
                    f"nests lists or mappings more than {MAX_YAML_DEPTH} levels deep",
                    event.start_mark,
                    f"the limit is {MAX_YAML_DEPTH}",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the constructor refuses it below
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise _Refused(
                        f"gives the key {key!r} twice (lines {first} and {line})",
                        None,
                        "give each key once",
                    )
                seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # beyond Python's 4300-digit limit of int(str)
            raise _Refused(
                f"holds an integer of {len(str(node.value))} characters",
                node.start_mark,
                "far beyond any allowed value",
            ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is."""
    if isinstance(e, _Refused):
        problem, mark, hint = e.text, e.mark, f"; {e.hint}" if e.hint else ""
    else:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark, hint = getattr(e, "problem_mark", None), ""
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{at}{hint}".split())


def quoted(text: str, most: int = 60) -> str:
    """``repr(text)``, cut to ``most`` characters (with its length) for a message line."""
    if len(text) <= most:
        return repr(text)
    return f"{text[:most]!r}... ({len(text):,} characters)"


def _check_size(size: int, what: str) -> None:
    if size > MAX_CONFIG_BYTES:
        raise SalunError(
            f"{what} is {size:,} bytes; the limit is {MAX_CONFIG_BYTES:,} bytes "
            f"({MAX_CONFIG_BYTES // 1024} KiB)"
        )


def read_yaml(text: str, what: str) -> Any:
    """Parse ``text`` (``what`` names it in errors, e.g. "config file 'x.yaml'") within the
    limits of :mod:`salun.core.limits`; one-line :class:`SalunError` otherwise."""
    _check_size(len(text), what)
    _check_size(len(text.encode("utf-8", "surrogatepass")), what)
    try:
        loader = _Loader(text)  # the reader rejects control characters here
    except yaml.YAMLError as e:
        raise SalunError(f"{what} is not valid YAML: {_yaml_error(e)}") from None
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise SalunError(f"{what} {_yaml_error(e)}") from None
    except yaml.YAMLError as e:  # syntax errors, and tags such as !!python/object (refused)
        raise SalunError(f"{what} is not valid YAML: {_yaml_error(e)}") from None
    except (ValueError, OverflowError) as e:  # e.g. a timestamp with month 13
        raise SalunError(f"{what} is not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str) -> Any:
    """:func:`read_yaml` of a UTF-8 file, its size checked before it is read."""
    path = Path(path)
    try:
        if not path.is_file():
            raise SalunError(f"{what} does not exist or is not a file")
        _check_size(path.stat().st_size, what)
        with path.open("rb") as f:  # at most one byte past the limit, whatever stat said
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise SalunError(f"cannot read {what}: {e.strerror}") from None
    _check_size(len(raw), what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SalunError(f"{what} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return read_yaml(text, what)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(tree: Any) -> str:
    """``tree`` as YAML (keys in their order) that :func:`read_yaml` reads back: no anchors."""
    return yaml.dump(tree, Dumper=_NoAliasDumper, sort_keys=False)
