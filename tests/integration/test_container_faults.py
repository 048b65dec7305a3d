"""kill -9 of the orchestrator, of the input container and of the output container, at
random points of a 200K-envelope counter → file run in containers; then resume."""

from __future__ import annotations

import random
import signal
from typing import TYPE_CHECKING

import pytest

from tests.faults import finish, line_count, read_output, start_run, wait_until
from tests.integration.conftest import task_containers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

TOTAL = 200_000


@pytest.fixture(scope="session")
def file_image(engine: DockerEngine, registry: str, provider_images: dict[str, str]) -> str:
    from dstream.tooling.images import Builder

    ref = f"{registry}/dstream/file-output-provider:0.1.0"
    if engine.image(ref) is None:
        Builder(engine).push("file-output-provider", registry)
    return ref


def write_task(
    task_file: Callable[..., Path], tmp_path: Path, name: str, counter: str, file_image: str
) -> tuple[Path, Path]:
    outdir = tmp_path / "out"
    outdir.mkdir()
    outdir.chmod(0o777)  # the provider runs as an unprivileged user in its container
    hcl = task_file(
        f"""
        task "{name}" {{
          stop_timeout = "5s"
          input {{
            provider_ref = "{counter}"
            config {{
              interval = 0
              max_count = {TOTAL}
              include_timestamp = false
              checkpoint_every = 1000
            }}
          }}
          output {{
            provider_ref = "{file_image}"
            config {{
              path = "/out/out.jsonl"
              fsync = false
            }}
            container {{ mounts = ["./out:/out"] }}
          }}
        }}
        """
    )
    return hcl, outdir / "out.jsonl"


@pytest.mark.parametrize("target", ["orchestrator", "input", "output"])
def test_kill_9_in_containers_then_resume_loses_nothing(
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,
    provider_images: dict[str, str],
    file_image: str,
    task_name: str,
    target: str,
) -> None:
    hcl, out = write_task(task_file, tmp_path, task_name, provider_images["counter-input-provider"], file_image)
    rng = random.Random()
    for _ in range(2):
        point = min(line_count(out) + rng.randint(2_000, 60_000), TOTAL - 20_000)
        proc = start_run(task_name, hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines in the output", proc)
        if target == "orchestrator":
            proc.send_signal(signal.SIGKILL)
            code, _ = finish(proc)
            assert code == -signal.SIGKILL
        else:
            (victim,) = [c for c in task_containers(engine, task_name) if c["Labels"]["io.dstream.role"] == target]  # type: ignore[index]
            engine.client.api.kill(victim["Id"], "SIGKILL")
            code, err = finish(proc)
            assert code == 1
            assert f"{target} provider" in err
            assert task_containers(engine, task_name) == []
    code, err = finish(start_run(task_name, hcl))
    assert code == 0, err
    if target == "orchestrator":
        assert "left behind by run" in err
    delivery = read_output(out)
    assert delivery.missing == []
    assert max(delivery.values) == TOTAL
    assert task_containers(engine, task_name) == []


def test_sigterm_in_containers_then_resume_has_no_duplicates(
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,
    provider_images: dict[str, str],
    file_image: str,
    task_name: str,
) -> None:
    hcl, out = write_task(task_file, tmp_path, task_name, provider_images["counter-input-provider"], file_image)
    for point in (30_000, 90_000):
        proc = start_run(task_name, hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines in the output", proc)
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
    code, err = finish(start_run(task_name, hcl))
    assert code == 0, err
    delivery = read_output(out)
    assert delivery.missing == []
    assert delivery.duplicates == 0
    assert len(delivery.values) == TOTAL
