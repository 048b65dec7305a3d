"""HCL block bodies → dicts, with the line of every key: the task file's own blocks (no labels,
one of each), ``transform`` blocks (a list, in file order) and free-form ``config`` blocks
(labels nest, repeats become a list). Problems go to the loader's reporter; a value that
failed to evaluate is remembered in ``failed`` so its later validation errors are not
reported twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dstream.config.evaluate import EvalError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.config.evaluate import Evaluator
    from dstream.config.hcl import Block, Body


class BodyReader:
    def __init__(self, report: Callable[[int, str], None]) -> None:
        self.report = report
        self.failed: set[tuple[Any, ...]] = set()

    def report_duplicates(self, body: Body) -> None:
        for dup in body.duplicates:
            first = body.attributes[dup.name].line
            self.report(dup.line, f"attribute '{dup.name}' is set twice (first at line {first})")

    def read(
        self,
        body: Body,
        path: tuple[Any, ...],
        lines: dict[tuple[Any, ...], int],
        evaluator: Evaluator,
        kind: str,
    ) -> dict[str, Any]:
        """Evaluate a block body into a dict, recording the line of every key. ``kind`` is what
        the body belongs to: "task", "provider", "config" (free-form: labelled and repeated
        blocks allowed) or a settings block ("container", "state" …)."""
        self.report_duplicates(body)
        out = self._attributes(body, path, lines, evaluator)
        seen: dict[str, int] = {}
        for inner in body.blocks:
            if kind == "task" and inner.type == "transform":
                self._add_transform(inner, out, path, lines, evaluator)
            elif kind == "config":
                self._add_config_block(inner, out, seen, path, lines, evaluator)
            else:
                self._add_settings_block(inner, out, seen, path, lines, evaluator, kind)
        return out

    def _attributes(
        self, body: Body, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int], evaluator: Evaluator
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, attr in body.attributes.items():
            lines[(*path, name)] = attr.line
            try:
                out[name] = evaluator.eval(attr.expr)
            except EvalError as exc:
                self.report(exc.line or attr.line, str(exc))
                self.failed.add((*path, name))
        return out

    def _add_transform(
        self,
        inner: Block,
        out: dict[str, Any],
        path: tuple[Any, ...],
        lines: dict[tuple[Any, ...], int],
        evaluator: Evaluator,
    ) -> None:
        """``transform { }`` repeats: a list, in file order."""
        key = (*path, inner.type)
        if inner.labels:
            self.report(inner.line, "block 'transform' takes no labels")
            return
        stages = out.setdefault("transform", [])
        if not isinstance(stages, list):
            self.report(inner.line, f"'transform' is given both as an attribute (line {lines[key]}) and as a block")
            return
        key = (*key, len(stages))
        lines[key] = inner.line
        stages.append(self.read(inner.body, key, lines, evaluator, "provider"))

    def _add_config_block(
        self,
        inner: Block,
        out: dict[str, Any],
        seen: dict[str, int],
        path: tuple[Any, ...],
        lines: dict[tuple[Any, ...], int],
        evaluator: Evaluator,
    ) -> None:
        """A block inside ``config``: labels nest (``a "b" { }`` is ``{a: {b: …}}``), repeats are a list."""
        key = (*path, inner.type)
        value = self.read(inner.body, key, lines, evaluator, "config")
        if self._also_an_attribute(inner, out, seen, lines.get(key)):
            return
        if inner.type in seen:
            previous = out[inner.type]
            out[inner.type] = [*previous, value] if isinstance(previous, list) else [previous, value]
            return
        out[inner.type] = _nest_labels(inner.labels, value) if inner.labels else value
        seen[inner.type] = inner.line
        lines[key] = inner.line

    def _add_settings_block(
        self,
        inner: Block,
        out: dict[str, Any],
        seen: dict[str, int],
        path: tuple[Any, ...],
        lines: dict[tuple[Any, ...], int],
        evaluator: Evaluator,
        kind: str,
    ) -> None:
        """A block of the task file's own structure: no labels, at most one of each."""
        key = (*path, inner.type)
        if inner.labels:
            self.report(inner.line, f"block '{inner.type}' takes no labels")
            return
        if inner.type == "config":
            inner_kind = "config"
        elif kind == "task" and inner.type in ("input", "output"):
            inner_kind = "provider"
        else:
            inner_kind = inner.type
        value = self.read(inner.body, key, lines, evaluator, inner_kind)
        if self._also_an_attribute(inner, out, seen, lines.get(key)):
            return
        if inner.type in seen:
            self.report(inner.line, f"only one '{inner.type}' block is allowed here (first at line {seen[inner.type]})")
            return
        out[inner.type] = value
        seen[inner.type] = inner.line
        lines[key] = inner.line

    def _also_an_attribute(
        self, inner: Block, out: dict[str, Any], seen: dict[str, int], attribute_line: int | None
    ) -> bool:
        """A block whose name an attribute of the same body already set."""
        if inner.type in out and inner.type not in seen:
            self.report(
                inner.line, f"'{inner.type}' is given both as an attribute (line {attribute_line}) and as a block"
            )
            return True
        return False


def _nest_labels(labels: list[str], value: dict[str, Any]) -> dict[str, Any]:
    for label in reversed(labels):
        value = {label: value}
    return value
