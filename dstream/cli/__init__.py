"""The ``dstream`` command line: thin commands that call one service function each.

Every :class:`~dstream.errors.DStreamError` is caught once, in :func:`main`, printed as
one paragraph on stderr and turned into its exit code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dstream.cli import deploy, files, lifecycle, providers, run, snapshot, state
from dstream.cli.app import app
from dstream.errors import ConfigError, DStreamError

__all__ = ["app", "main"]
_COMMANDS = (deploy, files, lifecycle, providers, run, snapshot, state)  # imported for their @app.command()s


def _load_secret_files() -> None:
    """In a deployed orchestrator, secrets arrive as files (Swarm/Kubernetes secrets) in
    $DSTREAM_SECRETS_DIR; each becomes the environment variable of its name."""
    folder = os.environ.get("DSTREAM_SECRETS_DIR")
    if not folder or not Path(folder).is_dir():
        return
    for entry in Path(folder).iterdir():
        if entry.is_file() and entry.name.isidentifier() and entry.name not in os.environ:
            os.environ[entry.name] = entry.read_text().rstrip("\n")


def main() -> None:
    _load_secret_files()
    try:
        app(prog_name="dstream")  # standalone: Typer reports usage errors itself and exits
    except DStreamError as exc:
        if isinstance(exc, ConfigError) and len(exc.problems) > 1:
            for problem in exc.problems:
                sys.stderr.write(f"{problem}\n")
        else:
            sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
