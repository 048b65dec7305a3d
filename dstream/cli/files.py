"""``lint`` and ``lock``: commands about the task file itself."""

import re
from typing import Annotated

import typer

from dstream.cli.app import FileOption, JsonOption, app, load_document, print_json

_PROBLEM = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?P<message>.*)$", re.DOTALL)


def _problem(text: str) -> dict[str, object]:
    """``FILE:LINE: message`` as ``{"file", "line", "message"}`` (file and line None when absent)."""
    match = _PROBLEM.match(text)
    if match is None:
        return {"file": None, "line": None, "message": text}
    return {"file": match["file"], "line": int(match["line"]), "message": match["message"]}


@app.command()
def lint(
    file: FileOption = None,
    schemas: Annotated[
        bool, typer.Option("--schemas/--no-schemas", help="Also check each config against its provider's schema.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Check a task file; print each problem as FILE:LINE: message."""
    from dstream.config import check

    document, problems = check(file)
    notes: list[str] = []
    if schemas and document is not None:  # None exactly when there are problems
        from dstream.tooling.schemas import check_document

        problems, notes = check_document(document)
    if document is not None:
        from dstream.runtime.loosened import document_warnings

        notes += document_warnings(document)
    name = str(document.path if document is not None else file or "dstream.hcl")
    if as_json:
        print_json({"file": name, "ok": not problems, "problems": [_problem(p) for p in problems], "notes": notes})
    else:
        for note in notes:
            typer.echo(note, err=True)
        for problem in problems:
            typer.echo(problem)
    if problems:
        raise typer.Exit(1)
    if not as_json:
        typer.echo(f"{file or 'dstream.hcl'}: ok", err=True)


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
