"""``init``, ``plan``, ``status``, ``destroy``: lifecycle verbs routed to the providers."""

import sys
from pathlib import Path

from dstream.cli.app import FileOption, JsonOption, app, load_document
from dstream.errors import DStreamError


def _lifecycle(verb: str, task: str, file: Path | None, as_json: bool) -> None:
    import asyncio

    from dstream import protocol
    from dstream.task.lifecycle import json_lines, render_table, run_verb

    document = load_document(file)
    outcomes = asyncio.run(run_verb(document, task, verb))
    if as_json:
        for line in json_lines(outcomes):
            sys.stdout.buffer.write(protocol.encode(line))
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console().print(render_table(outcomes, verb, task))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reasons = "; ".join(f"{o.role}: {o.reason}" for o in failed)
        raise DStreamError(f"{verb} failed for task {task}: {reasons}")


@app.command()
def init(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Create what the task's providers need (queues, slots, containers …)."""
    _lifecycle("init", task, file, as_json)


@app.command()
def plan(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Show what init would create or change, without doing it."""
    _lifecycle("plan", task, file, as_json)


@app.command()
def status(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Show the state of the task's infrastructure."""
    _lifecycle("status", task, file, as_json)


@app.command()
def destroy(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Remove what init created for the task."""
    _lifecycle("destroy", task, file, as_json)
