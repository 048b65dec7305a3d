"""The ready tasks in examples/ run as their comments say, with the services `make services`
starts (each test copies the folder, so outputs and state stay in the test's own directory)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ROOT, run_cli
from tests.faults import finish, line_count, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = ROOT / "examples"


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns(".dstream")))


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.hcl")))
def test_every_example_lints(examples: Path, name: str) -> None:
    result = run_cli("lint", "-f", str(examples / name))
    assert result.returncode == 0, result.stderr


def test_local_demo(examples: Path) -> None:
    result = run_cli("run", "counter-to-console", "-f", str(examples / "local-demo.hcl"))
    assert result.returncode == 0, result.stderr
    assert [int(line.split('"value":')[1].split(",")[0]) for line in result.stdout.splitlines()] == list(range(1, 21))


def test_transform_pipeline(examples: Path) -> None:
    result = run_cli("run", "orders-filter", "-f", str(examples / "transform-pipeline.hcl"))
    assert result.returncode == 0, result.stderr
    # The summary counts per stage: the jq stage filtered the audit row.
    assert "finished: 4 envelopes" in result.stderr
    assert "transform-1: 4 in, 3 out (1 filtered); the output got 3" in result.stderr
    out = _lines(examples / ".dstream/out/orders-filtered.jsonl")
    assert [(e["data"]["id"], e["metadata"]["OperationType"]) for e in out] == [  # type: ignore[index]
        (1, "Insert"),
        (2, "Insert"),
        (1, "Update"),
    ]
    assert all("ssn" not in e["data"] and e["data"]["region"] == "eu" for e in out)  # type: ignore[operator,index]


@pytest.fixture
def example_table(pg_dsn: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS example_orders")
        conn.execute("CREATE TABLE example_orders (id int PRIMARY KEY, item text, qty int)")
        conn.execute("INSERT INTO example_orders VALUES (1, 'pen', 2), (2, 'ink', 1)")
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS example_orders")


def test_postgres_cdc_to_file(examples: Path, example_table: str) -> None:
    import psycopg

    hcl, env = examples / "postgres-cdc-to-file.hcl", {"EXAMPLE_PG_DSN": example_table}
    run_cli("destroy", "orders-cdc", "-f", str(hcl), "--yes", env=env)  # a slot left by an earlier failure
    assert run_cli("init", "orders-cdc", "-f", str(hcl), env=env).returncode == 0
    try:
        out = examples / ".dstream/out/example-orders.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dstream", "run", "orders-cdc", "-f", str(hcl)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: line_count(out) >= 2, "the snapshot rows", proc)
        with psycopg.connect(example_table, autocommit=True) as conn:
            conn.execute("UPDATE example_orders SET qty = 5 WHERE id = 1")
        wait_until(lambda: line_count(out) >= 3, "the update", proc)
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
        rows = _lines(out)
        assert [e["metadata"]["OperationType"] for e in rows] == ["Read", "Read", "Update"]  # type: ignore[index]
        assert rows[2]["data"] == {"id": 1, "item": "pen", "qty": 5}
    finally:
        assert run_cli("destroy", "orders-cdc", "-f", str(hcl), "--yes", env=env).returncode == 0


def test_storage_queue(examples: Path, azurite_connection_string: str) -> None:
    hcl, env = examples / "storage-queue.hcl", {"EXAMPLE_STORAGE": azurite_connection_string}
    run_cli("destroy", "counter-to-queue", "-f", str(hcl), "--yes", env=env)
    assert run_cli("init", "counter-to-queue", "-f", str(hcl), env=env).returncode == 0
    try:
        sent = run_cli("run", "counter-to-queue", "-f", str(hcl), env=env)
        assert sent.returncode == 0, sent.stderr
        status = run_cli("status", "counter-to-queue", "-f", str(hcl), "--json", env=env)
        (queue,) = json.loads(status.stdout)["resources"]
        assert (queue["state"], queue["details"]["messages"]) == ("present", 30), status.stdout
        got = run_cli("run", "queue-to-file", "-f", str(hcl), env=env)
        assert got.returncode == 0, got.stderr
        values = [e["data"]["value"] for e in _lines(examples / ".dstream/out/from-queue.jsonl")]  # type: ignore[index]
        assert sorted(values) == list(range(1, 31))
    finally:
        assert run_cli("destroy", "counter-to-queue", "-f", str(hcl), "--yes", env=env).returncode == 0
