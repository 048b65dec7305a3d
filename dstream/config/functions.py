"""The values and functions of task-file expressions: ``lower``, ``upper``, ``concat``,
``merge``, ``join``, ``format``, ``jsonencode``, ``tostring``, ``tonumber``, and the checks
that turn a wrong type into an error naming the line."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FUNCTIONS", "EvalError", "as_bool", "as_number", "stringify"]


class EvalError(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(message)


def stringify(line: int, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if value is None:
        return ""
    raise EvalError(line, f'cannot insert a {type(value).__name__} into a string; use "${{...}}" alone')


def as_number(line: int, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvalError(line, f"expected a number, got {value!r}")
    return value


def as_bool(line: int, value: Any) -> bool:
    if not isinstance(value, bool):
        raise EvalError(line, f"expected true or false, got {value!r}")
    return value


def _one(line: int, name: str, args: list[Any]) -> Any:
    if len(args) != 1:
        raise EvalError(line, f"{name}() takes exactly one argument")
    return args[0]


def _one_str(line: int, name: str, args: list[Any]) -> str:
    value = _one(line, name, args)
    if not isinstance(value, str):
        raise EvalError(line, f"{name}() takes a string")
    return value


def _fn_concat(line: int, args: list[Any]) -> list[Any]:
    if not all(isinstance(a, list) for a in args):
        raise EvalError(line, "concat() takes lists")
    return [x for a in args for x in a]


def _fn_merge(line: int, args: list[Any]) -> dict[str, Any]:
    if not all(isinstance(a, dict) for a in args):
        raise EvalError(line, "merge() takes maps")
    out: dict[str, Any] = {}
    for a in args:
        out.update(a)
    return out


def _fn_tonumber(line: int, args: list[Any]) -> Any:
    value = _one(line, "tonumber", args)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise EvalError(line, f"tonumber(): {value!r} is not a number") from None


def _fn_format(line: int, args: list[Any]) -> str:
    if not args or not isinstance(args[0], str):
        raise EvalError(line, "format() takes a format string first")
    spec = re.sub(r"%v", "%s", args[0])
    try:
        return spec % tuple(args[1:])
    except (TypeError, ValueError) as exc:
        raise EvalError(line, f"format(): {exc}") from None


def _fn_join(line: int, args: list[Any]) -> str:
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], list):
        raise EvalError(line, 'join() takes a separator and a list: join(",", local.tables)')
    return args[0].join(stringify(line, x) for x in args[1])


FUNCTIONS: dict[str, Callable[[int, list[Any]], Any]] = {
    "lower": lambda line, a: _one_str(line, "lower", a).lower(),
    "upper": lambda line, a: _one_str(line, "upper", a).upper(),
    "jsonencode": lambda line, a: json.dumps(_one(line, "jsonencode", a)),
    "concat": _fn_concat,
    "merge": _fn_merge,
    "tostring": lambda line, a: stringify(line, _one(line, "tostring", a)),
    "tonumber": _fn_tonumber,
    "format": _fn_format,
    "join": _fn_join,
}
