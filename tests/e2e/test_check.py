"""dstream check: per stage, did what the provider works with answer, and why not; nothing changes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TASK = """
task "t" {{
  input {{
    provider_path = "file-input-provider"
    config {{ path = "{source}" }}
  }}
  transform {{ provider_path = "jq-transform-provider" }}
  output {{
    provider_path = "file-output-provider"
    config {{ path = "{target}" }}
  }}
}}
"""


def test_every_stage_answers(task_file: Callable[..., Path], tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"data":{"n":1}}\n')
    target = tmp_path / "out" / "o.jsonl"
    path = task_file(TASK.format(source=source, target=target))
    result = run_cli("check", "t", "-f", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("  input file-input-provider: ok in ")
    assert f"file {source} present (bytes=17)" in lines[1]
    assert "transform-1 jq-transform-provider: ok" in lines[2]
    assert f"file {target} absent (bytes=0)" in lines[3]
    assert lines[-1] == "Check: 3 ok, 0 failed, 0 not checked."
    assert not target.parent.exists()  # check created nothing
    doc = json.loads(run_cli("check", "t", "-f", str(path), "--json").stdout)
    assert [(p["role"], p["status"]) for p in doc["providers"]] == [
        ("input", "ok"),
        ("transform-1", "ok"),
        ("output", "ok"),
    ]
    assert all(isinstance(p["seconds"], float) for p in doc["providers"])


def test_a_stage_that_cannot_work_says_why_in_one_line(task_file: Callable[..., Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = task_file(TASK.format(source=tmp_path / "missing.jsonl", target=blocker / "o.jsonl"))
    result = run_cli("check", "t", "-f", str(path))
    assert result.returncode == 1
    assert "input file-input-provider: failed in" in result.stdout
    assert "missing.jsonl does not exist (follow = true waits for it to appear)" in result.stdout
    assert f"cannot write {blocker / 'o.jsonl'}: {blocker} is not writable by this user" in result.stdout
    assert "Traceback" not in result.stderr
    assert "Check: 1 ok, 2 failed, 0 not checked." in result.stdout


QUEUE_TASK = """
task "q" {{
  input {{ provider_path = "counter-input-provider" }}
  output {{
    provider_path = "azure-queue-output-provider"
    config {{
      connection_string = "{connection}"
      queue             = "dstream-check-test"
    }}
  }}
}}
"""


def test_a_storage_account_that_answers_and_one_that_does_not(
    task_file: Callable[..., Path], azurite_connection_string: str
) -> None:
    good = task_file(QUEUE_TASK.format(connection=azurite_connection_string), name="good.hcl")
    result = run_cli("check", "q", "-f", str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "output azure-queue-output-provider: ok in" in result.stdout
    assert "storage_queue dstream-check-test" in result.stdout
    # Nothing listens on port 9: the SDK's retries would take a minute; check says so at once.
    wrong = azurite_connection_string.replace("127.0.0.1:10001", "127.0.0.1:9")
    bad = task_file(QUEUE_TASK.format(connection=wrong), name="bad.hcl")
    refused = run_cli("check", "q", "-f", str(bad), timeout=60)
    assert refused.returncode == 1
    (line,) = [line for line in refused.stdout.splitlines() if "output azure-queue-output-provider" in line]
    assert ": failed in " in line
    assert "the storage account did not answer:" in line
    assert "Traceback" not in refused.stdout + refused.stderr
