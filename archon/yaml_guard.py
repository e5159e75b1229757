"""Reading YAML that may be hostile or broken: encoding, size, alias bombs, duplicate keys.

PyYAML shares the object behind every alias, so a "billion laughs" document loads in
little memory, but anything that walks it (validation, ``repr`` in an error hint) expands
it exponentially. The composed node graph is therefore measured *as expanded* before any
Python object is built, and refused past :data:`MAX_EXPANDED_NODES`. Duplicate keys, which
PyYAML silently resolves to the last one, are refused naming both lines.
"""

from __future__ import annotations

import codecs
import reprlib
from typing import Any

import yaml

from archon.errors import ConfigError

MAX_YAML_BYTES = 8 * 1024 * 1024
MAX_EXPANDED_NODES = 100_000
_QUOTE_CHARS = 200

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 6
_repr.maxlevel = 3


def quote(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """A bounded ``repr`` of a value for an error message, never walking all of a huge value."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_yaml_bytes(data: bytes, file: str) -> str:
    """UTF-8 text (a UTF-8 BOM is allowed); anything else is a config error naming the encoding."""
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"file is {len(data):,} bytes; YAML configs are limited to {MAX_YAML_BYTES:,}",
                          file=file, hint="is this the right file?")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)) or (
            len(data) >= 2 and (data[0] == 0 or data[1] == 0)):
        raise ConfigError("file is UTF-16 or UTF-32 encoded; archon reads YAML as UTF-8", file=file,
                          hint="save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 FILE > NEW_FILE`)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                          file=file, line=line, hint="save it as UTF-8") from None


def check_node_tree(root: yaml.Node | None, file: str) -> None:
    """Refuse alias bombs, recursive aliases and duplicate keys in a composed document."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to the node that contains it (a recursive structure)",
                              file=file, line=node.start_mark.line + 1, hint="remove the recursive alias")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            _check_duplicates(node, file)
            for k, v in node.value:
                total += expanded(k) + expanded(v)
                if total > MAX_EXPANDED_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += expanded(item)
                if total > MAX_EXPANDED_NODES:
                    break
        open_nodes.discard(key)
        if total > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"YAML aliases expand this document to more than {MAX_EXPANDED_NODES:,} values "
                "(an alias bomb?)", file=file, line=node.start_mark.line + 1,
                hint="write the values out, or use fewer nested aliases (`*name`)")
        sizes[key] = total
        return total

    try:
        expanded(root)
    except RecursionError:
        raise ConfigError("YAML document is nested too deeply", file=file) from None


def _check_duplicates(node: yaml.MappingNode, file: str) -> None:
    seen: dict[str, int] = {}
    for key, _value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise ConfigError(f"duplicate key {quote(key.value)} (lines {seen[key.value]} and {line})",
                              file=file, line=line, hint="keep one of them: YAML would silently use the last")
        seen[key.value] = line


def load_checked(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """Data and node tree of a YAML text, after :func:`check_node_tree`; YAML errors propagate."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    check_node_tree(root, file)
    if root is None:
        return None, None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root), root
    finally:
        loader.dispose()
