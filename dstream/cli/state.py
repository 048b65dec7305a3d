"""``state show`` and ``state reset``: a task's stored checkpoint."""

import sys
from typing import Annotated

import typer

from dstream.cli.app import FileOption, load_document, state_app
from dstream.errors import DStreamError


@state_app.command("show")
def state_show(task: str, file: FileOption = None) -> None:
    """Print the task's stored checkpoint (what the next run resumes from)."""
    import json
    import time

    from dstream.state import open_store

    document = load_document(file)
    document.task(task)
    store = open_store(document)
    try:
        stored = store.load(task)
    finally:
        store.close()
    if stored is None:
        typer.echo(json.dumps({"task": task, "checkpoint": None, "store": store.location}))
        typer.echo(f"task {task} has no checkpoint yet: the next run starts from the beginning", err=True)
        return
    updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stored.updated_at))
    out = {
        "task": task,
        "checkpoint": stored.checkpoint,
        "run_id": stored.run_id,
        "updated_at": updated,
        "writes": stored.sequence,
        "store": store.location,
    }
    typer.echo(json.dumps(out, indent=2))


@state_app.command("reset")
def state_reset(
    task: str,
    file: FileOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Forget the task's checkpoint: the next run starts from the beginning."""
    from dstream.state import open_store

    document = load_document(file)
    document.task(task)
    if not yes:
        if not sys.stdin.isatty():
            raise DStreamError(f"refusing to reset task {task} without confirmation: pass --yes")
        typer.confirm(f"Forget the checkpoint of task {task}? Its next run starts from the beginning", abort=True)
    store = open_store(document)
    try:
        existed = store.reset(task)
    finally:
        store.close()
    typer.echo(f"task {task}: checkpoint {'removed' if existed else 'was already empty'} ({store.location})")
