"""Task file loading: HCL text → syntax tree → evaluated dicts → pydantic models.

Every problem is collected as a :class:`~dstream.errors.Problem` (file, line, message) so
``dstream lint`` can print them all at once; :func:`load` raises one
:class:`~dstream.errors.ConfigError` carrying them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from dstream.config.bodies import BodyReader
from dstream.config.evaluate import EvalError, Evaluator, default_environ
from dstream.config.hcl import Block, parse
from dstream.config.models import (
    ContainerSettings,
    DeadLetterSettings,
    Document,
    LeaseSettings,
    ProviderBlock,
    RestartPolicy,
    StageBlock,
    StateSettings,
    Task,
)
from dstream.config.secrets import secret_values
from dstream.errors import ConfigError, Problem
from dstream.redact import Redactor
from dstream.sdk.validation import describe_error

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_FILE = "dstream.hcl"

_TOP_LEVEL_BLOCKS = ("task", "locals", "state")


class _Loader:
    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.name = str(path)
        self.environ = environ
        self.problems: list[Problem] = []
        self.bodies = BodyReader(self.problem)
        self.lines: dict[str, int] = {}
        # Every provider block that is valid on its own, its task valid or not: so lint can
        # check configs against provider schemas in the same pass as the file's structure.
        self.stages: list[StageBlock] = []
        # Every secret seen, valid task or not: problems quote values, so they are redacted.
        self.secrets: set[str] = set()
        self.evaluator_secrets: set[str] = set()

    def problem(self, line: int, message: str) -> None:
        found = Problem(self.name, line, message)
        if found not in self.problems:  # a local used in several places fails once
            self.problems.append(found)

    def load(self, text: str) -> Document | None:
        try:
            root = parse(text, self.name)
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return None
        for attr in root.attributes.values():
            self.problem(attr.line, f"unexpected attribute '{attr.name}' at top level")
        locals_attrs: dict[str, Any] = {}
        for block in root.blocks:
            if block.type not in _TOP_LEVEL_BLOCKS:
                self.problem(
                    block.line,
                    f"unknown block '{block.type}' (expected one of: {', '.join(_TOP_LEVEL_BLOCKS)})",
                )
            elif block.type == "locals":
                self._check_labels(block, 0)
                self.bodies.report_duplicates(block.body)
                for name, attr in block.body.attributes.items():
                    if name in locals_attrs:
                        self.problem(attr.line, f"local '{name}' is defined twice")
                    locals_attrs[name] = attr
                for inner in block.body.blocks:
                    self.problem(inner.line, f"unexpected block '{inner.type}' inside locals")
        evaluator = Evaluator(locals_attrs, self.environ)
        self.evaluator_secrets = evaluator.secrets  # filled in as env() is evaluated
        for name, attr in locals_attrs.items():  # report broken locals even when unused
            try:
                evaluator.local(name, attr.line)
            except EvalError as exc:
                self.problem(exc.line, str(exc))

        tasks: dict[str, Task] = {}
        task_lines: dict[str, int] = {}
        secrets: set[str] = set()
        for block in root.blocks_of("task"):
            if not self._check_labels(block, 1):
                continue
            name = block.labels[0]
            if name in task_lines:
                self.problem(block.line, f"duplicate task name '{name}' (first defined at line {task_lines[name]})")
                continue
            task_lines[name] = block.line
            task = self._task(block, evaluator)
            if task is not None:
                tasks[name] = task
                for stage in task.stages:
                    secrets.update(secret_values(stage.block.config))
                    secrets.update(secret_values(dict(stage.block.container.env)))
                if task.lease is not None:
                    secrets.update(secret_values({"connection_string": task.lease.connection_string}))

        state = StateSettings()
        state_blocks = root.blocks_of("state")
        for extra in state_blocks[1:]:
            self.problem(extra.line, "only one state block is allowed")
        if state_blocks:
            lines: dict[tuple[Any, ...], int] = {}
            raw = self.bodies.read(state_blocks[0].body, (), lines, evaluator, "state")
            try:
                state = StateSettings.model_validate(raw)
            except ValidationError as exc:
                self._validation_problems(exc, lines, state_blocks[0].line)
        if self.problems:
            return None
        secrets.update(secret_values({"connection_string": state.connection_string}))
        secrets.update(evaluator.secrets)
        self.secrets |= secrets
        return Document(
            path=self.path.resolve(),
            tasks=tasks,
            state=state,
            secrets=frozenset(s for s in secrets if len(s) >= 4),
            env_names=frozenset(evaluator.env_names),
            lines={**task_lines, **self.lines},
        )

    def _check_labels(self, block: Block, count: int) -> bool:
        if len(block.labels) != count:
            want = 'one name, as in task "my-task" { ... }' if count else "no labels"
            self.problem(block.line, f"block '{block.type}' takes {want}")
            return False
        return True

    def _task(self, block: Block, evaluator: Evaluator) -> Task | None:
        lines: dict[tuple[Any, ...], int] = {}
        self.bodies.failed = set()
        raw = self.bodies.read(block.body, (), lines, evaluator, "task")
        raw["name"] = block.labels[0]
        self.secrets |= secret_values(raw)
        for path, line in lines.items():  # kept so later checks (provider schemas) can cite lines
            self.lines["/".join([block.labels[0], *map(str, path)])] = line
        # A block with a value that failed to evaluate is left out: its config is not what the file says.
        failed = {path[:2] if path[0] == "transform" else path[:1] for path in self.bodies.failed}
        self.stages.extend(
            stage for stage in _stage_blocks(block.labels[0], raw) if _stage_key(stage.path) not in failed
        )
        missing_role = False
        for role in ("input", "output"):
            if role not in raw and not block.body.blocks_of(role):
                self.problem(block.line, f"task '{block.labels[0]}' has no {role} block")
                missing_role = True
        try:
            task = Task.model_validate(raw)
        except ValidationError as exc:
            self._validation_problems(exc, lines, block.line, skip_missing=missing_role)
            return None
        return None if self.bodies.failed else task

    def _validation_problems(
        self,
        exc: ValidationError,
        lines: dict[tuple[Any, ...], int],
        default_line: int,
        skip_missing: bool = False,
    ) -> None:
        for error in exc.errors():
            loc = tuple(error["loc"])
            # Already reported: a value that failed to evaluate, or a missing input/output block.
            if any(loc[: len(f)] == f or f[:-1] == loc for f in self.bodies.failed):
                continue
            if skip_missing and error["type"] == "missing" and loc in (("input",), ("output",)):
                continue
            line = default_line
            for size in range(len(loc), 0, -1):
                if loc[:size] in lines:
                    line = lines[loc[:size]]
                    break
            else:
                # A missing key or a model-level rule: point at the enclosing block.
                for size in range(len(loc) - 1, 0, -1):
                    if loc[:size] in lines:
                        line = lines[loc[:size]]
                        break
            self.problem(line, _describe(error))


def _describe(error: Any) -> str:
    return describe_error(error, known=_KNOWN_NAMES)


def _field_names(*models: type[BaseModel]) -> frozenset[str]:
    return frozenset(
        name for model in models for key, field in model.model_fields.items() for name in (key, field.alias) if name
    )


# Every attribute and block name a task file may use, for "did you mean" on a typo.
_KNOWN_NAMES = _field_names(
    Task, ProviderBlock, ContainerSettings, RestartPolicy, DeadLetterSettings, StateSettings, LeaseSettings
) | frozenset(_TOP_LEVEL_BLOCKS)


def _stage_blocks(task: str, raw: dict[str, Any]) -> list[StageBlock]:
    """The task's provider blocks that validate on their own, in data order."""
    transforms = raw.get("transform")
    candidates = [
        ("input", "input", raw.get("input")),
        *(
            (f"transform-{i}", f"transform/{i - 1}", value)
            for i, value in enumerate(transforms if isinstance(transforms, list) else [], 1)
        ),
        ("output", "output", raw.get("output")),
    ]
    found = []
    for role, at, value in candidates:
        if not isinstance(value, dict):
            continue
        try:
            found.append(StageBlock(task, role, ProviderBlock.model_validate(value), at))
        except ValidationError:
            continue  # reported with its task
    return found


def _stage_key(at: str) -> tuple[Any, ...]:
    """``"transform/1"`` → ``("transform", 1)``, ``"input"`` → ``("input",)``: the loader's paths."""
    name, _, index = at.partition("/")
    return (name, int(index)) if index else (name,)


def find_file(file: str | Path | None) -> Path:
    path = Path(file) if file else Path(DEFAULT_FILE)
    if not path.exists():
        hint = "" if file else " (pass -f FILE, or create dstream.hcl in this directory)"
        raise ConfigError(f"{path}: no such file{hint}")
    return path


@dataclass(frozen=True)
class Inspection:
    """All a load learned about a task file, valid or not: what ``dstream lint`` checks further."""

    path: Path  # as the user gave it (problems name it so)
    document: Document | None  # None when there are problems
    problems: list[Problem]
    stages: list[StageBlock]  # every provider block valid on its own
    lines: dict[str, int]
    secrets: frozenset[str]


def inspect(file: str | Path | None, environ: Mapping[str, str] | None = None) -> Inspection:
    path = find_file(file)
    loader = _Loader(path, default_environ() if environ is None else environ)
    document = loader.load(_read(path))
    secrets = frozenset(loader.secrets | loader.evaluator_secrets)
    problems = loader.problems
    if problems:
        redact = Redactor(secrets)
        problems = [Problem(p.file, p.line, redact(p.message)) for p in problems]
    return Inspection(path, document, by_line(problems), loader.stages, loader.lines, secrets)


def check(file: str | Path | None, environ: Mapping[str, str] | None = None) -> tuple[Document | None, list[Problem]]:
    """Load a task file once: its document (None when invalid) and every problem, by line."""
    found = inspect(file, environ)
    return found.document, found.problems


def lint(file: str | Path | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem in a task file as ``FILE:LINE: message`` (empty when clean)."""
    return [str(p) for p in check(file, environ)[1]]


def load(file: str | Path | None, environ: Mapping[str, str] | None = None) -> Document:
    """Load and validate a task file; raises ConfigError listing every problem."""
    found = inspect(file, environ)
    path, document, problems = found.path, found.document, found.problems
    if document is None:
        count = len(problems)
        summary = f"{path}: {count} problem{'s' if count != 1 else ''} in the task file"
        raise ConfigError(summary + "\n" + "\n".join(map(str, problems)), problems)
    return document


def by_line(problems: list[Problem]) -> list[Problem]:
    """Problems sorted by line number (those without one first)."""
    return sorted(problems, key=Problem.sort_key)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
