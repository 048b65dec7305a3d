"""The scaffold's templates are real files; what they generate passes ruff and mypy strict."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from dstream.tooling.scaffold import dockerfile_label, render, scaffold

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("kind", ["input", "transform", "output"])
def test_generated_code_passes_ruff_and_mypy_strict(tmp_path: Path, kind: str) -> None:
    root = scaffold(f"acme-{kind}-provider", kind, tmp_path)
    sources = [str(p.relative_to(root)) for p in root.rglob("*.py")]
    # With the generated project's own settings (its pyproject.toml), as its author runs them.
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *sources], capture_output=True, text=True, cwd=root, check=False
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--explicit-package-bases", *sources],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_a_missing_value_is_an_error_not_a_blank() -> None:
    with pytest.raises(KeyError):
        render("pyproject.toml", name="x")


@pytest.mark.parametrize(
    "value", ["plain", "it's", 'say "hi"', "$HOME and ${X}", 'back\\slash \\" mixed', '{"a":"b\\"c"}']
)
def test_dockerfile_label_escapes_what_the_builder_would_read(value: str) -> None:
    # Undo what Docker's builder does inside double quotes (backslash escapes of \ " $).
    quoted = dockerfile_label(value)
    assert quoted.startswith('"')
    assert quoted.endswith('"')
    body, out, i = quoted[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '\\"$':
            out.append(body[i + 1])
            i += 2
            continue
        assert body[i] not in '"$', quoted  # nothing unescaped that the builder would act on
        out.append(body[i])
        i += 1
    assert "".join(out) == value


def test_schema_label_keeps_every_character(tmp_path: Path) -> None:
    root = scaffold("acme-output-provider", "output", tmp_path)
    schema = json.loads((root / "provider.json").read_text())["config_schema"]
    assert '"~" and "$HOME"' in schema["properties"]["path"]["description"]  # quotes and a dollar survive
    assert "container's" in schema["properties"]["path"]["description"]  # so does an apostrophe
    (line,) = [line for line in (root / "Dockerfile").read_text().splitlines() if "io.dstream.spec=" in line]
    assert line.strip() == f"io.dstream.spec={dockerfile_label(json.dumps(schema, separators=(',', ':')))}"
