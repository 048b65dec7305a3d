"""Providers as containers pulled from the local registry, on the real Docker engine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import build_test_image, task_containers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

COUNTER_CONSOLE = """
task "{name}" {{
  input {{
    {input_source}
    config {{
      interval = 0
      max_count = {count}
      include_timestamp = false
      checkpoint_every = 500
    }}
  }}
  output {{
    {output_source}
    config {{ outputFormat = "jsonl" }}
  }}
}}
"""


def test_counter_to_console_in_containers_matches_local_processes_byte_for_byte(
    task_file: Callable[..., Path], provider_images: dict[str, str], engine: DockerEngine, task_name: str
) -> None:
    containers = task_file(
        COUNTER_CONSOLE.format(
            name=task_name,
            count=3000,
            input_source=f'provider_ref = "{provider_images["counter-input-provider"]}"',
            output_source=f'provider_ref = "{provider_images["console-output-provider"]}"',
        ),
        name="containers.hcl",
    )
    result = run_cli("run", task_name, "-f", str(containers), "--pull", "always")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line)["data"]["value"] for line in lines] == list(range(1, 3001))
    assert task_containers(engine, task_name) == []  # removed when the run ended

    local_dir = containers.parent / "local"
    local_dir.mkdir()
    local = local_dir / "dstream.hcl"
    local.write_text(
        COUNTER_CONSOLE.format(
            name=task_name,
            count=3000,
            input_source='provider_path = "counter-input-provider"',
            output_source='provider_path = "console-output-provider"',
        )
    )
    same = run_cli("run", task_name, "-f", str(local))
    assert same.returncode == 0, same.stderr
    assert same.stdout == result.stdout


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("exit", "exited with code 3 before its handshake"),
        ("garbage", "printed 'Hello from a chatty provider' instead of a handshake"),
        ("hang", "sent no handshake within 3s"),
    ],
)
def test_broken_containers_give_a_clear_error_and_leave_nothing_behind(
    task_file: Callable[..., Path],
    scripted_image: str,
    engine: DockerEngine,
    task_name: str,
    behaviour: str,
    expected: str,
) -> None:
    path = task_file(
        f"""
        task "{task_name}" {{
          handshake_timeout = "3s"
          stop_timeout = "2s"
          input {{
            provider_ref = "{scripted_image}"
            config {{ behaviour = "{behaviour}" }}
          }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    result = run_cli("run", task_name, "-f", str(path), timeout=120)
    assert result.returncode == 1
    assert expected in result.stderr
    assert f"scripted provider starting: behaviour={behaviour}" in result.stderr  # its stderr tail
    assert task_containers(engine, task_name) == []


def test_kill_9_of_dstream_leaves_containers_that_the_next_run_removes(
    task_file: Callable[..., Path], provider_images: dict[str, str], engine: DockerEngine, task_name: str
) -> None:
    text = COUNTER_CONSOLE.replace("interval = 0", "interval = 20")
    sources = {
        "input_source": f'provider_ref = "{provider_images["counter-input-provider"]}"',
        "output_source": f'provider_ref = "{provider_images["console-output-provider"]}"',
    }
    path = task_file(text.format(name=task_name, count=0, **sources))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", task_name, "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline()  # envelopes are flowing through both containers
        assert len(task_containers(engine, task_name)) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = task_containers(engine, task_name)
    assert len(leftovers) == 2  # nothing cleaned them up: dstream was killed

    path.write_text(text.format(name=task_name, count=5, **sources))
    result = run_cli("run", task_name, "-f", str(path))
    assert result.returncode == 0, result.stderr
    for container in leftovers:
        name = str((container.get("Names") or ["?"])[0]).lstrip("/")  # type: ignore[index]
        assert f"removing container {name} left behind by run" in result.stderr
    assert task_containers(engine, task_name) == []


def test_hardening_and_no_secret_in_inspect_labels_or_logs(
    task_file: Callable[..., Path], scripted_image: str, engine: DockerEngine, task_name: str
) -> None:
    canary = "canary-" + task_name + "-Zq9"
    path = task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_ref = "{scripted_image}"
            config {{
              behaviour = "count"
              interval = 0.05
              password = "{canary}"
            }}
            container {{ memory = "512m" }}
          }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", task_name, "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline()
        (container,) = task_containers(engine, task_name)
        inspect = engine.client.api.inspect_container(container["Id"])
        host = inspect["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["ReadonlyRootfs"] is True
        assert "/tmp" in host["Tmpfs"]
        assert host["PidsLimit"] > 0
        assert host["Memory"] == 536870912  # "512m" is 512 MiB, as `docker run -m 512m`
        assert host["Init"] is True  # an init process is PID 1, the provider is not
        assert host["LogConfig"]["Type"] == "none"
        assert host["Privileged"] is False
        assert not host.get("PortBindings")
        assert not any("docker.sock" in str(m) for m in inspect.get("Mounts", []))
        assert inspect["Config"]["User"] not in ("", "root", "0")
        labels = inspect["Config"]["Labels"]
        assert labels["io.dstream.task"] == task_name
        assert labels["io.dstream.role"] == "input"
        assert labels["io.dstream.run-id"]
        assert canary not in json.dumps(inspect)
        logs = subprocess.run(["docker", "logs", container["Id"]], capture_output=True, text=True, check=False)
        assert canary not in logs.stdout + logs.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "config is" in err  # the provider printed its config to stderr...
    assert canary not in err  # ...and dstream redacted the secret in it
    assert '"password": "***"' in err


def test_large_stream_keeps_orchestrator_memory_flat(
    task_file: Callable[..., Path], provider_images: dict[str, str], task_name: str
) -> None:
    path = task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_ref = "{provider_images["counter-input-provider"]}"
            config {{
              interval = 0
              max_count = 1000000
              include_timestamp = false
              payload_bytes = 420
              checkpoint_every = 1000
            }}
          }}
          output {{
            provider_ref = "{provider_images["console-output-provider"]}"
            config {{ outputFormat = "jsonl" }}
          }}
        }}
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", task_name, "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines = 0
    size = 0

    def count() -> None:
        nonlocal lines, size
        assert proc.stdout is not None
        for line in proc.stdout:
            lines += 1
            size += len(line)

    counter = threading.Thread(target=count)
    counter.start()
    rss: list[int] = []
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss.append(watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)  # sampling interval of the measurement, not synchronisation
    counter.join(timeout=60)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert lines == 1_000_000
    assert size / lines > 450  # ~500-byte envelopes
    peak = max(rss)
    assert peak < 150 * 1024 * 1024, f"orchestrator peak RSS {peak / 1e6:.0f} MB"


@pytest.fixture(scope="session")
def bash_image(engine: DockerEngine, registry: str, provider_images: dict[str, str]) -> str:
    """A provider that is a bash loop with no SIGTERM trap (see images/pid1-bash)."""
    return build_test_image(engine, "pid1-bash", f"{registry}/dstream-test/pid1-bash-provider:1")


@pytest.mark.parametrize("init", [True, False])
def test_a_shell_provider_stops_on_sigterm_under_the_default_init(
    task_file: Callable[..., Path], bash_image: str, engine: DockerEngine, task_name: str, init: bool
) -> None:
    setting = "" if init else "container { init = false }"
    path = task_file(
        f"""
        task "{task_name}" {{
          stop_timeout = "15s"
          input {{
            provider_ref = "{bash_image}"
            {setting}
          }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", task_name, "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline()  # data is flowing
        (container,) = task_containers(engine, task_name)
        assert engine.client.api.inspect_container(container["Id"])["HostConfig"]["Init"] is init
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    if init:
        assert took < 10, err  # SIGTERM reached bash through the init process
        assert "did not stop within" not in err
    else:
        assert "did not stop within 15s; killing it" in err  # as PID 1, bash ignored SIGTERM


def test_conformance_says_when_a_provider_stops_only_because_of_init(bash_image: str) -> None:
    result = run_cli("test-provider", bash_image, "--json", "--timeout", "10")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["sigterm"]["result"] == "pass"
    assert "stops only because of the container's init process" in checks["sigterm"]["detail"]
