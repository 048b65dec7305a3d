"""A scaffolded provider's Dockerfile builds on the provider base and passes the conformance suite."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from dstream.tooling.images import base_tag
from tests.conftest import run_cli

if TYPE_CHECKING:
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine


def test_scaffolded_image_passes_test_provider(
    tmp_path: Path, engine: DockerEngine, provider_images: dict[str, str], task_name: str
) -> None:
    name = "acme-output-provider"
    assert run_cli("providers", "new", name, "--kind", "output", "--dir", str(tmp_path)).returncode == 0
    image = f"dstream-test/{name}:{task_name}"
    for _ in engine.build(tmp_path / name, image, {"PROVIDER_BASE": base_tag()}, {}):
        pass
    try:
        labels = engine.image(image)["Config"]["Labels"]  # type: ignore[index]
        # Every character of the schema survives the Dockerfile LABEL (its descriptions hold an
        # apostrophe, double quotes and a dollar sign).
        expected = json.loads((tmp_path / name / "provider.json").read_text())["config_schema"]
        assert json.loads(labels["io.dstream.spec"]) == expected
        spec = run_cli("spec", image)
        assert spec.returncode == 0, spec.stderr
        assert "path" in json.loads(spec.stdout)["properties"]
        suite = run_cli(
            "test-provider", image, "--config", json.dumps({"path": "/tmp/out.jsonl"}), env={"COLUMNS": "200"}
        )
        assert suite.returncode == 0, suite.stdout + suite.stderr
        assert "fail" not in suite.stdout
        assert "acks" in suite.stdout
    finally:
        engine.client.api.remove_image(image, force=True)
