"""``dstream snapshot TASK --table T``: an on-demand incremental snapshot of a running task.

The command does not talk to the running task: it runs the task's *input* provider once
with the verb ``snapshot``, which writes a signal into the source (PostgreSQL: a logical
decoding message; SQL Server: a row in the signal table; see the provider's README). The
task's running provider, wherever it runs (a terminal, a detached run, a deployed replica),
sees the signal in its change stream, in order, and snapshots the tables in chunks while it
keeps streaming; a stopped task acts on it when it next runs. The verb's arguments travel
in the command envelope's ``checkpoint`` slot (a lifecycle verb has no checkpoint of its own).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dstream.cli.app import FileOption, JsonOption, app, load_document, print_json
from dstream.errors import DStreamError

VERB = "snapshot"


def parse_where(tables: list[str], where: list[str]) -> dict[str, str]:
    """``--where`` values → {table: condition}: ``TABLE=CONDITION``, or with one ``--table``
    just ``CONDITION`` (a condition may itself contain ``=``)."""
    out: dict[str, str] = {}
    for item in where:
        name, sep, condition = item.partition("=")
        if sep and name.strip() in tables:
            table, text = name.strip(), condition.strip()
        elif len(tables) == 1:
            table, text = tables[0], item.strip()
        else:
            raise DStreamError(
                f"--where {item!r}: say which table it filters, as --where 'TABLE=CONDITION' (tables: "
                f"{', '.join(tables)})"
            )
        if not text:
            raise DStreamError(f"--where {item!r}: the condition is empty")
        if table in out:
            raise DStreamError(f"--where: two conditions for {table}; combine them with AND")
        out[table] = text
    return out


async def _signal(document: Any, task_name: str, arguments: dict[str, Any]) -> Any:
    """Run the task's input with the ``snapshot`` verb (arguments in the ``checkpoint`` slot);
    its answer as a lifecycle outcome."""
    from dstream.task.lifecycle import run_on

    outcome = await run_on(document, task_name, "input", VERB, arguments)
    if outcome.status == "skipped":
        block = document.task(task_name).stage("input").block
        if not block.handshake:
            raise DStreamError(f"the input of task {task_name} is a legacy provider: it takes no snapshot signal")
        raise DStreamError(
            f"the input of task {task_name} ({block.source}) does not take snapshot signals "
            f"(it supports: {outcome.verbs or 'none'})"
        )
    return outcome


@app.command()
def snapshot(
    task: str,
    table: Annotated[list[str], typer.Option("--table", "-t", help="A table to snapshot (repeat for more).")],
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where", help="Only rows matching this SQL condition: 'TABLE=CONDITION' (or CONDITION with one --table)."
        ),
    ] = None,
    stop: Annotated[bool, typer.Option("--stop", help="Stop these tables' incremental snapshots instead.")] = False,
    file: FileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Snapshot tables of a running task again, in chunks, without stopping it (CDC inputs)."""
    import asyncio

    from dstream.task.lifecycle import render, to_json

    if stop and where:
        raise typer.BadParameter("--stop takes no --where", param_hint="--where")
    conditions = parse_where(table, where or [])
    document = load_document(file)
    outcome = asyncio.run(_signal(document, task, {"tables": table, "where": conditions, "stop": stop}))
    if as_json:
        print_json(to_json([outcome], VERB, task))
    else:
        from rich.console import Console

        console = Console()
        for line in render([outcome], VERB, task):
            console.print(line, soft_wrap=True, highlight=False)
    if outcome.status == "failed":
        raise DStreamError(f"snapshot failed for task {task}: {outcome.reason}")
