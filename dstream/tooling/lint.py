"""``dstream lint``: every check of a task file in one pass, each problem once, by line.

The file's structure and values (the loader), every provider config against its provider's
schema (for each provider block that is valid on its own, even in a task with other
problems), and each ``provider_path`` that names no executable; notes for what loosens the
hardened container defaults and for loopback addresses a container cannot reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dstream.config.loader import by_line, inspect
from dstream.errors import ConfigError, DStreamError, Problem

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from dstream.config.loader import Inspection
    from dstream.config.models import Document


@dataclass(frozen=True)
class Report:
    file: str
    problems: list[Problem]
    notes: list[str]


def lint(file: str | Path | None, schemas: bool = True, environ: Mapping[str, str] | None = None) -> Report:
    found = inspect(file, environ)
    problems: list[Problem] = list(found.problems)
    notes: list[str] = []
    if schemas:
        from dstream.tooling.schemas import check_stages

        more, notes = check_stages(found.stages, found.lines, str(found.path), found.secrets)
        problems += more
    problems += missing_executables(found)
    if found.document is not None:
        from dstream.runtime.loosened import document_warnings

        notes += document_warnings(found.document)
    unique = list(dict.fromkeys(problems))
    return Report(str(found.path), by_line(unique), notes)


def missing_executables(found: Inspection) -> list[Problem]:
    """A ``provider_path`` that is neither a file beside the task file nor a command on PATH."""
    from dstream.runtime.local import resolve_executable

    base_dir = found.path.resolve().parent
    problems = []
    for task, _role, block, at in found.stages:
        if not block.provider_path:
            continue
        try:
            resolve_executable(block.provider_path, base_dir)
        except DStreamError as exc:
            line = found.lines.get(f"{task}/{at}/provider_path")
            problems.append(Problem(str(found.path), line, str(exc)))
    return problems


def refuse_invalid_configs(document: Document, task_name: str) -> None:
    """Before ``run`` starts anything: a config its provider's schema refuses is a ConfigError
    (with FILE:LINE), not a provider that starts and then refuses its handshake.

    Only local providers (``provider_path``, their schema from the catalogue): an image's schema
    is read once its reference is resolved, and that resolution checks the lock file and the
    digest first (a moved tag must be reported as such, not as the other image's schema); the
    provider refuses a bad config in its handshake then, before any data moves."""
    from dstream.config.models import StageBlock
    from dstream.tooling.schemas import check_stages

    task = document.task(task_name)
    stages = [StageBlock(task.name, role, block, at) for role, block, at in task.stages if block.provider_path]
    problems, _ = check_stages(stages, document.lines, str(document.path), document.secrets)
    if problems:
        count = len(problems)
        raise ConfigError(
            f"task {task_name}: {count} provider config problem{'s' if count != 1 else ''}, nothing started:\n"
            + "\n".join(map(str, problems)),
            problems,
        )
