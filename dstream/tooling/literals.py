"""Literal secrets out of a task file before it becomes a ConfigMap or a Swarm config.

``deploy`` ships the task file as a Swarm config and ``--print kubernetes`` as a ConfigMap,
both readable by more people than a Secret. A string attribute that holds a secret written
literally (``dsn = "postgres://app:pw@db/x"``: a credential key, or a connection string
with a password inside) is rewritten as ``dsn = env("DSTREAM_LITERAL_DSN_7")``, and the value
goes into the Secret under that name. The rewrite is proven: the rewritten file, loaded with
those variables, must give exactly the same tasks. A secret the rewrite cannot move (a
heredoc, an interpolated string, a local whose name does not look secret) is refused with
the ``FILE:LINE`` that holds it.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from dstream.config.secrets import SECRET_KEY, credential_parts
from dstream.errors import ConfigError, Problem
from dstream.redact import is_strong

if TYPE_CHECKING:
    from dstream.config.models import Document

PREFIX = "DSTREAM_LITERAL_"
# One attribute on one line whose value is one plain string literal (comments allowed).
_ATTRIBUTE = re.compile(
    r'^(?P<head>\s*(?P<key>[A-Za-z_][A-Za-z0-9_-]*)\s*=\s*)"(?P<value>(?:[^"\\]|\\.)*)"'
    r"(?P<tail>\s*(?:(?:#|//).*)?)$"
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unescape(text: str) -> str | None:
    """An HCL string literal's value; None when it needs more than the simple escapes."""
    if "${" in text or "%{" in text or "{{" in text or "\\u" in text or "\\U" in text:
        return None  # interpolation or a template: not a plain literal
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), text)


def _holds_secret(key: str, value: str, literal: set[str]) -> bool:
    """A credential key, a connection string with credentials, or a value that is (or holds)
    a secret the loader found (``locals { pw = "…" }`` read by ``password = local.pw``)."""
    if SECRET_KEY.search(key) or credential_parts(value) or value in literal:
        return True
    return any(s in value for s in literal if is_strong(s))


def move_literal_secrets(document: Document, environ: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The task file with each literal secret replaced by ``env("NAME")``, and ``{NAME: value}``.

    Raises ConfigError naming ``FILE:LINE`` for a literal secret that cannot be moved."""
    environ = dict(os.environ if environ is None else environ)
    text = document.path.read_text(encoding="utf-8")
    lines = text.split("\n")
    env_values = {environ[name] for name in document.env_names if name in environ}
    literal = {s for s in document.secrets if s not in env_values and not any(s in v for v in env_values)}
    moved: dict[str, str] = {}
    refused: list[Problem] = []
    for number, line in enumerate(lines, start=1):
        match = _ATTRIBUTE.match(line)
        value = _unescape(match["value"]) if match else None
        if match is not None and value is not None and _holds_secret(match["key"], value, literal):
            name = f"{PREFIX}{re.sub(r'[^A-Z0-9]', '_', match['key'].upper())}_{number}"
            moved[name] = value
            lines[number - 1] = f'{match["head"]}env("{name}"){match["tail"]}'
        elif any(s in line for s in literal if is_strong(s)):
            refused.append(Problem(str(document.path), number, "a literal secret dstream cannot move out of the file"))
    if refused:
        raise ConfigError(
            f"{document.path}: the task file holds literal secrets that would be shipped in plain text; "
            f'read them with env("NAME") instead:\n' + "\n".join(map(str, refused)),
            refused,
        )
    rewritten = "\n".join(lines)
    if moved:
        _check_same_tasks(document, rewritten, {**environ, **moved})
    return rewritten, moved


def _check_same_tasks(document: Document, rewritten: str, environ: dict[str, str]) -> None:
    """Load the rewritten file (tasks keep relative paths as written, so any folder will do)."""
    import tempfile
    from pathlib import Path

    from dstream.config.loader import load

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / document.path.name
        copy.write_text(rewritten, encoding="utf-8")
        again = load(copy, environ)
    if again.tasks != document.tasks:
        raise ConfigError(
            f"{document.path}: moving the literal secrets into env() would change the tasks; "
            f'read them with env("NAME") in the file instead'
        )
