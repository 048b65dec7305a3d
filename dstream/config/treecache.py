"""The per-user cache of HCL parse trees, as data (JSON), never as code (pickle).

Building python-hcl2's parser and parsing costs about 0.2 s of every command's start-up
here; reading a cached tree costs a few milliseconds. A cached tree is plain JSON: rule
names, token types and texts, and line numbers, the only parts the loader and the
evaluator read (``Tree.data``/``children``/``meta.line``, ``Token.type``/``line``/text).
Loading one builds lark ``Tree``/``Token`` objects and nothing else, so a planted entry can
at worst misparse a file, and only a folder that is the user's own and not writable by
others (:func:`dstream.paths.private_cache`) is used at all. An old ``.pickle`` entry is
never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from dstream import log, private
from dstream.paths import UnsafeFolder, private_cache

FORMAT = 1
_log = log.get("config")
_warned: set[str] = set()


def _folder() -> Path | None:
    try:
        return private_cache("hcl")
    except OSError as exc:  # no cache where there is no writable home: parse every time
        _log.debug("no parse cache: %s", exc)
        return None
    except UnsafeFolder as exc:
        if str(exc) not in _warned:
            _warned.add(str(exc))
            _log.warning("not using the parse cache: %s", exc)
        return None


def entry_name(text: str) -> str:
    """The cache file of ``text``: its hash, with which parser made the tree (another
    python-hcl2 or lark install, another entry). ``importlib.metadata.version`` would
    cost more than the cache saves; the packages' files, found without importing them,
    change with every install."""
    installs = []
    for package in ("hcl2", "lark"):
        spec = importlib.util.find_spec(package)
        origin = Path(spec.origin).stat() if spec is not None and spec.origin else None
        installs.append(f"{package}:{origin.st_mtime_ns}:{origin.st_size}" if origin else package)
    key = f"{FORMAT}:{':'.join(installs)}:{text}"
    return hashlib.sha256(key.encode()).hexdigest() + ".json"


def encode(node: Any) -> Any:
    """A lark tree as JSON data: ``["T", rule, line, children]``, ``["K", type, text, line]``."""
    from lark import Token, Tree

    if isinstance(node, Tree):
        line = None if node.meta.empty else node.meta.line
        return ["T", str(node.data), line, [encode(child) for child in node.children]]
    if isinstance(node, Token):
        return ["K", node.type, str(node), node.line]
    if node is None:  # lark's placeholder for an absent optional part
        return None
    raise TypeError(f"unexpected node {type(node).__name__} in an HCL parse tree")


def decode(data: Any) -> Any:
    """The lark tree ``encode`` described; TypeError/ValueError for anything else."""
    from lark import Token, Tree

    if data is None:
        return None
    if not isinstance(data, list) or len(data) != 4:
        raise TypeError("not a parse-tree node")
    kind, name, third, fourth = data
    if kind == "T" and isinstance(name, str) and isinstance(fourth, list) and _is_line(third):
        tree = Tree(name, [decode(child) for child in fourth])
        if third is not None:
            tree.meta.line = third
            tree.meta.empty = False
        return tree
    if kind == "K" and isinstance(name, str) and isinstance(third, str) and _is_line(fourth):
        return Token(name, third, line=fourth)
    raise TypeError("not a parse-tree node")


def _is_line(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def load(text: str) -> Any:
    """The cached tree of ``text``, or None (no entry, an unusable folder, a broken entry)."""
    folder = _folder()
    if folder is None:
        return None
    try:
        data = json.loads((folder / entry_name(text)).read_bytes())
        return decode(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, RecursionError):  # a broken entry is just a miss
        return None


def store(text: str, tree: Any) -> None:
    folder = _folder()
    if folder is None:
        return
    try:
        data = json.dumps(encode(tree), separators=(",", ":"))
    except (TypeError, RecursionError):  # a tree too deep to keep: parse it again next time
        return
    with contextlib.suppress(OSError):
        private.write_atomically(folder / entry_name(text), data)
