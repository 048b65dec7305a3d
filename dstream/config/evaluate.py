"""Evaluate HCL expressions: literals, strings with ``${...}``, ``local.NAME``, ``env()``.

Upstream dstream rendered the whole file through Go templates, so ``{{ env "X" }}`` inside
strings is honoured too. Unlike upstream, a missing variable is an error unless a default
is given (``{{ env "X" "default" }}``, ``{{ env "X" | default "d" }}`` or ``env("X", "d")``).

Every value that came from the environment is recorded in :attr:`Evaluator.secrets`
so logs and error messages can redact it.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Any

from dstream.config.functions import FUNCTIONS, EvalError, as_bool, as_number, stringify
from dstream.config.hcl import Attribute, node_name

__all__ = ["EvalError", "Evaluator", "default_environ"]

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_GO_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_GO_ENV = re.compile(
    r"""^\s*env\s+"(?P<name>[^"]+)"\s*(?:"(?P<default>[^"]*)"\s*)?"""
    r"""(?:\|\s*default\s+"(?P<pipe_default>[^"]*)"\s*)?$"""
)
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _is_tree(node: Any) -> bool:
    from lark import Tree

    return isinstance(node, Tree)


def _children(node: Any) -> list[Any]:
    """Child trees, without punctuation tokens and newline/comment noise."""
    return [c for c in node.children if _is_tree(c) and c.data != "new_line_or_comment"]


def _line(node: Any) -> int:
    meta = getattr(node, "meta", None)
    return int(meta.line) if meta is not None and not meta.empty else 0


class Evaluator:
    """Evaluates expressions against ``locals`` and an environment mapping."""

    def __init__(self, local_attrs: Mapping[str, Attribute], environ: Mapping[str, str]) -> None:
        self._local_attrs = local_attrs
        self._environ = environ
        self._locals: dict[str, Any] = {}
        self._resolving: list[str] = []
        self.secrets: set[str] = set()
        self.env_names: set[str] = set()
        self._functions: dict[str, Callable[[int, list[Any]], Any]] = {"env": self._fn_env, **FUNCTIONS}

    # -- locals ---------------------------------------------------------------------

    def local(self, name: str, line: int) -> Any:
        if name in self._locals:
            return self._locals[name]
        attr = self._local_attrs.get(name)
        if attr is None:
            known = ", ".join(sorted(self._local_attrs)) or "none defined"
            raise EvalError(line, f"undefined local 'local.{name}' (locals: {known})")
        if name in self._resolving:
            chain = " -> ".join([*self._resolving, name])
            raise EvalError(attr.line, f"locals refer to each other in a cycle: {chain}")
        self._resolving.append(name)
        try:
            value = self.eval(attr.expr)
        finally:
            self._resolving.pop()
        self._locals[name] = value
        return value

    # -- expressions ----------------------------------------------------------------

    def eval(self, node: Any) -> Any:
        kind = node.data
        line = _line(node)
        if kind == "expr_term":
            inner = _children(node)
            if len(inner) != 1:
                raise EvalError(line, "unsupported expression")
            return self.eval(inner[0])
        if kind == "int_lit":
            return int(str(node.children[0]))
        if kind == "float_lit":
            return float(str(node.children[0]))
        if kind == "literal_value":
            return {"true": True, "false": False, "null": None}[str(node.children[0])]
        if kind == "string":
            return self._string(node)
        if kind in ("heredoc_template", "heredoc_template_trim"):
            return self._template_text(_heredoc(str(node.children[0]), kind.endswith("trim")), line)
        if kind == "tuple":
            return [self.eval(c) for c in _children(node)]
        if kind == "object":
            return self._object(node)
        if kind == "identifier":
            name = node_name(node)
            raise EvalError(line, f"unknown name '{name}' (use local.NAME, env(\"VAR\") or a quoted string)")
        if kind in {"get_attr_expr_term", "index_expr_term"}:
            return self._traverse(node)
        if kind == "function_call":
            return self._call(node)
        if kind == "conditional":
            cond, then, other = _children(node)
            return self.eval(then) if self._truth(cond) else self.eval(other)
        if kind == "binary_op":
            return self._binary(node)
        if kind == "unary_op":
            op = str(node.children[0])
            value = self.eval(_children(node)[0])
            if op == "-":
                return -as_number(line, value)
            return not as_bool(line, value)
        raise EvalError(line, f"unsupported expression ({kind.replace('_', ' ')})")

    def _truth(self, node: Any) -> bool:
        return as_bool(_line(node), self.eval(node))

    def _string(self, node: Any) -> Any:
        parts = [c for c in node.children if _is_tree(c)]
        line = _line(node)
        # "${expr}" alone keeps the value's type (lists, maps, numbers), as in HCL.
        if len(parts) == 1 and _is_tree(parts[0].children[0]):
            sub = parts[0].children[0]
            if sub.data == "interpolation":
                return self.eval(_children(sub)[0])
        out: list[str] = []
        for part in parts:
            piece = part.children[0]
            if _is_tree(piece):
                if piece.data != "interpolation":
                    raise EvalError(line, "template directives (%{ ... }) are not supported")
                out.append(stringify(line, self.eval(_children(piece)[0])))
            else:
                text = str(piece)
                if piece.type in {"ESCAPED_INTERPOLATION", "ESCAPED_DIRECTIVE"}:
                    out.append(text[1:])
                else:
                    out.append(self._template_text(_unescape(text, line), line))
        return "".join(out)

    def _template_text(self, text: str, line: int) -> str:
        if "{{" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            found = _GO_ENV.match(match.group(1))
            if not found:
                raise EvalError(
                    line,
                    f'unsupported template {match.group(0)!r}: only {{{{ env "VAR" }}}} '
                    f"(optionally with a default) is supported",
                )
            default = found.group("default")
            if default is None:
                default = found.group("pipe_default")
            return self._env(line, found.group("name"), default)

        return _GO_TEMPLATE.sub(replace, text)

    def _object(self, node: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for elem in _children(node):
            key_node, value_node = _children(elem)
            key_expr = _children(key_node)[0] if _children(key_node) else key_node
            key: Any
            inner = _children(key_expr)
            if key_expr.data == "expr_term" and len(inner) == 1 and inner[0].data == "identifier":
                key = node_name(inner[0])
            elif key_expr.data in ("keyword", "identifier"):
                key = node_name(key_expr)
            else:
                key = self.eval(key_expr)
            if not isinstance(key, str):
                raise EvalError(_line(elem), f"object keys must be strings, got {key!r}")
            result[key] = self.eval(value_node)
        return result

    def _traverse(self, node: Any) -> Any:
        steps: list[tuple[str, Any]] = []
        current = node
        while current.data in ("get_attr_expr_term", "index_expr_term", "expr_term"):
            kids = _children(current)
            if current.data == "expr_term":
                if len(kids) != 1:
                    break
                current = kids[0]
                continue
            base, accessor = kids
            if accessor.data == "get_attr":
                steps.append(("attr", node_name(_children(accessor)[0])))
            elif accessor.data == "short_index":
                steps.append(("index", int(str(accessor.children[-1]))))
            else:
                steps.append(("index", self.eval(_children(accessor)[0])))
            current = base
        steps.reverse()
        line = _line(node)
        if current.data != "identifier" or node_name(current) != "local" or not steps:
            what = node_name(current) if current.data == "identifier" else current.data
            raise EvalError(line, f"unknown reference '{what}...' (only local.NAME is available)")
        kind, name = steps[0]
        if kind != "attr":
            raise EvalError(line, "use local.NAME, not local[...]")
        value = self.local(name, line)
        path = f"local.{name}"
        for kind, key in steps[1:]:
            path += f".{key}" if kind == "attr" else f"[{key!r}]"
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                raise EvalError(line, f"{path} does not exist") from None
        return value

    def _call(self, node: Any) -> Any:
        kids = _children(node)
        name = node_name(kids[0])
        args = [self.eval(a) for a in _children(kids[1])] if len(kids) > 1 else []
        line = _line(node)
        fn = self._functions.get(name)
        if fn is None:
            known = ", ".join(sorted(self._functions))
            raise EvalError(line, f"unknown function '{name}' (available: {known})")
        return fn(line, args)

    def _binary(self, node: Any) -> Any:
        left_node, term = _children(node)
        operator_node, right_node = _children(term)
        op = str(operator_node.children[0])
        line = _line(node)
        if op == "&&":
            return self._truth(left_node) and self._truth(right_node)
        if op == "||":
            return self._truth(left_node) or self._truth(right_node)
        left, right = self.eval(left_node), self.eval(right_node)
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        a, b = as_number(line, left), as_number(line, right)
        ops: dict[str, Callable[[Any, Any], Any]] = {
            "+": lambda x, y: x + y,
            "-": lambda x, y: x - y,
            "*": lambda x, y: x * y,
            "/": lambda x, y: x / y,
            "%": lambda x, y: x % y,
            "<": lambda x, y: x < y,
            ">": lambda x, y: x > y,
            "<=": lambda x, y: x <= y,
            ">=": lambda x, y: x >= y,
        }
        try:
            return ops[op](a, b)
        except ZeroDivisionError:
            raise EvalError(line, "division by zero") from None

    # -- functions ------------------------------------------------------------------

    def _fn_env(self, line: int, args: list[Any]) -> str:
        if not 1 <= len(args) <= 2 or not all(isinstance(a, str) for a in args):
            raise EvalError(line, 'env() takes a variable name and an optional default: env("VAR", "default")')
        return self._env(line, args[0], args[1] if len(args) == 2 else None)

    def _env(self, line: int, name: str, default: str | None) -> str:
        self.env_names.add(name)
        value = self._environ.get(name)
        if value is None:
            if default is None:
                raise EvalError(
                    line,
                    f"environment variable {name} is not set "
                    f'(set it, or give a default: env("{name}", "...") / {{{{ env "{name}" "..." }}}})',
                )
            return default
        if not _is_utf8(value):
            # os.environ keeps bytes that are not UTF-8 as lone surrogates (PEP 383): they
            # cannot travel in the UTF-8 command envelope. Never show the value: it may be a secret.
            raise EvalError(line, f"environment variable {name} is not valid UTF-8")
        if len(value) >= 4:
            self.secrets.add(value)
        return value


def _unescape(text: str, line: int) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in {"u", "U"}:
            width = 4 if nxt == "u" else 8
            digits = text[i + 2 : i + 2 + width]
            code = int(digits, 16) if len(digits) == width and _HEX.issuperset(digits) else -1
            if not 0 <= code <= sys.maxunicode:
                raise EvalError(line, f"bad escape \\{nxt}{digits}")
            if 0xD800 <= code <= 0xDFFF:
                # A lone UTF-16 surrogate is no character: it cannot be encoded as UTF-8, so the
                # command envelope would fail to encode at run time. (HCL reads \u as a
                # character of the Basic Multilingual Plane.)
                raise EvalError(
                    line,
                    f"\\{nxt}{digits} is a UTF-16 surrogate, not a character; write characters "
                    f"beyond U+FFFF as \\U followed by 8 hex digits (\\U0001F600)",
                )
            out.append(chr(code))
            i += 2 + width
        else:
            raise EvalError(line, f"unknown escape sequence \\{nxt}")
    return "".join(out)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _heredoc(raw: str, trim: bool) -> str:
    lines = raw.split("\n")
    body = lines[1:-2] if lines and lines[-1] == "" else lines[1:-1]
    if trim:
        indents = [len(x) - len(x.lstrip()) for x in body if x.strip()]
        cut = min(indents, default=0)
        body = [x[cut:] for x in body]
    return "\n".join(body) + ("\n" if body else "")


def default_environ() -> Mapping[str, str]:
    return os.environ
