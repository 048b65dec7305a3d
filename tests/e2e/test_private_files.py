"""State, logs, dead letters (raw data), run records and leases are private to their owner
(0700 folders, 0600 files), never written through a planted symlink, and a task name
cannot make a path leave its folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstream import private
from tests.conftest import run_cli
from tests.faults import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

BAD_LINE_INPUT = """
import json, sys
sys.stdin.readline()
print(json.dumps({"status": "ready"}))
print("this is not an envelope")
print(json.dumps({"data": {"n": 1}}))
print(json.dumps({"checkpoint": {"n": 1}}))
"""


def task_text(name: str, provider: Path, lease: bool = False) -> str:
    lease_block = 'lease {\n backend = "file"\n }' if lease else ""
    return f"""
        task "{name}" {{
          on_error = "dead_letter"
          {lease_block}
          input {{ provider_path = "{provider}" }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the common default, under which files used to come out 0644
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_state_dead_letters_logs_and_leases_are_private(
    task_file: Callable[..., Path], script: Callable[[str, str], Path], tmp_path: Path
) -> None:
    provider = script("bad_line.py", BAD_LINE_INPUT)
    path = task_file(task_text("t", provider, lease=True))
    runs = tmp_path / "runs"
    result = run_cli("run", "t", "-f", str(path), env={"DSTREAM_RUNS_DIR": str(runs)})
    assert result.returncode == 0, result.stderr
    state = path.parent / ".dstream"
    assert mode(state) == 0o700
    assert mode(state / "state.db") == 0o600
    for extra in ("state.db-wal", "state.db-shm"):
        if (state / extra).exists():
            assert mode(state / extra) == 0o600
    assert mode(state / "dead-letter") == 0o700
    assert mode(state / "dead-letter" / "t.jsonl") == 0o600
    assert mode(state / "leases") == 0o700
    assert {mode(p) for p in (state / "leases").iterdir()} == {0o600}
    assert mode(runs) == 0o700
    # A detached run: its log and its run record.
    detached = run_cli("run", "t", "-f", str(path), "--detach", env={"DSTREAM_RUNS_DIR": str(runs)})
    assert detached.returncode == 0, detached.stderr
    log = state / "logs" / "t.log"
    wait_until(lambda: b"finished" in log.read_bytes() if log.exists() else False, "the detached run to finish")
    assert mode(state / "logs") == 0o700
    assert mode(log) == 0o600


def test_a_run_record_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dstream.task import runs

    monkeypatch.setenv("DSTREAM_RUNS_DIR", str(tmp_path / "runs"))
    record = runs.RunRecord("t", os.getpid(), "f.hcl", "now", None, False, 0.0)
    written = runs.write(record)
    assert mode(written) == 0o600
    assert mode(written.parent) == 0o700


def test_a_planted_symlink_is_not_followed(
    task_file: Callable[..., Path], script: Callable[[str, str], Path], tmp_path: Path
) -> None:
    provider = script("bad_line.py", BAD_LINE_INPUT)
    path = task_file(task_text("t", provider))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = path.parent / ".dstream" / "dead-letter"
    folder.mkdir(parents=True)
    (folder / "t.jsonl").symlink_to(victim)
    result = run_cli("run", "t", "-f", str(path))
    assert result.returncode == 1
    assert victim.read_text() == "precious\n"
    assert "is a symbolic link" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".hidden", "My_Task: x"])
def test_a_task_name_cannot_leave_its_folder(
    task_file: Callable[..., Path], script: Callable[[str, str], Path], tmp_path: Path, name: str
) -> None:
    provider = script("bad_line.py", BAD_LINE_INPUT)
    path = task_file(task_text(name, provider, lease=True))
    result = run_cli("run", name, "-f", str(path), env={"DSTREAM_RUNS_DIR": str(tmp_path / "runs")})
    assert result.returncode == 0, result.stderr
    letters = list((path.parent / ".dstream" / "dead-letter").iterdir())
    assert len(letters) == 1
    assert {p.name for p in tmp_path.iterdir()} <= {"dstream.hcl", "bad_line.py", ".dstream", "runs"}
    assert not (tmp_path.parent / "escaped.jsonl").exists()


@given(st.text(min_size=1, max_size=300))
def test_file_name_is_one_safe_component(name: str) -> None:
    safe = private.file_name(name)
    assert safe not in ("", ".", "..")
    assert "/" not in safe
    assert "\0" not in safe
    assert not safe.startswith(".")
    assert len(safe.encode()) <= 200
    assert Path("/base", safe).parent == Path("/base")


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_two_task_names_never_share_a_file(a: str, b: str) -> None:
    if a != b:
        assert private.file_name(a) != private.file_name(b)


def test_the_cache_folders_are_private(task_file: Callable[..., Path], tmp_path: Path) -> None:
    path = task_file(
        """
        task "t" {
          input { provider_path = "counter-input-provider" }
          output { provider_path = "console-output-provider" }
        }
        """
    )
    cache = tmp_path / "cache" / "nested"
    result = run_cli("lint", "--no-schemas", "-f", str(path), env={"DSTREAM_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert mode(cache.parent) == mode(cache) == mode(cache / "hcl") == 0o700
