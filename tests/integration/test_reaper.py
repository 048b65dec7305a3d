"""After kill -9 of `dstream run`, its provider containers go away on their own, soon, and
another task's run goes on untouched."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

from tests.faults import finish, line_count, start_run, wait_until
from tests.integration.conftest import task_containers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine


def endless(task_file: Callable[..., Path], tmp_path: Path, name: str, images: dict[str, str]) -> tuple[Path, Path]:
    folder = tmp_path / name
    (folder / "out").mkdir(parents=True)
    (folder / "out").chmod(0o777)
    hcl = task_file(
        f"""
        task "{name}" {{
          input {{
            provider_ref = "{images["counter-input-provider"]}"
            config {{
              interval = 5
              max_count = 0
            }}
          }}
          output {{
            provider_ref = "{images["file-output-provider"]}"
            config {{ path = "/out/out.jsonl" }}
            container {{ mounts = ["./out:/out"] }}
          }}
        }}
        """,
        name=f"{name}/dstream.hcl",
    )
    return hcl, folder / "out" / "out.jsonl"


def test_kill_9_of_dstream_leaves_no_container_and_spares_another_run(
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,
    provider_images: dict[str, str],
    task_name: str,
) -> None:
    images = provider_images
    doomed_hcl, doomed_out = endless(task_file, tmp_path, f"{task_name}-a", images)
    spared_hcl, spared_out = endless(task_file, tmp_path, f"{task_name}-b", images)
    doomed = start_run(f"{task_name}-a", doomed_hcl)
    spared = start_run(f"{task_name}-b", spared_hcl)
    try:
        wait_until(lambda: line_count(doomed_out) > 20 and line_count(spared_out) > 20, "both runs delivering")
        assert len(task_containers(engine, f"{task_name}-a")) == 2
        doomed.send_signal(signal.SIGKILL)
        finish(doomed)
        killed = time.monotonic()
        wait_until(lambda: task_containers(engine, f"{task_name}-a") == [], "the killed run's containers gone")
        assert time.monotonic() - killed < 30
        running = [c for c in task_containers(engine, f"{task_name}-b") if c["State"] == "running"]
        assert len(running) == 2  # the other task's run is untouched
        before = line_count(spared_out)
        wait_until(lambda: line_count(spared_out) > before + 20, "the other run still delivering", spared)
    finally:
        spared.send_signal(signal.SIGTERM)
        code, err = finish(spared)
    assert code == 0, err
    assert task_containers(engine, f"{task_name}-b") == []
