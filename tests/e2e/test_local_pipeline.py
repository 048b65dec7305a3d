"""End to end through the real CLI, with providers as real local processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

COUNTER_TO_CONSOLE = """
task "demo" {{
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval = {interval}
      max_count = {count}
      include_timestamp = false
    }}
  }}
  output {{
    provider_path = "console-output-provider"
    config {{ outputFormat = "{fmt}" }}
  }}
}}
"""


def test_counter_to_console_delivers_exactly_max_count_in_order(task_file: Callable[..., Path]) -> None:
    path = task_file(COUNTER_TO_CONSOLE.format(interval=0, count=2500, fmt="simple"))
    result = run_cli("run", "demo", "-f", str(path))
    assert result.returncode == 0, result.stderr
    values = [json.loads(line)["value"] for line in result.stdout.splitlines()]
    assert values == list(range(1, 2501))
    assert "finished: 2,500 envelopes" in result.stderr  # with the separator the status line uses


def test_jsonl_output_is_the_envelope_and_resume_continues(task_file: Callable[..., Path]) -> None:
    path = task_file(COUNTER_TO_CONSOLE.format(interval=0, count=10, fmt="jsonl"))
    first = run_cli("run", "demo", "-f", str(path))
    assert first.returncode == 0, first.stderr
    envelopes = [json.loads(line) for line in first.stdout.splitlines()]
    assert envelopes[0] == {"data": {"value": 1}, "metadata": {"Source": "counter", "Sequence": 1}}
    # The checkpoint was persisted: a second run has nothing left to send.
    again = run_cli("run", "demo", "-f", str(path))
    assert again.returncode == 0
    assert again.stdout == ""
    assert "resumes from checkpoint {'value': 10}" in again.stderr
    assert "To read it again from the start: dstream state reset demo" in again.stderr
    assert "dstream state reset" not in first.stderr  # a first run that read something needs no hint


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "import sys\nsys.stdin.readline()\nprint('fatal: cannot load driver', file=sys.stderr)\nsys.exit(3)\n",
            "exited with code 3 before its handshake",
        ),
        (
            "import sys, time\nsys.stdin.readline()\nprint('fatal: cannot load driver', file=sys.stderr, flush=True)\n"
            "print('Welcome to my provider!', flush=True)\ntime.sleep(30)\n",
            "printed 'Welcome to my provider!' instead of a handshake",
        ),
        (
            "import sys, time\nsys.stdin.readline()\nprint('fatal: cannot load driver', file=sys.stderr, flush=True)\n"
            "time.sleep(30)\n",
            "sent no handshake within 1s",
        ),
    ],
    ids=["exits", "garbage", "hangs"],
)
def test_broken_providers_give_a_clear_error_with_their_stderr(
    task_file: Callable[..., Path], script: Callable[[str, str], Path], body: str, expected: str
) -> None:
    broken = script("broken-input-provider", body)
    path = task_file(
        f"""
        task "t" {{
          handshake_timeout = "1s"
          input {{ provider_path = "{broken}" }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    started = time.monotonic()
    result = run_cli("run", "t", "-f", str(path), timeout=60)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "fatal: cannot load driver" in result.stderr
    assert time.monotonic() - started < 20


def test_invalid_provider_config_names_the_field(task_file: Callable[..., Path]) -> None:
    path = task_file(
        """
        task "t" {
          input {
            provider_path = "counter-input-provider"
            config { max_count = "many" }
          }
          output { provider_path = "console-output-provider" }
        }
        """
    )
    result = run_cli("run", "t", "-f", str(path))
    assert result.returncode == 1
    # Refused before anything starts (the provider's schema is known), with the line.
    assert f"{path}:5: t input config.max_count: 'many' is not of type 'integer'" in result.stderr
    assert "running" not in result.stderr
    assert "nothing started" in result.stderr


def test_invalid_task_file_is_refused_before_starting_anything(task_file: Callable[..., Path]) -> None:
    path = task_file('task "t" {\n  input { provider_path = "counter-input-provider" }\n}\n')
    result = run_cli("run", "t", "-f", str(path))
    assert result.returncode == 1
    assert f"{path}:1: task 't' has no output block" in result.stderr
    lint = run_cli("lint", "-f", str(path))
    assert lint.returncode == 1
    assert f"{path}:1:" in lint.stdout


def test_sigterm_stops_both_providers_and_leaves_no_child(task_file: Callable[..., Path]) -> None:
    path = task_file(COUNTER_TO_CONSOLE.format(interval=20, count=0, fmt="simple"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", "demo", "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # data is flowing end to end
        assert json.loads(first)["value"] == 1
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2
        proc.send_signal(signal.SIGTERM)
        # Not communicate(): it would skip what readline() already buffered.
        out = proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped:" in err
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    delivered = [json.loads(line)["value"] for line in [first, *out.splitlines()]]
    assert delivered == list(range(1, len(delivered) + 1))
    # A clean stop persisted the last delivered value: the next run continues right after it.
    last = delivered[-1]
    path.write_text(COUNTER_TO_CONSOLE.format(interval=0, count=last + 3, fmt="simple"))
    again = run_cli("run", "demo", "-f", str(path))
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["value"] for line in again.stdout.splitlines()] == [last + 1, last + 2, last + 3]


LIFECYCLE_PROVIDER = """
from dstream.sdk import InfrastructureProvider, OutputProvider, ProviderConfig, Resource

class Config(ProviderConfig):
    queues: list[str]

class Queues(OutputProvider[Config], InfrastructureProvider):
    name = "queues-output-provider"
    Config = Config

    def write(self, batch):
        pass

    def init(self):
        for q in self.config.queues:
            yield Resource("queue", q, action="create", state="present")

    def plan(self):
        for q in self.config.queues:
            yield Resource("queue", q, action="create", state="absent")

Queues.main()
"""


def test_lifecycle_verb_prints_a_table_and_json(
    task_file: Callable[..., Path], script: Callable[[str, str], Path]
) -> None:
    provider = script("queues-output-provider", LIFECYCLE_PROVIDER)
    path = task_file(
        f"""
        task "t" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "{provider}"
            config {{ queues = ["orders", "customers"] }}
          }}
        }}
        """
    )
    table = run_cli("init", "t", "-f", str(path), env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "orders" in table.stdout
    assert "customers" in table.stdout
    assert "create" in table.stdout
    assert "does not support init" in table.stdout  # the counter input has no lifecycle
    raw = run_cli("plan", "t", "-f", str(path), "--json")
    assert raw.returncode == 0, raw.stderr
    planned = json.loads(raw.stdout)
    assert planned["changes"] == {"create": 2, "update": 0, "delete": 0}
    assert planned["resources"] == [
        {"role": "output", "type": "queue", "name": "orders", "action": "create", "state": "absent", "details": {}},
        {"role": "output", "type": "queue", "name": "customers", "action": "create", "state": "absent", "details": {}},
    ]
    assert [(p["role"], p["status"]) for p in planned["providers"]] == [("input", "skipped"), ("output", "ok")]
    skipped = run_cli("destroy", "t", "-f", str(path), "--yes")
    assert skipped.returncode == 0
    assert "does not support destroy" in skipped.stdout


def test_upstream_failed_reply_is_a_failure(task_file: Callable[..., Path], script: Callable[[str, str], Path]) -> None:
    legacy = script(
        "legacy-output-provider",
        "import sys, json\nsys.stdin.readline()\n"
        'print(json.dumps({"status": "Failed", "resources": [], "metadata": None, '
        '"message": "queue quota exceeded", "error": None}))\n',
    )
    path = task_file(
        f"""
        task "t" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{ provider_path = "{legacy}" }}
        }}
        """
    )
    result = run_cli("init", "t", "-f", str(path))
    assert result.returncode == 1
    assert "queue quota exceeded" in result.stderr


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("dstream ")
    helptext = run_cli("--help")
    assert helptext.returncode == 0
    assert "run" in helptext.stdout
    assert "lint" in helptext.stdout


def test_json_logs_carry_the_provider_role(task_file: Callable[..., Path], tmp_path: Path) -> None:
    path = task_file(
        f"""
        task "demo" {{
          input {{
            provider_path = "counter-input-provider"
            config {{ max_count = 3 }}
          }}
          output {{
            provider_path = "file-output-provider"
            config {{ path = "{tmp_path / "out.jsonl"}" }}
          }}
        }}
        """
    )
    result = run_cli("--log-format", "json", "run", "demo", "-f", str(path))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert records, result.stderr
    assert all({"time", "level", "message"} <= set(r) for r in records)
    assert any(r.get("role") == "output" for r in records)  # a forwarded provider stderr line
    assert any("finished: 3 envelopes" in r["message"] for r in records)
