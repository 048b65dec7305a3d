"""``lint`` and ``lock``: commands about the task file itself."""

from typing import Annotated

import typer

from dstream.cli.app import FileOption, JsonOption, app, load_document, print_json


@app.command()
def lint(
    file: FileOption = None,
    schemas: Annotated[
        bool, typer.Option("--schemas/--no-schemas", help="Also check each config against its provider's schema.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Check a task file; print every problem at once, as FILE:LINE: message."""
    from dataclasses import asdict

    from dstream.tooling.lint import lint as lint_file

    report = lint_file(file, schemas)
    if as_json:
        print_json(
            {
                "file": report.file,
                "ok": not report.problems,
                "problems": [asdict(p) for p in report.problems],
                "notes": report.notes,
            }
        )
    else:
        for note in report.notes:
            typer.echo(note, err=True)
        for problem in report.problems:
            typer.echo(str(problem))
    if report.problems:
        raise typer.Exit(1)
    if not as_json:
        typer.echo(f"{report.file}: ok", err=True)


@app.command()
def lock(file: FileOption = None, as_json: JsonOption = False) -> None:
    """Resolve every provider_ref to its registry digest and write dstream.lock."""
    from dstream.distribution.lock import LOCK_FILE
    from dstream.distribution.resolve import lock_document

    document = load_document(file)
    rows = lock_document(document)
    if as_json:
        print_json(
            {
                "lock_file": str(document.base_dir / LOCK_FILE),
                "providers": [{"ref": ref, "digest": digest, "change": change} for ref, digest, change in rows],
            }
        )
        return
    for ref, digest, change in rows:
        typer.echo(f"{change:>9}  {ref}  {digest}")
    if not rows:
        typer.echo("no provider_ref in the task file: nothing to lock", err=True)
    else:
        typer.echo(f"wrote {document.base_dir / LOCK_FILE}", err=True)
