"""The envelope grammar, defined once: what a protocol line must be, and the two checks of it.

A line is the bytes between two ``\\n`` on a provider's stdout. It is a valid envelope when:

1. it is at most ``max_line_bytes`` long, newline excluded (the framer streams longer lines
   into the dead letters without holding them: reason ``oversized_line``);
2. it is UTF-8 (strict: no overlong forms, no encoded surrogates, nothing above U+10FFFF):
   else ``invalid_utf8``;
3. it is one JSON text as RFC 8259 defines it: whitespace (space, tab, CR) may surround the
   value, no byte order mark, no ``NaN``/``Infinity``, no raw control characters (U+0000 to
   U+001F) in strings, only valid escapes and no lone surrogate escapes (``"\\ud800"``), and
   every number finite as an IEEE 754 double (``1e400`` or a 400-digit integer is Infinity in
   disguise; RFC 8259 §6 lets implementations limit the range): else ``malformed_json``;
4. that value is an object: else ``not_an_object``;
5. its nesting depth is at most :data:`MAX_DEPTH` (the outer object counts 1): else ``too_deep``.

A blank line (only spaces, tabs, CR) is no envelope and no error: it is skipped. Duplicate
names in an object are allowed (RFC 8259 §4 says they SHOULD be unique, not MUST); the line
is relayed byte for byte and dstream's own parser keeps the last. A line is a control line
(``checkpoint``, ``ack``, ``gauge``, ``dead_letter``, ``committed``) when its decoded object
has that key and no ``data`` key, however the key is written.

:func:`check_line` is the reference: simple, line by line, the judge of every other path.
:func:`valid_block` is the relay's hot path: it answers for a whole block of lines in two
C-level parses and must never accept a block holding a line the reference rejects
(``tests/unit/test_relay_fuzz.py`` tries to make them disagree).
"""

from __future__ import annotations

import re
from typing import Any

from dstream import protocol

MAX_DEPTH = 128  # well below orjson's 254 levels for encoding what dstream re-encodes (checkpoints)
BLANK = b" \t\r"

try:  # simdjson validates without building Python objects: ~5x cheaper than orjson on small lines
    import simdjson as _simdjson

    _PARSER: Any = _simdjson.Parser()
except ImportError:  # pragma: no cover - an optional speed-up
    _PARSER = None

# simdjson and orjson allow 1024 levels; the parses below nest every line this much deeper,
# so that they fail exactly on lines deeper than MAX_DEPTH.
_PARSER_DEPTH = 1024
_PAD = _PARSER_DEPTH - MAX_DEPTH
_ARRAY_OPEN, _ARRAY_CLOSE = b"[" * _PAD, b"\n" + b"]" * _PAD
_OBJECT_OPEN, _OBJECT_CLOSE = b"[" * (_PAD - 1) + b'{"":', b"\n}" + b"]" * (_PAD - 1)
_NOT_OBJECT_START = re.compile(rb"\n[^{]")
# An escaped ASCII letter or underscore (``"\u0063heckpoint"``): the only way a control key can
# hide from the relay's substring probes. No common encoder writes letters that way.
_ESCAPED_NAME_CHAR = re.compile(rb"\\u00[5-7][0-9a-fA-F]")


def is_blank(line: bytes) -> bool:
    return not line.strip(BLANK)


def check_line(line: bytes) -> tuple[str, str, dict[str, Any] | None]:
    """The reference: ``("", "", object)`` for a valid envelope, else ``(reason, detail, None)``.

    ``line`` has no newline and is not blank (callers skip blank lines, and the framer has
    already cut lines over ``max_line_bytes``).
    """
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "invalid_utf8", f"{exc.reason} at byte {exc.start}", None
    try:
        value = protocol.decode(line)
    except Exception as exc:  # noqa: BLE001 - whatever makes a parser raise is a bad line
        if "depth" in str(exc) or "recursion" in str(exc):  # orjson: "depth limit exceeded"
            return "too_deep", f"nested deeper than {MAX_DEPTH} levels", None
        return "malformed_json", str(exc), None
    if not isinstance(value, dict):
        return "not_an_object", f"a JSON {type(value).__name__}, not an object", None
    if line.count(b"{") + line.count(b"[") > MAX_DEPTH and depth(value) > MAX_DEPTH:
        return "too_deep", f"nested deeper than {MAX_DEPTH} levels", None
    return "", "", value


def depth(value: Any) -> int:
    """Nesting depth of a decoded value: ``{}`` is 1, ``{"a":[]}`` is 2, a scalar 0."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def valid_block(block: bytes, *, objects_checked: bool = False) -> int:
    """How many lines ``block`` (newline-terminated lines) holds when every one is a valid
    envelope with no leading whitespace; -1 means "look at the lines one by one".

    -1 is always safe; a count is a promise that :func:`check_line` accepts every line.
    A caller that has already seen every line start with ``{`` says so (``objects_checked``).

    Why two parses: one parse of the lines joined into an array cannot tell where lines end
    (``{"a":"x`` + ``y"}`` joined by ``,`` is one valid string; ``{"a":[{}`` + ``{}]},{}``
    balance each other). Here each line keeps its newline, so no string can span two lines
    (a raw newline in a string is invalid), and the lines are joined once as array elements
    (``\\n,``) and once as object members (``\\n,"":``). A line that ends inside an open
    array parses only in the first, one that ends inside an open object or holds a second
    top-level member only in the second, a second top-level value in neither: both parse
    only when every line is exactly one JSON value. Every line starting with ``{`` makes
    each an object, and the padding makes the parser's depth limit ours.
    """
    if not block.endswith(b"\n") or not block.startswith(b"{"):
        return -1
    if not objects_checked and _NOT_OBJECT_START.search(block) is not None:
        return -1
    body = block[:-1]
    members = body.replace(b"\n", b'\n,"":')
    lines = (len(members) - len(body)) // 4 + 1
    parse = protocol.decode if _PARSER is None else _PARSER.parse  # without simdjson, orjson
    try:
        parse(b"".join((_ARRAY_OPEN, body.replace(b"\n", b"\n,"), _ARRAY_CLOSE)))
        parse(b"".join((_OBJECT_OPEN, members, _OBJECT_CLOSE)))
    except Exception:  # noqa: BLE001 - any parser error (bad JSON, big integers, depth): line by line
        return -1
    return lines


def may_hide_control_key(block: bytes) -> bool:
    """Whether a line of ``block`` may be a control line the substring probes miss."""
    return b"\\" in block and _ESCAPED_NAME_CHAR.search(block) is not None
