"""Pull progress on a terminal: bars on stderr, never in the data on stdout; --no-progress."""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.terminal import on_a_terminal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

BAR = re.compile(r"[0-9a-f]{12} Downloading")


@pytest.fixture
def unpulled_image(
    engine: DockerEngine, registry: str, provider_images: dict[str, str], tmp_path: Path
) -> Iterator[str]:
    """The console provider plus a layer of its own, in the registry but not in the engine,
    so that a run has to pull (and show progress for) that layer."""
    console = provider_images["console-output-provider"]
    engine.client.api.pull(console.rsplit(":", 1)[0], tag=console.rsplit(":", 1)[1])
    context = tmp_path / "context"
    context.mkdir()
    (context / "blob").write_bytes(os.urandom(8 * 1024 * 1024))
    (context / "Dockerfile").write_text(f"FROM {console}\nCOPY blob /opt/blob\n")
    repository = f"{registry}/dstream-test/progress-{uuid.uuid4().hex[:8]}"
    for _ in engine.build(context, f"{repository}:1", {}, {}):
        pass
    engine.push(repository, "1", lambda event: None)
    engine.client.api.remove_image(f"{repository}:1", force=True)
    yield f"{repository}:1"
    for image in engine.client.api.images(name=repository):
        engine.client.api.remove_image(image["Id"], force=True)


def _task(path: Path, task_name: str, image: str) -> Path:
    path.write_text(
        f"""
task "{task_name}" {{
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval  = 0
      max_count = 5
    }}
  }}
  output {{
    provider_ref = "{image}"
    config {{ outputFormat = "jsonl" }}
  }}
}}
"""
    )
    return path


def _envelopes(path: Path) -> list[int]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "stdout does not end with a newline"
    return [json.loads(line)["data"]["value"] for line in lines[:-1]]  # every line is an envelope


@pytest.mark.parametrize("flag", [None, "--no-progress"])
def test_pull_bars_go_to_the_terminal_and_stdout_keeps_only_envelopes(
    unpulled_image: str, tmp_path: Path, task_name: str, task_file: Callable[..., Path], flag: str | None
) -> None:
    hcl = _task(tmp_path / "dstream.hcl", task_name, unpulled_image)
    out = tmp_path / "out.jsonl"
    args = ["run", task_name, "-f", str(hcl), *([flag] if flag else [])]
    code, terminal = on_a_terminal(args, stdout=out, timeout=120)
    assert code == 0, terminal[-3000:]
    assert _envelopes(out) == [1, 2, 3, 4, 5]
    assert f"pulling {unpulled_image.rsplit(':', 1)[0]}" in terminal  # the log line, either way
    if flag is None:
        assert BAR.search(terminal), terminal[-3000:]  # the bars, drawn on the terminal (stderr)
    else:
        assert not BAR.search(terminal), terminal[-3000:]
