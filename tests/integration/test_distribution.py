"""provider_ref resolution against the real local registry: ORAS executables, the lock file."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.conftest import run_cli
from tests.integration.oras_push import push_artifact

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

# An upstream-style provider: a self-contained executable that speaks the protocol with
# no handshake (legacy), counting to the configured max.
LEGACY_COUNTER = b"""#!/usr/bin/env python3
import json, sys
command = json.loads(sys.stdin.readline())
for n in range(1, int(command["config"]["max"]) + 1):
    print(json.dumps({"data": {"value": n}, "metadata": {"TableName": "t", "LSN": "%08x" % n}, "source": "", "type": ""}))
"""


def test_oras_executable_artifact_is_pulled_cached_and_run(
    task_file: Callable[..., Path], registry: str, tmp_path: Path, task_name: str
) -> None:
    digest = push_artifact(
        registry,
        "dstream-test/upstream-counter",
        "1.0.0",
        {"plugin.linux_amd64": LEGACY_COUNTER, "plugin.darwin_arm64": b"not for this machine"},
        "an upstream-style counter",
    )
    cache = tmp_path / "cache"
    path = task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_ref = "{registry}/dstream-test/upstream-counter:1.0.0"
            config {{ max = 7 }}
          }}
          output {{
            provider_path = "console-output-provider"
            config {{ outputFormat = "jsonl" }}
          }}
        }}
        """
    )
    result = run_cli("run", task_name, "-f", str(path), env={"DSTREAM_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["data"]["value"] for line in lines] == list(range(1, 8))
    assert lines[0]["source"] == ""  # upstream's extra top-level fields are relayed untouched
    assert "input (legacy)" in result.stderr
    cached = cache / "artifacts" / digest.replace(":", "-") / "plugin"
    assert cached.read_bytes() == LEGACY_COUNTER
    assert cached.stat().st_mode & 0o111
    # A second run uses the cache (nothing pulled again).
    again = run_cli("run", task_name, "-f", str(path), env={"DSTREAM_CACHE": str(cache)})
    assert again.returncode == 0, again.stderr
    assert "pulling plugin.linux_amd64" in result.stderr
    assert "pulling plugin.linux_amd64" not in again.stderr


def test_artifact_without_this_platform_is_a_clear_error(
    task_file: Callable[..., Path], registry: str, tmp_path: Path, task_name: str
) -> None:
    push_artifact(registry, "dstream-test/mac-only", "1.0.0", {"plugin.darwin_arm64": b"x"}, "mac only")
    path = task_file(
        f"""
        task "{task_name}" {{
          input {{ provider_ref = "{registry}/dstream-test/mac-only:1.0.0" }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    result = run_cli("run", task_name, "-f", str(path), env={"DSTREAM_CACHE": str(tmp_path / "c")})
    assert result.returncode == 1
    assert "no executable for linux/amd64 (it offers: plugin.darwin_arm64)" in result.stderr


def test_lock_then_retag_makes_run_refuse_naming_both_digests(
    task_file: Callable[..., Path],
    registry: str,
    engine: DockerEngine,
    provider_images: dict[str, str],
    task_name: str,
) -> None:
    moving = f"{registry}/dstream-test/moving-counter"
    counter = provider_images["counter-input-provider"]
    engine.client.api.pull(counter.rsplit(":", 1)[0], tag="0.1.0")
    engine.tag(counter, moving, "stable")
    first = engine.push(moving, "stable", lambda event: None)
    path = task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_ref = "{moving}:stable"
            config {{
              interval = 0
              max_count = 3
            }}
          }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    locked = run_cli("lock", "-f", str(path))
    assert locked.returncode == 0, locked.stderr
    lock_text = (path.parent / "dstream.lock").read_text()
    assert f'provider "{moving}:stable"' in lock_text
    assert first in lock_text
    assert run_cli("run", task_name, "-f", str(path)).returncode == 0

    # Someone re-tags "stable" to a different image.
    engine.tag(provider_images["console-output-provider"], moving, "stable")
    second = engine.push(moving, "stable", lambda event: None)
    assert second != first
    refused = run_cli("run", task_name, "-f", str(path))
    assert refused.returncode == 1
    assert first in refused.stderr
    assert second in refused.stderr
    assert "--update-lock" in refused.stderr

    # Pinning by digest runs the old image regardless of the tag.
    pinned = path.read_text().replace(f"{moving}:stable", f"{moving}@{first}")
    path.write_text(pinned)
    assert run_cli("run", task_name, "-f", str(path)).returncode == 0


def test_unknown_image_and_unreachable_registry_are_clear(
    task_file: Callable[..., Path], registry: str, task_name: str
) -> None:
    path = task_file(
        f"""
        task "missing" {{
          input {{ provider_ref = "{registry}/dstream-test/does-not-exist:1" }}
          output {{ provider_path = "console-output-provider" }}
        }}
        task "unreachable" {{
          input {{ provider_ref = "127.0.0.1:1/dstream/nothing:1" }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    missing = run_cli("run", "missing", "-f", str(path))
    assert missing.returncode == 1
    assert "dstream-test/does-not-exist:1 was not found in registry" in missing.stderr
    unreachable = run_cli("run", "unreachable", "-f", str(path))
    assert unreachable.returncode == 1
    assert "cannot reach registry 127.0.0.1:1: connection refused" in unreachable.stderr


def test_providers_list_json_names_images_and_verbs() -> None:
    result = run_cli("providers", "list", "--json", env={"DSTREAM_REGISTRY": "127.0.0.1:5000"})
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)["providers"]}
    assert entries["counter-input-provider"]["image"] == "127.0.0.1:5000/dstream/counter-input-provider:0.1.0"
    assert entries["console-output-provider"]["verbs"] == ["run", "check"]
    assert entries["file-output-provider"]["config_schema"]["properties"]["path"]["type"] == "string"
