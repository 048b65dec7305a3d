"""Active/standby replicas of one task: leases, takeover, fencing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.conftest import run_cli
from tests.faults import finish, line_count, read_output, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TOTAL = 4000
TASK = """
{state}
task "ha" {{
  lease {{
    backend  = "{backend}"
    duration = "{duration}s"
  }}
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval = 2
      max_count = {total}
      include_timestamp = false
      checkpoint_every = 20
    }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{ path = "{{{{ env \\"OUT\\" }}}}" }}
  }}
}}
"""


def replica(hcl: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", "ha", "-f", str(hcl)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OUT": str(out), **(env or {})},
    )


def active(proc: subprocess.Popen[bytes]) -> bool:
    """A replica runs providers only while it holds the lease."""
    try:
        return len(psutil.Process(proc.pid).children()) >= 2
    except psutil.NoSuchProcess:
        return False


def takeover_scenario(
    hcl: Path, tmp_path: Path, duration: float, total: int, env: dict[str, str] | None = None
) -> None:
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a = replica(hcl, out_a, env)
    wait_until(lambda: line_count(out_a) >= 300, "replica A to relay", a)
    b = replica(hcl, out_b, env)
    try:
        # B stays standby while A is alive: it starts no provider.
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            assert not active(b), "the standby started providers while the lease was held"
            assert b.poll() is None
            time.sleep(0.2)  # sampling the standby's state, not synchronisation
        killed_at = time.monotonic()
        a.send_signal(signal.SIGKILL)
        finish(a)
        wait_until(lambda: line_count(out_b) > 0, "replica B to take over", b)
        takeover = time.monotonic() - killed_at
        code, err = finish(b)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
    assert code == 0, err
    assert "standby: the lease of task ha is held by" in err
    assert "took over the lease of task ha" in err
    # Within the lease duration plus one renewal period (and start-up of the providers).
    assert takeover < duration + duration / 3 + 5, f"takeover took {takeover:.1f}s"
    values = read_output(out_a).values + read_output(out_b).values
    assert sorted(set(values)) == list(range(1, total + 1))


def test_standby_takes_over_after_sigkill_file_lease(task_file: Callable[..., Path], tmp_path: Path) -> None:
    hcl = task_file(TASK.format(state="", backend="file", duration=3, total=TOTAL))
    takeover_scenario(hcl, tmp_path, 3, TOTAL)


@pytest.mark.azurite
def test_standby_takes_over_after_sigkill_azure_lease_and_shared_state(
    task_file: Callable[..., Path], tmp_path: Path, azurite_connection_string: str
) -> None:
    container = f"ha-{uuid.uuid4().hex[:12]}"  # a fresh shared state for this run
    state = f'state {{\n  backend = "azure_blob"\n  connection_string = env("AZ")\n  container = "{container}"\n}}'
    total = 12_000  # A must outlive the 15 s the test watches the standby
    hcl = task_file(TASK.format(state=state, backend="azure_blob", duration=15, total=total))
    takeover_scenario(hcl, tmp_path, 15, total, env={"AZ": azurite_connection_string})
    shown = run_cli("state", "show", "ha", "-f", str(hcl), env={"AZ": azurite_connection_string, "OUT": "-"})
    assert json.loads(shown.stdout)["checkpoint"] == {"value": total}
    assert azurite_connection_string not in shown.stdout + shown.stderr


def test_a_paused_replica_is_fenced_when_it_wakes(task_file: Callable[..., Path], tmp_path: Path) -> None:
    hcl = task_file(TASK.format(state="", backend="file", duration=2, total=1_000_000))
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a = replica(hcl, out_a)
    b = None
    try:
        wait_until(lambda: line_count(out_a) >= 300, "replica A to relay", a)
        a.send_signal(signal.SIGSTOP)  # A sleeps past its lease...
        b = replica(hcl, out_b)
        wait_until(lambda: line_count(out_b) >= 300, "replica B to take over and relay", b)
        written_by_a = line_count(out_a)
        a.send_signal(signal.SIGCONT)  # ...and wakes up believing it is active.
        code, err = finish(a)
        assert code == 1
        assert "lease" in err
        assert line_count(out_a) == written_by_a  # it relayed nothing more
        b.send_signal(signal.SIGTERM)
        code_b, err_b = finish(b)
        assert code_b == 0, err_b
        state = json.loads(run_cli("state", "show", "ha", "-f", str(hcl), env={"OUT": "-"}).stdout)
        assert f"(run {state['run_id']})" in err_b  # the last checkpoint is B's
        assert f"(run {state['run_id']})" not in err
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
