"""The postgres-cdc provider as a container (from the local registry) on the real Docker
engine: lifecycle verbs, and kill -9 of the orchestrator, of the input container and of
the output container at random points of a ≥100K-change stream, then resume; SIGTERM
restarts without duplicates."""

from __future__ import annotations

import json
import os
import random
import signal
from typing import TYPE_CHECKING

import pytest

from dstream.tooling.images import Builder
from tests.conftest import run_cli
from tests.faults import finish, line_count, start_run, wait_until
from tests.integration.conftest import REGISTRY, _in_registry, engine, registry, task_containers  # noqa: F401

from .helpers import OutputReader, Workload, cdc_task

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

    from .helpers import Db

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

TOTAL = 100_000


@pytest.fixture
def plugin() -> str:
    """These tests run the provider image in the local registry (built from whatever code was
    current when it was pushed): its slots stay wal2json, which every image knows."""
    return "wal2json"


@pytest.fixture(scope="session")
def cdc_images(engine: DockerEngine, registry: str) -> dict[str, str]:  # noqa: F811
    """The postgres-cdc and file-output images in the local registry (built if missing).

    ``DSTREAM_TEST_PG_CDC_REGISTRY`` (e.g. ``127.0.0.1:5000/wt-mybranch``, pushed with
    `dstream providers build postgres-cdc-input-provider --registry ...`) tests a branch's own
    provider image instead of the shared tag."""
    builder = Builder(engine)
    images = {}
    own = os.environ.get("DSTREAM_TEST_PG_CDC_REGISTRY")
    for name in ("postgres-cdc-input-provider", "file-output-provider"):
        if own and name == "postgres-cdc-input-provider":
            images[name] = f"{own}/dstream/{name}:0.1.0"
            continue
        ref = f"{registry}/dstream/{name}:0.1.0"
        if not _in_registry(ref):
            builder.push(name, registry)
        images[name] = ref
    return images


@pytest.fixture
def task_name(engine: DockerEngine) -> Iterator[str]:  # noqa: F811
    import uuid

    name = f"it-cdc-{uuid.uuid4().hex[:8]}"
    yield name
    for info in engine.dstream_containers(name):
        engine.remove(info["Id"])


def write_task(
    db: Db, task_file: Callable[..., Path], tmp_path: Path, task: str, images: dict[str, str]
) -> tuple[Path, Path, list[str], Workload]:
    tables = [db.create_table("w1", "id int PRIMARY KEY, v int"), db.create_table("w2", "id int PRIMARY KEY, v int")]
    outdir = tmp_path / "out"
    outdir.mkdir()
    outdir.chmod(0o777)  # the output runs as an unprivileged user in its container
    hcl = task_file(
        cdc_task(
            task,
            db.user_dsn(),
            tables,
            db.name("slot"),
            "/out/out.jsonl",
            input_source=f'provider_ref = "{images["postgres-cdc-input-provider"]}"',
            output_source=f'provider_ref = "{images["file-output-provider"]}"',
            config="poll_interval = 0.05\nmax_poll_interval = 0.5",
            input_extra='container { network = "host" }',
            output_extra='container { mounts = ["./out:/out"] }',
            task_extra='stop_timeout = "5s"',
        )
    )
    workload = Workload(db.dsn, tables, [f"public.{t}" for t in tables], seed=random.randrange(1 << 30))
    return hcl, outdir / "out.jsonl", tables, workload


def _complete(reader: OutputReader, workload: Workload) -> bool:
    reader.poll()
    return workload.expected <= reader.seen


@pytest.mark.parametrize("target", ["orchestrator", "input", "output"])
def test_kill_9_in_containers_then_resume_loses_nothing(
    db: Db,
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,  # noqa: F811
    cdc_images: dict[str, str],
    task_name: str,
    target: str,
) -> None:
    hcl, out, _, workload = write_task(db, task_file, tmp_path, task_name, cdc_images)
    init = run_cli("init", task_name, "-f", str(hcl), "--json")  # the lifecycle verb, in a container
    assert init.returncode == 0, init.stderr
    created = json.loads(init.stdout)["resources"]
    assert created[0]["type"] == "replication_slot"
    assert created[0]["action"] == "create"
    workload.start(TOTAL)
    rng = random.Random()
    for _ in range(2):
        point = line_count(out) + rng.randint(5_000, 30_000)
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
    workload.join()
    proc = start_run(task_name, hcl)
    reader = OutputReader(out)
    wait_until(lambda: _complete(reader, workload), "every change in the output")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    # After kill -9 of dstream its containers are removed by its reaper or, failing that, by the next
    # run ("left behind by run ..."); either way none is left (asserted last).
    assert workload.count >= TOTAL
    assert workload.expected <= reader.seen
    orders = [c.order for c in reader.first_occurrences()]
    assert orders == sorted(orders)
    assert task_containers(engine, task_name) == []


def test_sigterm_in_containers_then_resume_has_no_duplicates(
    db: Db,
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,  # noqa: F811
    cdc_images: dict[str, str],
    task_name: str,
) -> None:
    hcl, out, _, workload = write_task(db, task_file, tmp_path, task_name, cdc_images)
    assert run_cli("init", task_name, "-f", str(hcl)).returncode == 0
    workload.start(TOTAL)
    for point in (20_000, 60_000):
        proc = start_run(task_name, hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines in the output", proc)
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
    workload.join()
    proc = start_run(task_name, hcl)
    reader = OutputReader(out)
    wait_until(lambda: _complete(reader, workload), "every change in the output")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert reader.duplicates() == 0
    assert len(reader.changes) == workload.count
    destroyed = run_cli("destroy", task_name, "-f", str(hcl), "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    assert db.slot(db.name("slot")) is None
