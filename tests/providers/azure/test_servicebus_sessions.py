"""Ordered consumption through session-enabled entities on the Service Bus emulator.

The emulator's Config-schema.json has ``RequiresSession`` on queues and subscriptions; it
is an MCR image, so these run in .github/workflows/servicebus.yml (DSTREAM_TEST_SERVICEBUS=1)
and skip here. A file of interleaved updates to several rows goes through
asb-output-provider with ``session = "key"`` into a session-enabled queue; consumers with
``sessions = "next"`` must get each row's updates in order: two competing consumers at once,
and one whose input is killed with SIGKILL mid-session (nothing lost, order kept, duplicates
allowed: at-least-once); and one session held for several lock durations behind a slow output
(its lock renewed on a timer: no redelivery).

Lock durations: 60 s where a test does not mean to outlast the lock, so a slow runner (the
emulator keeps its state in SQL Server) cannot lose a session by being slow; 5 s, the
emulator's minimum (Config-schema.json), where the test is that the lock is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from tests.conftest import run_cli
from tests.faults import finish, kill, line_count, provider_pid, slow_file_output, start_run, wait_until
from tests.providers.azure.conftest import EMULATOR_MARKS, by_name, lifecycle

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.providers.azure.conftest import ServiceBus

pytestmark = EMULATOR_MARKS

ROWS, VERSIONS = 6, 40

PRODUCE = """
task "{p}-produce" {{
  input {{
    provider_path = "file-input-provider"
    config {{ path = "{src}" }}
  }}
  output {{
    provider_path = "asb-output-provider"
    config {{
      connection_string          = env("DSTREAM_TEST_SB")
      admin_connection_string    = env("DSTREAM_TEST_SB_ADMIN")
      queue                      = "{p}-ordered"
      session                    = "key"
      lock_duration              = "{lock}"
      duplicate_detection_window = "5m"
    }}
  }}
}}
"""

CONSUME = """
task "{p}-{name}" {{
  input {{
    provider_path = "asb-input-provider"
    config {{
      connection_string = env("DSTREAM_TEST_SB")
      queue             = "{p}-ordered"
      sessions          = "next"
      max_sessions      = {max_sessions}
      session_idle      = "1s"
      max_batch         = 10
      max_idle          = "{max_idle}"
      commit_wait       = "5s"
    }}
  }}
  output {{
    provider_path = "{output}"
    config {{
      path  = "{out}"
      fsync = false
    }}
  }}
}}
"""


def produce(
    sb: str,
    servicebus: ServiceBus,
    task_file: Callable[..., Path],
    tmp_path: Path,
    rows: int = ROWS,
    versions: int = VERSIONS,
    lock: str = "60s",
) -> None:
    """Interleaved updates of ``rows`` rows (``versions`` each, in commit order) into a session queue."""
    src = tmp_path / "updates.jsonl"
    lines = []
    for v in range(1, versions + 1):
        for r in range(rows):
            meta = {"TableName": "dbo.T", "OperationType": "Update", "LSN": f"{v:08x}", "Seq": r, "Key": {"id": r}}
            lines.append(json.dumps({"data": {"id": r, "v": v}, "metadata": meta}))
    src.write_text("\n".join(lines) + "\n")
    hcl = task_file(PRODUCE.format(p=sb, src=src, lock=lock), name="produce.hcl")
    assert by_name(lifecycle("init", f"{sb}-produce", hcl)) == {f"{sb}-ordered": ("create", "present")}
    with servicebus.admin() as client:
        assert client.get_queue(f"{sb}-ordered").requires_session
    result = run_cli("run", f"{sb}-produce", "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    assert servicebus.active(f"{sb}-ordered")[0] == rows * versions


def consumer(
    sb: str,
    name: str,
    task_file: Callable[..., Path],
    tmp_path: Path,
    max_idle: str,
    output: str = "file-output-provider",
    max_sessions: int = 2,
) -> tuple[Path, Path]:
    out = tmp_path / f"{name}.jsonl"
    text = CONSUME.format(p=sb, name=name, out=out, max_idle=max_idle, output=output, max_sessions=max_sessions)
    hcl = task_file(text, name=f"{name}.hcl")
    return hcl, out


def versions(path: Path) -> dict[int, list[int]]:
    """Each row's versions in the order one consumer wrote them."""
    out: dict[int, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            data = json.loads(line)["data"]
            out.setdefault(data["id"], []).append(data["v"])
    return out


def in_order(seen: list[int]) -> bool:
    """Every new version is the next one (a repeat of an earlier one is a redelivery, allowed)."""
    top = 0
    for v in seen:
        if v > top:
            if v != top + 1:
                return False
            top = v
    return True


def test_two_competing_consumers_get_each_rows_updates_in_order(
    sb: str, servicebus: ServiceBus, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    produce(sb, servicebus, task_file, tmp_path)
    (hcl1, out1), (hcl2, out2) = (consumer(sb, n, task_file, tmp_path, "8s") for n in ("c1", "c2"))
    runs = [start_run(f"{sb}-c1", hcl1), start_run(f"{sb}-c2", hcl2)]
    for proc in runs:
        code, err = finish(proc, timeout=300)
        assert code == 0, err
    first, second = versions(out1), versions(out2)
    assert first, "the first consumer got no session"  # they competed: each consumer got sessions
    assert second, "the second consumer got no session"
    for rows in (first, second):
        for row, seen in rows.items():
            assert seen == sorted(seen), f"row {row} out of order in one consumer: {seen}"
    merged: Counter[tuple[int, int]] = Counter(
        (row, v) for rows in (first, second) for row, seen in rows.items() for v in seen
    )
    assert set(merged) == {(r, v) for r in range(ROWS) for v in range(1, VERSIONS + 1)}  # nothing lost
    assert max(merged.values()) == 1  # a session is let go only when all of it is committed: no redelivery
    assert servicebus.active(f"{sb}-ordered") == (0, 0)


def test_kill_9_of_the_input_mid_session_loses_nothing_and_keeps_each_rows_order(
    sb: str, servicebus: ServiceBus, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    produce(sb, servicebus, task_file, tmp_path)
    hcl, out = consumer(sb, "c1", task_file, tmp_path, "90s")  # well over the 60 s session lock a killed input held
    proc = start_run(f"{sb}-c1", hcl)
    wait_until(lambda: line_count(out) >= ROWS * VERSIONS // 3, "a third of the updates", proc)
    kill(provider_pid(proc, "asb-input-provider"))
    assert finish(proc)[0] == 1
    code, err = finish(start_run(f"{sb}-c1", hcl), timeout=300)
    assert code == 0, err
    rows: dict[int, Any] = versions(out)
    assert {(r, v) for r, seen in rows.items() for v in seen} == {
        (r, v) for r in range(ROWS) for v in range(1, VERSIONS + 1)
    }  # nothing lost
    for row, seen in rows.items():
        assert in_order(seen), f"row {row}: {seen}"
    assert servicebus.active(f"{sb}-ordered") == (0, 0)


def test_a_session_held_for_several_lock_durations_keeps_its_lock(
    sb: str,
    servicebus: ServiceBus,
    task_file: Callable[..., Path],
    tmp_path: Path,
    script: Callable[[str, str], Path],
) -> None:
    """One session of 200 updates behind an output that takes 1 s per 10 envelopes: the session is
    held about 20 s with a 5 s lock. Renewed on a timer, it is never lost: no redelivery, in order."""
    produce(sb, servicebus, task_file, tmp_path, rows=1, versions=200, lock="5s")
    slow = script("slow-output-provider", slow_file_output(10, 1.0))
    hcl, out = consumer(sb, "busy", task_file, tmp_path, "10s", output=str(slow), max_sessions=1)
    code, err = finish(start_run(f"{sb}-busy", hcl), timeout=600)
    assert code == 0, err
    assert "lost the lock" not in err
    assert versions(out) == {0: list(range(1, 201))}  # each once, in order: the lock was never lost
    assert servicebus.active(f"{sb}-ordered") == (0, 0)
