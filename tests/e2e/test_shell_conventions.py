"""Shell habits: completion scripts (Typer/Click), DSTREAM_* environment variables for the
global options and the task file."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TASK = """
task "t" {
  input {
    provider_path = "counter-input-provider"
    config {
      interval  = 0
      max_count = 2
    }
  }
  output { provider_path = "console-output-provider" }
}
"""


def _complete(words: str) -> list[str]:
    """What bash completion offers for the command line ``words`` (the last word being typed)."""
    env = {"_DSTREAM_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    result = run_cli(env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_shell_completion() -> None:
    script = run_cli("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_DSTREAM_COMPLETE=complete_bash" in script.stdout
    assert "complete -o default -F _dstream_completion dstream" in script.stdout
    assert _complete("dstream ru") == ["run"]
    assert _complete("dstream providers l") == ["list"]
    assert "--detailed-exitcode" in _complete("dstream plan --det")
    assert "--install-completion" in run_cli("--help", env={"COLUMNS": "200"}).stdout


def test_global_options_from_the_environment(task_file: Callable[..., Path], tmp_path: Path) -> None:
    path = task_file(TASK)
    env = {"DSTREAM_LOG_FORMAT": "json", "DSTREAM_LOG_LEVEL": "debug"}
    result = run_cli("run", "t", "-f", str(path), env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line JSON
    assert any("task t finished" in r["message"] for r in records)
    planned = run_cli("plan", "t", "-f", str(path), env=env)
    assert planned.returncode == 0, planned.stderr
    debug = [json.loads(line) for line in planned.stderr.splitlines()]
    assert any(r["level"] == "debug" and "skipped" in r["message"] for r in debug), debug
    quiet = run_cli("run", "t", "-f", str(path), env={"DSTREAM_LOG_LEVEL": "error"})
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    # The command line wins over the environment.
    text = run_cli("--log-format", "text", "run", "t", "-f", str(path), env=env)
    assert "task t finished" in text.stderr
    assert not text.stderr.startswith("{")
    # The task file too: DSTREAM_FILE, like COMPOSE_FILE.
    linted = run_cli("lint", env={"DSTREAM_FILE": str(path)})
    assert linted.returncode == 0, linted.stderr
    assert "ok" in linted.stderr
