"""Local providers are third-party code: what they see, which uid they run as, and that a
wrapper script's children cannot hang a run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dstream.config.models import ProviderBlock
from dstream.runtime.base import ProviderSpec
from dstream.runtime.local import NOBODY, LocalRuntime, _grow_pipes
from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable

DUMP_ENV = """
import json, os, sys
command = json.loads(sys.stdin.readline())
with open(command["config"]["dump"], "w") as f:
    json.dump(dict(os.environ), f)
print(json.dumps({"status": "ready"}), flush=True)
"""

SECRETS = {
    "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=StateStoreKey123",
    "AWS_SECRET_ACCESS_KEY": "UnrelatedCloudKey456",
    "DSTREAM_SECRETS_DIR": "/run/secrets",
    "SB_CONN": "Endpoint=sb://x;SharedAccessKey=OtherStageKey789",
    "PYTHONPATH": "/somewhere",
}


def test_a_local_provider_sees_only_what_it_is_given(
    task_file: Callable[..., Path], script: Callable[[str, str], Path], tmp_path: Path
) -> None:
    dumper = script("dump_env.py", DUMP_ENV)
    dump = tmp_path / "env.json"
    path = task_file(
        f"""
        task "t" {{
          input {{
            provider_path = "{dumper}"
            config {{ dump = "{dump}" }}
            container {{ env = {{ EXTRA = "given", TZ = "Europe/Paris" }} }}
          }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    env = {**SECRETS, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "DSTREAM_LOG_LEVEL": "debug"}
    result = run_cli("run", "t", "-f", str(path), env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(dump.read_text())
    assert set(seen) <= {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "DSTREAM_LOG_LEVEL", "PYTHONUNBUFFERED", "EXTRA"} | {
        name for name in seen if name.startswith("LC_")
    }
    assert seen["EXTRA"] == "given"
    assert seen["TZ"] == "Europe/Paris"  # container { env } wins over dstream's own
    assert seen["LANG"] == seen["LC_ALL"] == "C.UTF-8"
    assert seen["PATH"] == os.environ["PATH"]
    assert seen["DSTREAM_LOG_LEVEL"] == "debug"  # the SDK's log level follows dstream's
    for value in SECRETS.values():
        assert value not in json.dumps(seen)


WRAPPER_OUTPUT = """#!/bin/sh
echo '{"status":"ready"}'
cat > /dev/null
"""


@pytest.mark.parametrize(
    ("attempt", "restart"), [(1, ""), (2, ""), (3, 'restart {\n max_attempts = 2\n backoff = "0.1s"\n }')]
)
def test_a_wrapper_scripts_child_cannot_hang_a_run(task_file: Callable[..., Path], attempt: int, restart: str) -> None:
    """An input that exits at once and an output whose shell keeps a non-exec `cat` on its
    pipes: before, the run hung in cleanup (or crashed with a ValueError from _grow_pipes)."""
    folder = task_file("", name="unused").parent
    (folder / "in.sh").write_text("#!/bin/sh\nexit 3\n")
    (folder / "out.sh").write_text(WRAPPER_OUTPUT)
    for name in ("in.sh", "out.sh"):
        (folder / name).chmod(0o755)
    path = task_file(
        f"""
        task "w" {{
          input {{ provider_path = "./in.sh" }}
          output {{ provider_path = "./out.sh" }}
          {restart}
        }}
        """
    )
    started = time.monotonic()
    result = run_cli("run", "w", "-f", str(path), timeout=60)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 30, f"attempt {attempt} took too long"
    assert "exited with code 3" in result.stderr
    assert "Traceback" not in result.stderr
    if restart:
        assert "attempt 2 of 3 failed" in result.stderr, result.stderr


def test_growing_the_pipes_of_a_provider_that_already_exited_is_not_an_error() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "true", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for fd in (0, 1):
            pipe = transport.get_pipe_transport(fd)
            assert pipe is not None
            pipe.close()  # as when the child died before dstream got here
        await asyncio.sleep(0)
        _grow_pipes(transport)  # was: ValueError: I/O operation on closed file
        transport.close()

    asyncio.run(scenario())


WHO_AM_I = """#!/bin/sh
read command
echo '{"status":"ready"}'
if [ -w /var/run/docker.sock ] || [ -r /var/run/docker.sock ]; then sock=yes; else sock=no; fi
echo "{\\"data\\":{\\"uid\\":$(id -u),\\"groups\\":\\"$(id -G)\\",\\"socket\\":\\"$sock\\",\\"home\\":\\"$HOME\\"}}"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid change happens only when dstream runs as root")
@pytest.mark.parametrize(("user", "uid"), [(None, NOBODY), ("0", 0), ("1234:1234", 1234)])
def test_a_root_dstream_runs_a_pulled_executable_unprivileged(tmp_path: Path, user: str | None, uid: int) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)  # as the artifact cache: root's own
    plugin = cache / "plugin"
    plugin.write_text(WHO_AM_I)
    plugin.chmod(0o755)
    task_dir = tmp_path / "task"
    task_dir.mkdir(mode=0o700)
    container = {"user": user} if user else {}
    block = ProviderBlock.model_validate({"provider_ref": "example/x:1", "container": container})
    spec = ProviderSpec("input", "t", "r", block, task_dir, executable=str(plugin))

    async def scenario() -> dict[str, object]:
        proc = await LocalRuntime().start(spec, lambda line: None)
        try:
            await proc.write(b'{"command":"run"}\n')
            lines = b""
            while lines.count(b"\n") < 2:
                chunk = await asyncio.wait_for(proc.read(), 10)
                assert chunk, lines
                lines += chunk
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            await proc.cleanup()
        data: dict[str, object] = json.loads(lines.splitlines()[1])["data"]
        return data

    seen = asyncio.run(scenario())
    assert seen["uid"] == uid
    if uid != 0:
        assert seen["groups"] == str(uid)  # no supplementary groups: not the docker group
        assert seen["socket"] == "no"
        assert not Path(str(seen["home"])).exists()  # its private copy is gone after cleanup


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid change happens only when dstream runs as root")
def test_secret_files_every_uid_can_read_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SB_CONN").write_text("Endpoint=sb://x")
    (secrets / "SB_CONN").chmod(0o444)  # Swarm's default mode for a secret
    monkeypatch.setenv("DSTREAM_SECRETS_DIR", str(secrets))
    monkeypatch.setattr("dstream.runtime.local._warned", set())
    plugin = tmp_path / "plugin"
    plugin.write_text("#!/bin/sh\nexit 0\n")
    plugin.chmod(0o755)
    block = ProviderBlock.model_validate({"provider_ref": "example/x:1"})
    spec = ProviderSpec("input", "t", "r", block, tmp_path, executable=str(plugin))

    async def scenario() -> None:
        proc = await LocalRuntime().start(spec, lambda line: None)
        await proc.cleanup()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    assert any("readable by every uid (SB_CONN)" in r.getMessage() for r in caplog.records)
