"""Delivery guarantees with real local processes: kill -9 anywhere, SIGTERM, restarts,
slow outputs and bad data. The same faults against containers are in tests/integration."""

from __future__ import annotations

import base64
import json
import random
import signal
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.conftest import run_cli
from tests.faults import (
    finish,
    gone,
    kill,
    line_count,
    provider_pid,
    read_output,
    slow_file_output,
    start_run,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TOTAL = 200_000
TASK = """
task "deliver" {{
  {extra}
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval = 0
      max_count = {total}
      include_timestamp = false
      checkpoint_every = 1000
    }}
  }}
  output {{
    provider_path = "{output}"
    config {{
      path = "{out}"
      fsync = false
    }}
  }}
}}
"""


def write_task(
    task_file: Callable[..., Path], tmp_path: Path, output: str = "file-output-provider", extra: str = ""
) -> tuple[Path, Path]:
    out = tmp_path / "out.jsonl"
    return task_file(TASK.format(total=TOTAL, out=out, output=output, extra=extra)), out


@pytest.mark.parametrize("target", ["orchestrator", "input", "output"])
def test_kill_9_at_random_points_then_resume_loses_nothing(
    task_file: Callable[..., Path], tmp_path: Path, target: str
) -> None:
    hcl, out = write_task(task_file, tmp_path)
    rng = random.Random()
    for _ in range(3):
        point = min(line_count(out) + rng.randint(2_000, 50_000), TOTAL - 10_000)
        proc = start_run("deliver", hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines in the output", proc)
        if target == "orchestrator":
            children = psutil.Process(proc.pid).children(recursive=True)
            kill(proc.pid)
            code, _ = finish(proc)
            assert code == -signal.SIGKILL
            # The providers notice their parent died and stop: nothing is left running.
            wait_until(lambda c=children: all(gone(x) for x in c), "providers to exit")
        else:
            name = "counter-input-provider" if target == "input" else "file-output-provider"
            kill(provider_pid(proc, name))
            code, err = finish(proc)
            assert code == 1
            assert f"{target} provider {name}" in err
            assert "killed by signal 9" in err
    code, err = finish(start_run("deliver", hcl))
    assert code == 0, err
    delivery = read_output(out)
    assert delivery.missing == []
    assert max(delivery.values) == TOTAL


def test_sigterm_then_resume_has_no_duplicates(task_file: Callable[..., Path], tmp_path: Path) -> None:
    hcl, out = write_task(task_file, tmp_path)
    rng = random.Random()
    for _ in range(3):
        point = min(line_count(out) + rng.randint(2_000, 40_000), TOTAL - 10_000)
        proc = start_run("deliver", hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines in the output", proc)
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
        assert "stopped:" in err
    code, err = finish(start_run("deliver", hcl))
    assert code == 0, err
    delivery = read_output(out)
    assert delivery.missing == []
    assert delivery.duplicates == 0
    assert len(delivery.values) == TOTAL


FLAKY_OUTPUT = """
from pathlib import Path
from dstream_file.output import FileOutputProvider

ATTEMPTS = Path("{attempts}")

class Flaky(FileOutputProvider):
    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.attempt = len(ATTEMPTS.read_text()) if ATTEMPTS.exists() else 0
        ATTEMPTS.write_text("x" * (self.attempt + 1))
        self.written = 0

    def write(self, batch):
        super().write(batch)
        self.written += len(batch)
        if self.attempt < 2 and self.written > 20_000 * (self.attempt + 1):
            raise RuntimeError(f"simulated crash on attempt {{self.attempt + 1}}")

Flaky.main()
"""


def test_restart_policy_finishes_after_an_output_fails_twice(
    task_file: Callable[..., Path], tmp_path: Path, script: Callable[[str, str], Path]
) -> None:
    flaky = script("flaky-output-provider", FLAKY_OUTPUT.format(attempts=tmp_path / "attempts"))
    hcl, out = write_task(
        task_file, tmp_path, output=str(flaky), extra='restart {\n    max_attempts = 3\n    backoff = "100ms"\n  }'
    )
    code, err = finish(start_run("deliver", hcl))
    assert code == 0, err
    assert "attempt 1 of 4 failed" in err
    assert "attempt 2 of 4 failed" in err
    assert "simulated crash on attempt 1" in err
    assert (tmp_path / "attempts").read_text() == "xxx"
    delivery = read_output(out)
    assert delivery.missing == []
    assert max(delivery.values) == TOTAL


SLOW_OUTPUT = slow_file_output(200, 0.02)


def test_slow_output_pauses_the_input_and_memory_stays_bounded(
    task_file: Callable[..., Path], tmp_path: Path, script: Callable[[str, str], Path]
) -> None:
    slow = script("slow-output-provider", SLOW_OUTPUT)
    hcl, out = write_task(task_file, tmp_path, output=str(slow), extra="max_in_flight = 100")
    proc = start_run("deliver", hcl)
    watched = psutil.Process(proc.pid)
    rss = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and proc.poll() is None:
        rss.append(watched.memory_info().rss)
        time.sleep(0.1)  # sampling interval of the measurement
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert "the output is behind: pausing the input" in err, err
    assert max(rss) < 120 * 1024 * 1024
    # Nothing delivered twice, nothing skipped, up to where it stopped.
    delivery = read_output(out)
    assert delivery.missing == []
    assert delivery.duplicates == 0


BAD_INPUT = r"""
import json, sys, time
sys.stdin.readline()
out = sys.stdout.buffer
def send(obj):
    out.write(json.dumps(obj).encode() + b"\n")
print("connecting with password {canary}", file=sys.stderr, flush=True)
send({{"status": "ready"}})
send({{"data": {{"value": 1}}, "metadata": {{}}}}); send({{"checkpoint": {{"value": 1}}}})
out.write(b'{{"data": {{"value": 2,}}\n')                      # malformed JSON
send({{"data": {{"value": 3}}, "metadata": {{}}}}); send({{"checkpoint": {{"value": 3}}}})
out.write(b'{{"data": "\xff\xfe"}}\n')                           # invalid UTF-8
send({{"data": {{"value": 4}}, "metadata": {{}}}}); send({{"checkpoint": {{"value": 4}}}})
out.write(b'{{"data": "' + b"x" * 3000 + b'"}}\n')              # over max_line_bytes
send({{"data": {{"value": 5}}, "metadata": {{}}}}); send({{"checkpoint": {{"value": 5}}}})
out.flush()
"""


@pytest.mark.parametrize("on_error", ["fail", "dead_letter"])
def test_bad_data_from_a_real_process(
    task_file: Callable[..., Path], tmp_path: Path, script: Callable[[str, str], Path], on_error: str
) -> None:
    canary = "canary-S3cr3t-7781"
    bad = script("bad-input-provider", BAD_INPUT.format(canary=canary))
    out = tmp_path / "out.jsonl"
    dead = tmp_path / "dead.jsonl"
    hcl = task_file(
        f"""
        task "bad" {{
          on_error = "{on_error}"
          max_line_bytes = "2KiB"
          dead_letter {{ path = "{dead}" }}
          input {{
            provider_path = "{bad}"
            config {{ password = "{canary}" }}
          }}
          output {{
            provider_path = "file-output-provider"
            config {{ path = "{out}" }}
          }}
        }}
        """
    )
    result = run_cli("run", "bad", "-f", str(hcl))
    state = json.loads(run_cli("state", "show", "bad", "-f", str(hcl)).stdout)
    assert canary not in result.stderr
    assert "connecting with password ***" in result.stderr
    if on_error == "fail":
        assert result.returncode == 1
        assert "malformed json" in result.stderr
        assert "line 3" in result.stderr
        assert list(read_output(out).values) == [1]
        assert state["checkpoint"] == {"value": 1}
        assert not dead.exists()
        return
    assert result.returncode == 0, result.stderr
    assert read_output(out).values == [1, 3, 4, 5]
    assert state["checkpoint"] == {"value": 5}
    records = [json.loads(line) for line in dead.read_bytes().splitlines()]
    assert [r["reason"] for r in records] == ["malformed_json", "invalid_utf8", "oversized_line"]
    raws = [base64.b64decode(r["raw_base64"]) for r in records]
    assert raws[0] == b'{"data": {"value": 2,}'
    assert raws[1] == b'{"data": "\xff\xfe"}'
    assert raws[2] == b'{"data": "' + b"x" * 3000 + b'"}'
    assert [r["after_checkpoint"] for r in records] == [{"value": 1}, {"value": 3}, {"value": 4}]
    assert canary not in dead.read_text(errors="replace")
