"""Shared test helpers. Markers follow folders: unit/, e2e/ (real local processes),
integration/ (real Docker engine and registry), providers/<name>/ (per provider)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
_FOLDER_MARKERS = {"unit": "unit", "e2e": "e2e", "integration": "integration"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        marker = _FOLDER_MARKERS.get(parts[0])
        if marker:
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture
def task_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write an HCL task file into a fresh directory and return its path."""

    def write(text: str, name: str = "dstream.hcl") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, str], Path]:
    """An executable Python script (run by this interpreter, so it can import dstream)."""

    def make(name: str, body: str) -> Path:
        path = tmp_path / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return path

    return make


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the real ``dstream`` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dstream", *args],
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
