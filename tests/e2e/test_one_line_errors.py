"""A provider's expected failure reaches the user once, as one line; its traceback only at debug."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

REASON = 'slot "dstream_orders" is being read by a running task (pid 42): stop it before destroy'

FAILING = f"""
from dstream.sdk import ActionableError, InfrastructureProvider, InputProvider, ProviderConfig, Resource
from dstream.sdk.host import main


class Failing(InputProvider[ProviderConfig], InfrastructureProvider):
    name = "failing-input-provider"
    version = "0.1.0"
    Config = ProviderConfig

    def read(self, checkpoint):
        raise ActionableError({REASON!r})
        yield

    def destroy(self):
        raise ActionableError({REASON!r})

    def init(self):
        raise KeyError("no such slot")


main(Failing)
"""

TASK = """
task "t" {
  input { provider_path = "./failing.py" }
  output {
    provider_path = "file-output-provider"
    config { path = "out.jsonl" }
  }
}
"""


@pytest.fixture
def failing_task(task_file: Callable[..., Path], script: Callable[[str, str], Path]) -> Path:
    script("failing.py", FAILING)
    return task_file(TASK)


@pytest.mark.parametrize("verb", ["run", "destroy"])
def test_an_expected_failure_is_one_line_shown_once(failing_task: Path, verb: str) -> None:
    args = [verb, "t", "-f", str(failing_task)] + (["--yes"] if verb == "destroy" else [])
    result = run_cli(*args)
    assert result.returncode == 1
    assert result.stderr.count(REASON) == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if REASON in line]
    assert line.startswith("error: ")
    assert "input provider failing.py" in line if verb == "run" else "input: exited with code 1. It reported: " in line


def test_an_unexpected_failure_names_its_type_and_debug_shows_the_traceback(failing_task: Path) -> None:
    result = run_cli("init", "t", "-f", str(failing_task))
    assert result.returncode == 1
    assert "KeyError: 'no such slot'" in result.stderr
    assert "Traceback" not in result.stderr
    debug = run_cli("--log-level", "debug", "init", "t", "-f", str(failing_task))
    assert "Traceback" in debug.stderr


LEAKY = """
from dstream.sdk import ActionableError, InputProvider, ProviderConfig
from dstream.sdk.host import main


class Config(ProviderConfig):
    dsn: str


class Leaky(InputProvider[Config]):
    name = "leaky-input-provider"
    version = "0.1.0"
    Config = Config

    def read(self, checkpoint):
        raise ActionableError(f"cannot connect with {self.config.dsn}")
        yield


main(Leaky)
"""


def test_the_one_line_failure_never_shows_a_secret(
    task_file: Callable[..., Path], script: Callable[[str, str], Path]
) -> None:
    script("leaky.py", LEAKY)
    path = task_file(
        """
        task "t" {
          input {
            provider_path = "./leaky.py"
            config { dsn = "postgresql://app:Sup3rSecretPw@db:5432/x" }
          }
          output {
            provider_path = "file-output-provider"
            config { path = "out.jsonl" }
          }
        }
        """
    )
    for args in (["run", "t"], ["--log-level", "debug", "run", "t"]):  # debug: the traceback too
        result = run_cli(*args, "-f", str(path))
        assert result.returncode == 1
        assert "It reported: cannot connect with ***" in result.stderr, result.stderr
        assert "Sup3rSecretPw" not in result.stderr + result.stdout
