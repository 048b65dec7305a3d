"""Loopback addresses given to a provider container on the bridge network are named, with the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from dstream.config.models import ContainerSettings
from dstream.runtime import reach
from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("postgresql://app:pw@127.0.0.1:5432/db", "127.0.0.1"),
        ("host=localhost port=5432 dbname=x", "localhost"),
        ("QueueEndpoint=http://LOCALHOST:10001/devstoreaccount1;", "LOCALHOST"),
        ("http://[::1]:8080/x", "[::1]"),
        ("Server=tcp:127.0.1.1,1433;Database=x", "127.0.1.1"),
    ],
)
def test_loopback_hosts_are_found(value: str, host: str) -> None:
    assert list(reach.loopback_settings({"dsn": value})) == [("config.dsn", host)]


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://db.internal:5432/x",
        "http://mylocalhost:1/",
        "http://localhost.example.com/",
        "10.127.0.0.1x",
        "1127.0.0.1",
    ],
)
def test_other_hosts_are_not(value: str) -> None:
    assert list(reach.loopback_settings({"url": value})) == []


def test_only_on_a_bridge_network_and_never_quoting_the_value() -> None:
    config = {"nested": [{"dsn": "postgresql://app:S3cretPw@127.0.0.1/db"}]}
    (text,) = reach.warnings(ContainerSettings(), config)
    assert "config.nested[0].dsn names 127.0.0.1" in text
    assert 'container { network = "host" }' in text
    assert "S3cretPw" not in text
    assert list(reach.warnings(ContainerSettings(network="host"), config)) == []
    assert list(reach.warnings(ContainerSettings(network="container:abc"), config)) == []


def test_lint_names_it_for_images_not_for_local_processes(task_file: Callable[..., Path]) -> None:
    path = task_file(
        """
        task "t" {
          input {
            provider_ref = "127.0.0.1:5000/dstream/postgres-cdc-input-provider:0.1.0"
            config {
              dsn    = "postgresql://app:S3cretPw@127.0.0.1:5432/db"
              tables = ["public.t"]
            }
          }
          output {
            provider_path = "file-output-provider"
            config { path = "http://127.0.0.1/not-a-container.jsonl" }
          }
        }
        """
    )
    result = run_cli("lint", "--no-schemas", "-f", str(path))
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "names 127.0.0.1" in line]
    assert line.startswith("t input: warning: (as an image) config.dsn names 127.0.0.1")
    assert "S3cretPw" not in result.stderr
