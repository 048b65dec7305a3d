"""A provider from an image without USER runs as an unprivileged uid, with the hardened
HostConfig, on the real engine (`docker inspect` of the container)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from dstream.config.models import ProviderBlock
from dstream.runtime.base import LABEL_ROLE, LABEL_RUN, LABEL_TASK, ProviderSpec
from dstream.runtime.container import DockerRuntime

if TYPE_CHECKING:
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

BASE = "dstream-local/python:bookworm"  # the machine's own base image: never pulled
NO_USER = "dstream-test/no-user:isolation"


@pytest.fixture(scope="module")
def no_user_image(engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> str:
    if engine.image(BASE) is None:
        pytest.skip(f"the local base image {BASE} is not built on this machine (scripts/dev/up.sh builds it)")
    folder = tmp_path_factory.mktemp("no-user")
    # No USER line: the image's user is root. It prints its uid, then echoes stdin.
    (folder / "Dockerfile").write_text(f'FROM {BASE}\nENTRYPOINT ["sh", "-c", "id -u; exec cat"]\n')
    for _ in engine.build(folder, NO_USER, {}, {}):
        pass
    return NO_USER


@pytest.mark.parametrize(("user", "uid", "config_user"), [(None, "65534", "65534:65534"), ("0", "0", "0")])
def test_an_image_without_user_runs_as_an_unprivileged_uid(
    engine: DockerEngine,
    no_user_image: str,
    task_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    user: str | None,
    uid: str,
    config_user: str,
) -> None:
    container = {"user": user} if user else {}
    block = ProviderBlock.model_validate({"provider_ref": no_user_image, "container": container})
    labels = {LABEL_TASK: task_name, LABEL_ROLE: "input", LABEL_RUN: "r1"}
    spec = ProviderSpec("input", task_name, "r1", block, tmp_path, image=no_user_image, labels=labels)

    async def scenario() -> tuple[str, dict[str, object]]:
        proc = await DockerRuntime(engine).start(spec, lambda line: None)
        try:
            first = await asyncio.wait_for(proc.read(), 30)
            (info,) = list(engine.dstream_containers(task_name))
            inspected = engine.client.api.inspect_container(info["Id"])
            await proc.close_stdin()
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            await proc.cleanup()
        return first.decode().strip(), inspected

    with caplog.at_level("WARNING"):
        printed, inspected = asyncio.run(scenario())
    warned = [r.getMessage() for r in caplog.records if "runs as root" in r.getMessage()]
    assert warned == (['input provider: user = "0": the provider runs as root'] if user == "0" else [])
    assert printed == uid
    assert inspected["Config"]["User"] == config_user
    host = inspected["HostConfig"]
    assert "noexec" in host["Tmpfs"]["/tmp"]
    assert host["MemorySwap"] == host["Memory"] > 0
