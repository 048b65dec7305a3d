"""The Typer application, its sub-command groups and the options commands share."""

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dstream import __version__, log

app = typer.Typer(
    name="dstream",
    help="Pipe JSON-line envelopes between provider containers, with checkpoints.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
state_app = typer.Typer(help="Show or reset a task's stored checkpoint.", no_args_is_help=True)
app.add_typer(state_app, name="state")
providers_app = typer.Typer(help="List, build and push provider images.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")

FileOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", envvar="DSTREAM_FILE", help="Task file (default: ./dstream.hcl).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document (keys: see the README).")]


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class PullPolicy(str, Enum):
    missing = "missing"
    always = "always"
    never = "never"


class Kind(str, Enum):
    input = "input"
    transform = "transform"
    output = "output"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dstream {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="DSTREAM_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", envvar="DSTREAM_LOG_FORMAT", help="Log lines as text or JSON.")
    ] = LogFormat.text,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    log.setup(log_level, log_format.value)
    # Providers log at the same level (the SDK reads it; a failure's traceback shows at debug).
    os.environ["DSTREAM_LOG_LEVEL"] = log_level


def load_document(file: Path | None) -> Any:
    from dstream.config import load

    return load(file)


def print_json(document: object) -> None:
    """``--json``: one JSON document on stdout, one line, whatever the command."""
    from dstream import protocol

    sys.stdout.buffer.write(protocol.encode(document))
    sys.stdout.flush()
