"""HCL text → a small syntax tree that keeps line numbers.

python-hcl2 parses; its lark tree is turned here into :class:`Body` / :class:`Block` /
:class:`Attribute`, whose expressions stay unevaluated lark trees (evaluation needs
``locals`` and the environment, see :mod:`dstream.config.evaluate`). Parse trees are
cached per user as data (:mod:`dstream.config.treecache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dstream.config import treecache
from dstream.errors import ConfigError, Problem


@dataclass
class Attribute:
    name: str
    expr: Any  # lark Tree of the expression
    line: int


@dataclass
class Block:
    type: str
    labels: list[str]
    body: Body
    line: int


@dataclass
class Body:
    attributes: dict[str, Attribute] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    duplicates: list[Attribute] = field(default_factory=list)

    def blocks_of(self, type_: str) -> list[Block]:
        return [b for b in self.blocks if b.type == type_]


def parse(text: str, filename: str) -> Body:
    """Parse HCL text; a syntax error becomes a ConfigError naming ``filename:line``."""
    cached = treecache.load(text)
    if cached is not None:
        return _body(cached.children[0])
    import hcl2
    from lark.exceptions import LarkError, UnexpectedInput

    try:
        tree = hcl2.parses_to_tree(text)
    except UnexpectedInput as exc:
        line = getattr(exc, "line", 0) or 0
        message = _describe_syntax_error(exc)
        problem = Problem(filename, line, message)
        raise ConfigError(str(problem), [problem]) from None
    except LarkError as exc:
        problem = Problem(filename, 1, f"cannot parse HCL: {exc}")
        raise ConfigError(str(problem), [problem]) from None
    treecache.store(text, tree)
    return _body(tree.children[0])


def _describe_syntax_error(exc: Any) -> str:
    token = getattr(exc, "token", None)
    if token is not None:
        shown = str(token).strip() or repr(str(token))
        if getattr(token, "type", "") == "$END":
            return "unexpected end of file (a block or string is not closed)"
        return f"syntax error near {shown[:40]!r} (column {getattr(exc, 'column', '?')})"
    char = getattr(exc, "char", None)
    if char is not None:
        return f"unexpected character {char!r} (column {getattr(exc, 'column', '?')})"
    return "syntax error"


def _line(node: Any) -> int:
    meta = getattr(node, "meta", None)
    if meta is not None and not meta.empty:
        return int(meta.line)
    return int(getattr(node, "line", 0) or 0)


def node_name(node: Any) -> str:
    """The text of an identifier/keyword/literal_value node used as a name or label."""
    from lark import Token, Tree

    if isinstance(node, Token):
        return str(node)
    if isinstance(node, Tree):
        if node.data == "string":
            return "".join(str(c.children[0]) for c in node.children if _is_tree(c, "string_part"))
        for child in node.children:
            return node_name(child)
    return str(node)


def _is_tree(node: Any, data: str) -> bool:
    from lark import Tree

    return isinstance(node, Tree) and node.data == data


def _body(tree: Any) -> Body:
    from lark import Tree

    body = Body()
    for child in tree.children:
        if not isinstance(child, Tree):
            continue
        if child.data == "attribute":
            parts = [c for c in child.children if isinstance(c, Tree)]
            name = node_name(parts[0])
            attr = Attribute(name=name, expr=parts[-1], line=_line(child))
            if name in body.attributes:
                body.duplicates.append(attr)
            else:
                body.attributes[name] = attr
        elif child.data == "block":
            parts = [c for c in child.children if isinstance(c, Tree)]
            inner = parts[-1]
            heads = [p for p in parts[:-1] if p.data != "new_line_or_comment"]
            labels = [node_name(p) for p in heads[1:]]
            body.blocks.append(Block(type=node_name(heads[0]), labels=labels, body=_body(inner), line=_line(child)))
    return body
