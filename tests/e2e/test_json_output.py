"""``--json`` on every command that prints data: one JSON document on stdout, with the keys
the README documents for that command. (``lock`` and ``deploy --list`` need a registry and
Swarm: tests/integration/test_json_registry_swarm.py.)"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TASK = """
task "t" {{
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval  = 0
      max_count = 3
    }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{ path = "{out}" }}
  }}
}}
"""


def one_document(*args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    result = run_cli(*args, "--json", env=env)
    assert result.returncode == code, result.stderr
    assert result.stdout.endswith("\n")
    assert result.stdout.count("\n") == 1, result.stdout  # one document, on one line
    return json.loads(result.stdout)


def test_each_command_prints_one_json_document(task_file: Callable[..., Path], tmp_path: Path) -> None:
    path = task_file(TASK.format(out=tmp_path / "out.jsonl"))
    env = {"DSTREAM_RUNS_DIR": str(tmp_path / "runs")}

    linted = one_document("lint", "-f", str(path))
    assert linted == {"file": str(path), "ok": True, "problems": [], "notes": []}
    bad = task_file('task "x" {\n  input { provider_path = "a" }\n}\n', name="bad.hcl")
    problems = one_document("lint", "-f", str(bad), code=1)
    assert problems["ok"] is False
    assert problems["problems"][0].keys() == {"file", "line", "message"}
    assert problems["problems"][0]["file"] == str(bad)
    assert isinstance(problems["problems"][0]["line"], int)

    state = one_document("state", "show", "t", "-f", str(path))
    assert state.keys() == {"task", "checkpoint", "run_id", "updated_at", "writes", "store"}
    assert state["checkpoint"] is None
    assert run_cli("run", "t", "-f", str(path)).returncode == 0
    state = one_document("state", "show", "t", "-f", str(path))
    assert state["checkpoint"] is not None
    assert state["writes"] >= 1

    for verb in ("init", "plan", "status"):
        doc = one_document(verb, "t", "-f", str(path))
        assert doc.keys() == {"task", "verb", "ok", "changes", "providers", "resources"}
        assert doc["verb"] == verb
        assert [(p["role"], p["status"]) for p in doc["providers"]] == [("input", "skipped"), ("output", "skipped")]
    doc = one_document("destroy", "t", "-f", str(path), "--yes")
    assert doc["changes"] == {"create": 0, "update": 0, "delete": 0}

    ps = one_document("ps", env=env)
    assert ps.keys() == {"runs", "containers"}

    listed = one_document("providers", "list")
    names = {p["name"] for p in listed["providers"]}
    assert {"counter-input-provider", "file-output-provider"} <= names
    assert {"name", "image", "verbs"} <= listed["providers"][0].keys()

    suite = one_document(
        "test-provider", "file-output-provider", "--config", json.dumps({"path": str(tmp_path / "c.jsonl")})
    )
    assert suite.keys() == {"provider", "passed", "checks"}
    assert suite["passed"] is True
