"""``lint`` and ``lock``: commands about the task file itself."""

from typing import Annotated

import typer

from dstream.cli.app import FileOption, app, load_document


@app.command()
def lint(
    file: FileOption = None,
    schemas: Annotated[
        bool, typer.Option("--schemas/--no-schemas", help="Also check each config against its provider's schema.")
    ] = True,
) -> None:
    """Check a task file; print each problem as FILE:LINE: message."""
    from dstream.config import check

    document, problems = check(file)
    if schemas and document is not None:  # None exactly when there are problems
        from dstream.tooling.schemas import check_document

        problems, notes = check_document(document)
        for note in notes:
            typer.echo(note, err=True)
    for problem in problems:
        typer.echo(problem)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{file or 'dstream.hcl'}: ok", err=True)


@app.command()
def lock(file: FileOption = None) -> None:
    """Resolve every provider_ref to its registry digest and write dstream.lock."""
    from dstream.distribution.lock import LOCK_FILE
    from dstream.distribution.resolve import lock_document

    document = load_document(file)
    rows = lock_document(document)
    for ref, digest, change in rows:
        typer.echo(f"{change:>9}  {ref}  {digest}")
    if not rows:
        typer.echo("no provider_ref in the task file: nothing to lock", err=True)
    else:
        typer.echo(f"wrote {document.base_dir / LOCK_FILE}", err=True)
