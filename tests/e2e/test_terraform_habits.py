"""Lifecycle verbs the way Terraform users expect them: destroy asks first, plan
--detailed-exitcode, and a result that stays readable in an 80-column terminal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli
from tests.terminal import on_a_terminal

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

LONG_NAME = "orders-" + "very-long-resource-name-" * 5 + "end"  # 130 characters
# An output whose infrastructure is a marker file: init creates it, destroy deletes it.
MARKER_PROVIDER = """
from pathlib import Path
from dstream.sdk import InfrastructureProvider, OutputProvider, ProviderConfig, Resource

class Config(ProviderConfig):
    marker: str
    name: str = "queue"
    fail: bool = False

class Marker(OutputProvider[Config], InfrastructureProvider):
    name = "marker-output-provider"
    Config = Config

    def write(self, batch):
        pass

    def _exists(self):
        return Path(self.config.marker).exists()

    def plan(self):
        if self.config.fail:
            raise RuntimeError("cannot plan")
        yield Resource("queue", self.config.name, action="none" if self._exists() else "create",
                       state="present" if self._exists() else "absent")

    def init(self):
        action = "none" if self._exists() else "create"
        Path(self.config.marker).write_text("x")
        yield Resource("queue", self.config.name, action=action, state="present")

    def status(self):
        # The marker's length stands for the messages the queue holds.
        held = {"messages": len(Path(self.config.marker).read_text())} if self._exists() else {}
        yield Resource("queue", self.config.name, state="present" if self._exists() else "absent", details=held)

    def destroy(self):
        action = "delete" if self._exists() else "none"
        Path(self.config.marker).unlink(missing_ok=True)
        yield Resource("queue", self.config.name, action=action, state="absent")

Marker.main()
"""


@pytest.fixture
def marker_task(task_file: Callable[..., Path], script: Callable[[str, str], Path], tmp_path: Path) -> Path:
    provider = script("marker-output-provider", MARKER_PROVIDER)
    marker = tmp_path / "marker"
    return task_file(
        f"""
        task "t" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "{provider}"
            config {{
              marker = "{marker}"
              name   = "{LONG_NAME}"
            }}
          }}
        }}
        task "broken" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "{provider}"
            config {{
              marker = "{marker}"
              fail   = true
            }}
          }}
        }}
        """
    )


def test_destroy_off_a_terminal_needs_yes(marker_task: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    assert run_cli("init", "t", "-f", str(marker_task)).returncode == 0
    assert marker.exists()
    refused = run_cli("destroy", "t", "-f", str(marker_task))  # stdin is not a terminal
    assert refused.returncode == 1
    assert "without confirmation: pass --yes" in refused.stderr
    assert marker.exists()  # nothing was destroyed
    done = run_cli("destroy", "t", "-f", str(marker_task), "--yes")
    assert done.returncode == 0, done.stderr
    assert not marker.exists()


def test_destroy_on_a_terminal_asks(marker_task: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    assert run_cli("init", "t", "-f", str(marker_task)).returncode == 0
    code, text = on_a_terminal(["destroy", "t", "-f", str(marker_task)], answer=b"no")
    assert code == 1, text
    assert "Destroy cancelled" in text
    assert marker.exists()
    code, text = on_a_terminal(["destroy", "t", "-f", str(marker_task)], answer=b"yes")
    assert code == 0, text
    assert not marker.exists()
    assert "Destroy: 1 deleted." in text


def test_plan_detailed_exitcode(marker_task: Path, tmp_path: Path) -> None:
    changes = run_cli("plan", "t", "-f", str(marker_task), "--detailed-exitcode")
    assert changes.returncode == 2, changes.stderr
    assert "Plan: 1 to create, 0 to update, 0 to delete." in changes.stdout
    assert run_cli("plan", "t", "-f", str(marker_task)).returncode == 0  # without the flag: 0
    assert run_cli("init", "t", "-f", str(marker_task)).returncode == 0
    none = run_cli("plan", "t", "-f", str(marker_task), "--detailed-exitcode", "--json")
    assert none.returncode == 0, none.stderr
    assert json.loads(none.stdout)["changes"] == {"create": 0, "update": 0, "delete": 0}
    failed = run_cli("plan", "broken", "-f", str(marker_task), "--detailed-exitcode")
    assert failed.returncode == 1
    assert "cannot plan" in failed.stderr


def test_lifecycle_output_is_readable_at_80_columns(marker_task: Path) -> None:
    result = run_cli("plan", "t", "-f", str(marker_task), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(LONG_NAME in line for line in lines), result.stdout  # whole, on one line
    assert "…" not in result.stdout
    assert "skipped" not in result.stdout  # no row per provider that lacks the verb...
    said = [line for line in lines if "does not support plan" in line]
    assert said == ["does not support plan, not sent to: input counter-input-provider"]  # ...said once
    assert lines.index(said[0]) > next(i for i, line in enumerate(lines) if LONG_NAME in line)  # below


def test_destroy_and_init_say_what_happens_to_the_checkpoint(marker_task: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    assert run_cli("init", "t", "-f", str(marker_task)).returncode == 0
    # A run leaves a checkpoint (the counter ends at max_count: 0 means never, so give it one).
    text = marker_task.read_text().replace(
        'input { provider_path = "counter-input-provider" }',
        'input {\n provider_path = "counter-input-provider"\n config {\n interval = 0\n max_count = 5\n }\n }',
        1,
    )
    marker_task.write_text(text)
    assert run_cli("run", "t", "-f", str(marker_task)).returncode == 0
    marker.write_text("x" * 30)  # the queue now holds 30 messages
    status = run_cli("status", "t", "-f", str(marker_task), env={"COLUMNS": "200"})
    assert f"  queue {LONG_NAME} (present)" in status.stdout.splitlines()  # status shows no action column
    destroyed = run_cli("destroy", "t", "-f", str(marker_task), "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    assert f"queue {LONG_NAME} holds 30 messages: destroy deletes it with its contents" in destroyed.stderr
    assert "task t keeps its checkpoint" in destroyed.stderr
    assert "dstream state reset t (or destroy --reset-state)" in destroyed.stderr
    again = run_cli("init", "t", "-f", str(marker_task))
    assert again.returncode == 0, again.stderr
    assert "task t keeps a checkpoint from before this init" in again.stderr
    reset = run_cli("destroy", "t", "-f", str(marker_task), "--yes", "--reset-state")
    assert reset.returncode == 0, reset.stderr
    assert "task t: checkpoint removed" in reset.stderr
    assert json.loads(run_cli("state", "show", "t", "-f", str(marker_task), "--json").stdout)["checkpoint"] is None
    fresh = run_cli("init", "t", "-f", str(marker_task))
    assert "keeps a checkpoint" not in fresh.stderr
