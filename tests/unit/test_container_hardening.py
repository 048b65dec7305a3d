"""The container guard (no Docker socket, however it is reached) and the hardened HostConfig;
what a task file loosens is said by `lint` and at start."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from dstream.config.models import ContainerSettings, ProviderBlock
from dstream.errors import RuntimeFailure
from dstream.runtime.base import ProviderSpec
from dstream.runtime.container import UNPRIVILEGED, host_settings, mounts, run_as
from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def spec_with(tmp_path: Path, *entries: str) -> ProviderSpec:
    block = ProviderBlock.model_validate({"provider_ref": "x/y:1", "container": {"mounts": list(entries)}})
    return ProviderSpec("input", "t", "r", block, tmp_path)


@pytest.mark.parametrize(
    "source",
    [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/",
        "/run",
        "/var/run",
        "/var",
        "/run/user",
        "/run/user/1000",
        "/run/user/1000/docker.sock",
        "link-to-run",
        "link-to-root/run",
    ],
)
def test_no_mount_reaches_the_docker_socket(tmp_path: Path, source: str) -> None:
    (tmp_path / "link-to-run").symlink_to("/run")
    (tmp_path / "link-to-root").symlink_to("/")
    with pytest.raises(RuntimeFailure, match="Docker socket"):
        mounts(spec_with(tmp_path, f"{source}:/host"))


def test_the_docker_host_socket_and_its_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = tmp_path / "engine"
    engine.mkdir()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine}/d.sock")
    for source in (f"{engine}/d.sock", str(engine), str(tmp_path)):
        with pytest.raises(RuntimeFailure, match="Docker socket"):
            mounts(spec_with(tmp_path, f"{source}:/x:ro"))


def test_ordinary_mounts_are_resolved_and_kept(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert mounts(spec_with(tmp_path, "./data:/data:ro", "/usr/share:/share")) == [
        (str(tmp_path / "data"), "/data", True),
        ("/usr/share", "/share", False),
    ]


def test_hardened_host_config() -> None:
    host = host_settings(ContainerSettings(memory="256m"))
    assert "noexec" in host["tmpfs"]["/tmp"].split(",")
    assert host["memswap_limit"] == host["mem_limit"] == 256 * 1024 * 1024  # no swap on top
    assert host["read_only"] is True
    assert host["cap_drop"] == ["ALL"]


def test_an_image_without_user_runs_unprivileged() -> None:
    assert run_as(ContainerSettings(), None) == UNPRIVILEGED
    assert run_as(ContainerSettings(), "10001:10001") == "10001:10001"
    assert run_as(ContainerSettings(user="0"), None) == "0"


def test_lint_warns_about_each_loosened_default(task_file: Callable[..., Path], tmp_path: Path) -> None:
    path = task_file(
        """
        task "loose" {
          input {
            provider_ref = "127.0.0.1:5000/dstream/counter-input-provider:0.1.0"
            container {
              network   = "host"
              user      = "0"
              read_only = false
              mounts    = ["/srv:/srv", "./inside:/inside", "/etc:/etc2:ro"]
            }
          }
          output { provider_path = "console-output-provider" }
        }
        """
    )
    result = run_cli("lint", "--no-schemas", "-f", str(path))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 4, result.stderr
    assert 'network = "host"' in warnings[0]
    assert 'user = "0"' in warnings[1]
    assert "read_only = false" in warnings[2]
    assert "'/srv:/srv' is read-write outside the task's folder" in warnings[3]
    quiet = task_file(
        """
        task "tight" {
          input { provider_ref = "127.0.0.1:5000/dstream/counter-input-provider:0.1.0" }
          output { provider_path = "console-output-provider" }
        }
        """,
        name="tight.hcl",
    )
    result = run_cli("lint", "--no-schemas", "-f", str(quiet))
    assert "warning" not in result.stderr
