"""How a pydantic validation error reads, in one wording for the task file (the loader) and
for a provider's config (the SDK host): ``unknown setting 'x'`` with a "did you mean" for a
close known name, ``missing setting 'x'``, else ``x: what is wrong``."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pydantic_core import ErrorDetails


def location(loc: Sequence[Any], prefix: str = "") -> str:
    """``("transform", 1, "config")`` → ``transform[1].config`` (pydantic's own steps left out)."""
    text = prefix
    for part in loc:
        if part in ("function-after",):
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'transform'?)`` for a close known name, else ``""``."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe_error(error: ErrorDetails, prefix: str = "", known: Iterable[str] = ()) -> str:
    where = location(error["loc"], prefix)
    kind = error["type"]
    if kind == "extra_forbidden":
        last = str(error["loc"][-1]) if error["loc"] else ""
        return f"unknown setting '{where}'{did_you_mean(last, known)}"
    if kind == "missing":
        return f"missing setting '{where}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        message += f", got {error['input']!r}"
    return f"{where}: {message}" if where else message
