"""dstream lint reports every problem at once: structure and schemas together, each once,
in one path style, with "did you mean" for typos and FILE:LINE for a missing executable."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TYPOS = """
locals {
  out = env("DSTREAM_TEST_SURELY_UNSET")
}
task "orders-filter" {
  on_eror = "dead_letter"
  input {
    provider_path = "file-input-provider"
    config {
      path = "orders.jsonl"
      checkpoint_evry = 5
    }
  }
  transform {
    provider_path = "jq-transfrom-provider"
  }
  transfrom {
    provider_path = "jq-transform-provider"
  }
  output {
    provider_path = "file-output-provider"
    config { path = "${local.out}/x.jsonl" }
  }
}
"""


def test_every_problem_once_with_hints(task_file: Callable[..., Path]) -> None:
    path = task_file(TYPOS, name="typos.hcl")
    result = run_cli("lint", "-f", "typos.hcl", cwd=path.parent)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "typos.hcl:3: environment variable DSTREAM_TEST_SURELY_UNSET is not set (set it, or give a default: "
        'env("DSTREAM_TEST_SURELY_UNSET", "...") / {{ env "DSTREAM_TEST_SURELY_UNSET" "..." }})',
        "typos.hcl:6: unknown setting 'on_eror' (did you mean 'on_error'?)",
        "typos.hcl:11: orders-filter input config: Additional properties are not allowed ('checkpoint_evry' was "
        "unexpected) (did you mean 'checkpoint_every'?) (schema from the provider catalogue)",
        "typos.hcl:15: provider_path 'jq-transfrom-provider' was not found on PATH nor beside "
        + result.stdout.split("nor beside ")[1].split(";")[0]
        + "; install the provider or give a path relative to the task file",
        "typos.hcl:17: unknown setting 'transfrom' (did you mean 'transform'?)",
    ]
    listed = json.loads(run_cli("lint", "-f", "typos.hcl", "--json", cwd=path.parent).stdout)
    assert [(p["file"], p["line"]) for p in listed["problems"]] == [("typos.hcl", n) for n in (3, 6, 11, 15, 17)]
