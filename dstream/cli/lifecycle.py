"""``init``, ``plan``, ``status``, ``destroy``: lifecycle verbs routed to the providers.

Terraform's habits: ``destroy`` asks for confirmation on a terminal and refuses off one
unless ``--yes``; ``plan --detailed-exitcode`` exits 0 (no changes), 2 (changes) or 1
(error); the result is a list, which stays readable in a narrow terminal.
"""

import sys
from pathlib import Path
from typing import Annotated

import typer

from dstream.cli.app import FileOption, JsonOption, app, load_document, print_json
from dstream.errors import DStreamError


def _lifecycle(verb: str, task: str, file: Path | None, as_json: bool) -> dict[str, int]:
    import asyncio

    from dstream import log
    from dstream.task.lifecycle import changes, render, run_verb, to_json

    document = load_document(file)
    outcomes = asyncio.run(run_verb(document, task, verb))
    if as_json:
        print_json(to_json(outcomes, verb, task))
    else:
        from rich.console import Console

        console = Console()
        for line in render(outcomes, verb, task):
            console.print(line, soft_wrap=True, highlight=False)  # soft_wrap: never cut or fold a name
    for outcome in outcomes:
        if outcome.status == "skipped":
            log.get("lifecycle").debug("%s provider skipped: %s", outcome.role, outcome.reason)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reasons = "; ".join(f"{o.role}: {o.reason}" for o in failed)
        raise DStreamError(f"{verb} failed for task {task}: {reasons}")
    return changes(outcomes)


@app.command()
def init(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Create what the task's providers need (queues, slots, containers …)."""
    _lifecycle("init", task, file, as_json)


@app.command()
def plan(
    task: str,
    file: FileOption = None,
    as_json: JsonOption = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="Exit 0: no changes, 2: changes, 1: error."),
    ] = False,
) -> None:
    """Show what init would create or change, without doing it."""
    counted = _lifecycle("plan", task, file, as_json)
    if detailed_exitcode and any(counted.values()):
        raise typer.Exit(2)


@app.command()
def status(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Show the state of the task's infrastructure."""
    _lifecycle("status", task, file, as_json)


@app.command()
def destroy(
    task: str,
    file: FileOption = None,
    as_json: JsonOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed off a terminal).")] = False,
) -> None:
    """Remove what init created for the task (asks first; --yes to skip the question)."""
    if not yes:
        document = load_document(file)
        stages = ", ".join(f"{role} {block.source}" for role, block, _ in document.task(task).stages)
        if not sys.stdin.isatty():
            raise DStreamError(
                f"refusing to destroy what task {task}'s providers created without confirmation: pass --yes"
            )
        typer.echo(f"dstream destroy {task}: the providers ({stages}) delete what init created for it.", err=True)
        answer = typer.prompt("Only 'yes' will be accepted to approve. Enter a value", default="", show_default=False)
        if answer.strip() != "yes":
            typer.echo("Destroy cancelled.", err=True)
            raise typer.Exit(1)
    _lifecycle("destroy", task, file, as_json)
