"""``init``, ``plan``, ``status``, ``destroy``, ``check``: lifecycle verbs routed to the providers.

Terraform's habits: ``destroy`` asks for confirmation on a terminal and refuses off one
unless ``--yes``; ``plan --detailed-exitcode`` exits 0 (no changes), 2 (changes) or 1
(error); the result is a list, which stays readable in a narrow terminal.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dstream import log
from dstream.cli.app import FileOption, JsonOption, app, load_document, print_json
from dstream.errors import DStreamError

if TYPE_CHECKING:
    from dstream.task.lifecycle import ProviderOutcome


def _lifecycle(verb: str, task: str, file: Path | None, as_json: bool) -> dict[str, int]:
    import asyncio

    from dstream.task.lifecycle import run_verb

    document = load_document(file)
    outcomes = asyncio.run(run_verb(document, task, verb))
    return _report(outcomes, verb, task, as_json)


def _report(outcomes: "list[ProviderOutcome]", verb: str, task: str, as_json: bool) -> dict[str, int]:
    from dstream.task.lifecycle import changes, render, to_json

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
    from dstream.task import checkpoints

    counted = _lifecycle("init", task, file, as_json)
    kept = checkpoints.stored(load_document(file), task)
    if counted["create"] and kept is not None:
        log.get("lifecycle").warning(
            "task %s keeps a checkpoint from before this init (written %s): its next run resumes from it. "
            "If what init just created replaces something destroyed, start over with: dstream state reset %s",
            task,
            checkpoints.when(kept),
            task,
        )


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
    reset_state: Annotated[
        bool, typer.Option("--reset-state", help="Also forget the task's checkpoint (as dstream state reset).")
    ] = False,
) -> None:
    """Remove what init created for the task (asks first; --yes to skip the question)."""
    import asyncio

    from dstream.task import checkpoints
    from dstream.task.lifecycle import run_verb

    document = load_document(file)
    # As Terraform refreshes before it destroys: say which resources still hold data.
    for what in checkpoints.holding_data([o.reply for o in asyncio.run(run_verb(document, task, "status"))]):
        log.get("lifecycle").warning("%s: destroy deletes it with its contents", what)
    if not yes:
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
    _report(asyncio.run(run_verb(document, task, "destroy")), "destroy", task, as_json)
    if reset_state:
        removed = checkpoints.reset(document, task)
        typer.echo(f"task {task}: checkpoint {'removed' if removed else 'was already empty'}", err=True)
        return
    kept = checkpoints.stored(document, task)
    if kept is not None:
        log.get("lifecycle").warning(
            "task %s keeps its checkpoint (written %s): after a new init, a run would resume from a position "
            "the new resources do not have. Forget it with: dstream state reset %s (or destroy --reset-state)",
            task,
            checkpoints.when(kept),
            task,
        )


@app.command()
def check(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Open each provider's connections with its config and say, per stage, whether they
    answered, and why not (as Airbyte's check): nothing is created or changed."""
    import asyncio

    from dstream.task.lifecycle import check_report, run_verb, to_json

    document = load_document(file)
    outcomes = asyncio.run(run_verb(document, task, "check"))
    lines, notes = check_report(document, task, outcomes)
    if as_json:
        doc = to_json(outcomes, "check", task)
        for entry, outcome in zip(doc["providers"], outcomes, strict=True):
            entry["seconds"] = round(outcome.seconds, 3)
        print_json({**doc, "notes": notes})
    else:
        for line in lines:
            typer.echo(line)
        for note in notes:
            log.get("lifecycle").warning("%s", note)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise DStreamError(f"check failed for task {task}: " + "; ".join(f"{o.role}: {o.reason}" for o in failed))
