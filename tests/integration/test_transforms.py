"""Pipelines of three and four stages in real containers: counter → jq (→ jq) → file.

Delivery of exactly the transformed set, a transform killed mid-stream under the restart
policy, kill -9 and SIGTERM of dstream with resume, a transform failing before its
handshake, records a transform rejects, and the conformance suite on the jq image."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli
from tests.faults import finish, line_count, read_output, start_run, wait_until
from tests.integration.conftest import task_containers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

TOTAL = 120_000
# Drop multiples of 7, and keep a trace of the transform in every envelope.
FILTER = "select(.data.value % 7 != 0) | .data.tripled = .data.value * 3"


def expected(total: int = TOTAL) -> set[int]:
    return {v for v in range(1, total + 1) if v % 7 != 0}


@pytest.fixture(scope="session")
def images(engine: DockerEngine, registry: str, provider_images: dict[str, str]) -> dict[str, str]:
    from dstream.tooling.images import Builder

    builder = Builder(engine)
    out = dict(provider_images)
    for name in ("file-output-provider", "jq-transform-provider"):
        ref = f"{registry}/dstream/{name}:0.1.0"
        if engine.image(ref) is None:
            builder.push(name, registry)
        out[name] = ref
    return out


def pipeline(
    task_file: Callable[..., Path],
    tmp_path: Path,
    name: str,
    images: dict[str, str],
    transforms: list[str],
    total: int = TOTAL,
    extra: str = "",
) -> tuple[Path, Path]:
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    outdir.chmod(0o777)  # the provider runs as an unprivileged user in its container
    stages = "\n".join(
        f"""
          transform {{
            provider_ref = "{images["jq-transform-provider"]}"
            config {{ program = {json.dumps(program)} }}
          }}"""
        for program in transforms
    )
    hcl = task_file(
        f"""
        task "{name}" {{
          stop_timeout = "5s"
          {extra}
          input {{
            provider_ref = "{images["counter-input-provider"]}"
            config {{
              interval = 0
              max_count = {total}
              include_timestamp = false
              checkpoint_every = 1000
            }}
          }}
          {stages}
          output {{
            provider_ref = "{images["file-output-provider"]}"
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


def envelopes(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_two_jq_transforms_in_a_row_deliver_exactly_the_transformed_set(
    task_file: Callable[..., Path], tmp_path: Path, engine: DockerEngine, images: dict[str, str], task_name: str
) -> None:
    hcl, out = pipeline(task_file, tmp_path, task_name, images, [FILTER, '.metadata.Stage = "second"'])
    code, err = finish(start_run(task_name, hcl))
    assert code == 0, err
    rows = envelopes(out)
    values = [row["data"]["value"] for row in rows]  # type: ignore[index]
    assert len(values) == len(set(values))
    assert set(values) == expected()
    assert all(row["data"]["tripled"] == row["data"]["value"] * 3 for row in rows)  # type: ignore[index]
    assert all(row["metadata"]["Stage"] == "second" for row in rows)  # type: ignore[index]
    assert task_containers(engine, task_name) == []
    state = json.loads(run_cli("state", "show", task_name, "-f", str(hcl)).stdout)
    assert state["checkpoint"] == {"value": TOTAL}


def test_docker_kill_of_a_transform_three_times_under_restart_loses_nothing(
    task_file: Callable[..., Path], tmp_path: Path, engine: DockerEngine, images: dict[str, str], task_name: str
) -> None:
    restart = 'restart {\n max_attempts = 5\n backoff = "200ms"\n }'
    hcl, out = pipeline(task_file, tmp_path, task_name, images, [FILTER], total=400_000, extra=restart)
    proc = start_run(task_name, hcl)
    killed = []
    for point in (40_000, 120_000, 200_000):
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines in the output", proc)
        [victim] = [c for c in task_containers(engine, task_name) if c["Labels"]["io.dstream.role"] == "transform-1"]  # type: ignore[index]
        engine.client.api.kill(victim["Id"], "SIGKILL")
        killed.append(victim["Id"])
        wait_until(
            lambda k=victim["Id"]: any(
                c["Labels"]["io.dstream.role"] == "transform-1" and c["Id"] != k  # type: ignore[index]
                for c in task_containers(engine, task_name)
            ),
            "the restarted transform",
            proc,
        )
    code, err = finish(proc)
    assert code == 0, err
    assert err.count("restarting from the last checkpoint") == 3
    assert "transform-1 provider jq-transform-provider" in err
    delivery = read_output(out)
    assert set(delivery.values) == expected(400_000)
    assert task_containers(engine, task_name) == []


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_dstream_killed_or_stopped_during_a_three_stage_run_resumes_losing_nothing(
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,
    images: dict[str, str],
    task_name: str,
    how: signal.Signals,
) -> None:
    total = 300_000
    hcl, out = pipeline(task_file, tmp_path, task_name, images, [FILTER], total=total)
    for _ in range(2):
        # A graceful stop drains what is in flight: count from where the last run left off.
        point = line_count(out) + 25_000
        proc = start_run(task_name, hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines in the output", proc)
        proc.send_signal(how)
        code, err = finish(proc)
        assert code == (-signal.SIGKILL if how == signal.SIGKILL else 0), err
    code, err = finish(start_run(task_name, hcl))
    assert code == 0, err
    delivery = read_output(out)
    assert set(delivery.values) == expected(total)
    if how == signal.SIGTERM:
        assert delivery.duplicates == 0
    assert task_containers(engine, task_name) == []


def test_a_transform_failing_before_its_handshake_is_a_clear_error(
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,
    images: dict[str, str],
    scripted_image: str,
    task_name: str,
) -> None:
    hcl, out = pipeline(task_file, tmp_path, task_name, images, ["."], total=100)
    text = hcl.read_text().replace(images["jq-transform-provider"], scripted_image)
    text = text.replace('program = "."', 'behaviour = "exit"')
    hcl.write_text(text)
    code, err = finish(start_run(task_name, hcl))
    assert code == 1
    assert "transform-1 provider scripted-provider" in err
    assert "exited with code 3 before its handshake" in err
    assert "the source database refused the connection" in err
    # The stages open concurrently, so the file output may have created its file; nothing reached it.
    assert not out.exists() or out.read_bytes() == b""
    assert task_containers(engine, task_name) == []


def test_records_a_jq_program_rejects_are_dead_lettered_by_stage(
    task_file: Callable[..., Path], tmp_path: Path, engine: DockerEngine, images: dict[str, str], task_name: str
) -> None:
    program = 'if .data.value % 1000 == 0 then error("no round thousands") else . end'
    dlq = tmp_path / "dead.jsonl"
    extra = f'on_error = "dead_letter"\n dead_letter {{ path = "{dlq}" }}'
    hcl, out = pipeline(task_file, tmp_path, task_name, images, [program], total=10_000, extra=extra)
    code, err = finish(start_run(task_name, hcl))
    assert code == 0, err
    records = [json.loads(line) for line in dlq.read_bytes().splitlines()]
    assert sorted(r["envelope"]["data"]["value"] for r in records) == list(range(1000, 10_001, 1000))
    assert {r["stage"] for r in records} == {"transform-1"}
    assert all("no round thousands" in r["reason"] for r in records)
    assert set(read_output(out).values) == {v for v in range(1, 10_001) if v % 1000}
    hcl.write_text(hcl.read_text().replace('on_error = "dead_letter"', ""))
    run_cli("state", "reset", task_name, "-f", str(hcl), "--yes")
    code, err = finish(start_run(task_name, hcl))
    assert code == 1
    assert "rejected an envelope: jq: no round thousands" in err
    state = json.loads(run_cli("state", "show", task_name, "-f", str(hcl)).stdout)
    assert state["checkpoint"] is None or state["checkpoint"]["value"] < 1000


def test_conformance_suite_passes_the_jq_image(images: dict[str, str]) -> None:
    config = json.dumps({"program": "select(.data.id != 2) | del(.data.name)"})
    result = run_cli("test-provider", images["jq-transform-provider"], "--config", config, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"]
    assert checks["transform"]["result"] == "pass"
    assert "outputs per envelope [1, 1, 0, 1, 1, 1]" in checks["transform"]["detail"]
    assert checks["sigterm"]["result"] == "pass"
