"""Secrets never reach what ``lint``, ``test-provider`` and the lifecycle verbs print
(security review row 11), nor a ``test-provider`` command line."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from typer.testing import CliRunner

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest

SECRET = "Hunter2Secret"
DSN = f"postgres://app:{SECRET}@db/x"

# A provider that reports its own connection string back in a resource's details, in an
# error message and on stderr: what a careless provider does.
LEAKY_PROVIDER = """
import json, sys
command = json.loads(sys.stdin.readline())
dsn = command["config"]["dsn"]
print(json.dumps({"status": "ready", "verbs": ["plan", "init"]}), flush=True)
print(json.dumps({"resource": {"type": "slot", "name": "s1", "action": "create",
                               "details": {"dsn": dsn, "note": "cannot connect with " + dsn}}}), flush=True)
sys.stderr.write("connecting to " + dsn + "\\n")
if command["command"] == "init":
    print(json.dumps({"status": "Failed", "resources": [], "message": "auth failed for " + dsn}), flush=True)
"""


def test_lifecycle_details_and_failures_are_redacted(
    task_file: Callable[..., Path], script: Callable[[str, str], Path]
) -> None:
    provider = script("leaky-output-provider", LEAKY_PROVIDER)
    path = task_file(
        f"""
        task "t" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "{provider}"
            config {{ dsn = "{DSN}" }}
          }}
        }}
        """
    )
    table = run_cli("plan", "t", "-f", str(path), env={"COLUMNS": "300"})
    assert table.returncode == 0, table.stderr
    assert "s1" in table.stdout
    as_json = run_cli("plan", "t", "-f", str(path), "--json")
    assert as_json.returncode == 0, as_json.stderr
    planned = json.loads(as_json.stdout)  # still valid JSON once masked
    assert planned["resources"][0]["details"]["dsn"] == "***"
    failed = run_cli("init", "t", "-f", str(path), "--json")
    assert failed.returncode == 1
    assert "auth failed for ***" in failed.stderr
    for out in (table, as_json, failed):
        assert SECRET not in out.stdout + out.stderr


def test_lint_and_lint_json_redact_schema_messages(
    task_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """jsonschema quotes the value it refuses: ``'postgres://app:…' does not match …``."""
    from dstream.cli.app import app
    from dstream.tooling import schemas

    schema: dict[str, Any] = {"type": "object", "properties": {"dsn": {"type": "string", "pattern": "^mysql://"}}}
    monkeypatch.setattr(schemas, "block_schema", lambda block: (schema, "a test schema"))
    path = task_file(
        f"""
        task "t" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "console-output-provider"
            config {{ dsn = "{DSN}" }}
          }}
        }}
        """
    )
    runner = CliRunner()
    for args in (["lint", "-f", str(path)], ["lint", "-f", str(path), "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "does not match" in result.output
        assert SECRET not in result.output
        assert "***" in result.output


def test_lint_redacts_loader_problems_of_an_invalid_task(task_file: Callable[..., Path]) -> None:
    path = task_file(
        f"""
        task "t" {{
          on_error = "{DSN}"
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "console-output-provider"
            config {{ dsn = "{DSN}" }}
          }}
        }}
        """
    )
    result = run_cli("lint", "-f", str(path), "--no-schemas")
    assert result.returncode == 1
    assert "on_error" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_test_provider_refuses_a_secret_on_the_command_line() -> None:
    result = run_cli("test-provider", "counter-input-provider", "--config", json.dumps({"dsn": DSN}))
    assert result.returncode == 2
    assert "--config @" in result.stderr
    assert "--config-env" in result.stderr
    assert SECRET not in result.stderr


def test_test_provider_reads_its_config_from_a_file_or_a_variable_and_redacts_details(
    tmp_path: Path, script: Callable[[str, str], Path]
) -> None:
    refuse = script(
        "refusing-input-provider",
        "import json, sys\ncommand = json.loads(sys.stdin.readline())\n"
        'print(json.dumps({"status": "error", "message": "cannot connect with " + command["config"]["dsn"]}))\n',
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dsn": DSN}))
    from_file = run_cli("test-provider", str(refuse), "--config", f"@{config}", "--json", "--timeout", "10")
    from_env = run_cli(
        "test-provider", str(refuse), "--config-env", "PROVIDER_CONFIG", "--json", "--timeout", "10",
        env={"PROVIDER_CONFIG": json.dumps({"dsn": DSN})},
    )  # fmt: skip
    for result in (from_file, from_env):
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        handshake = report["checks"][0]
        assert handshake["name"] == "handshake"
        assert "cannot connect with" in handshake["detail"]
        assert SECRET not in result.stdout + result.stderr
    missing = run_cli("test-provider", str(refuse), "--config-env", "NO_SUCH_VARIABLE_HERE")
    assert missing.returncode == 2
    assert "NO_SUCH_VARIABLE_HERE" in missing.stderr
