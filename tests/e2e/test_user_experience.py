"""The tool around the pipeline: status, metrics, background runs, schemas, scaffolding,
the conformance suite."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli
from tests.faults import finish, wait_until
from tests.terminal import on_a_terminal

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SLOW = """
task "slow" {{
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval = {interval}
      max_count = {count}
      include_timestamp = false
      checkpoint_every = 5
    }}
  }}
  output {{
    provider_path = "console-output-provider"
    config {{ outputFormat = "simple" }}
  }}
}}
"""


def test_status_lines_when_not_on_a_terminal(task_file: Callable[..., Path]) -> None:
    path = task_file(SLOW.format(interval=20, count=120))
    result = run_cli("run", "slow", "-f", str(path), env={"DSTREAM_STATUS_EVERY": "0.5"})
    assert result.returncode == 0, result.stderr
    status = [line for line in result.stderr.splitlines() if "slow running:" in line]
    assert status, result.stderr
    assert "envelopes (" in status[-1]
    assert "checkpoint" in status[-1]
    assert any("input running" in line for line in status)  # provider states, while it ran


def test_live_status_line_on_a_terminal(task_file: Callable[..., Path]) -> None:
    path = task_file(SLOW.format(interval=20, count=100))
    code, text = on_a_terminal(["run", "slow", "-f", str(path)])
    assert code == 0, text[-2000:]
    assert "slow running:" in text  # the live line
    assert "envelopes (" in text
    assert '{"value":100}' in text  # the console output printed above it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in body.splitlines():
        if line.startswith("dstream_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_endpoint_counts_match_what_was_delivered(task_file: Callable[..., Path], tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"data": {"n": n}, "metadata": {}}) + "\n" for n in range(1, 1235)))
    out = tmp_path / "out.jsonl"
    path = task_file(
        f"""
        task "metered" {{
          input {{
            provider_path = "file-input-provider"
            config {{
              path = "{source}"
              follow = true
              poll_interval = 0.1
              checkpoint_every = 100
            }}
          }}
          output {{
            provider_path = "file-output-provider"
            config {{ path = "{out}" }}
          }}
        }}
        """
    )
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", "metered", "-f", str(path), "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: _scrape_ok(port), "the metrics endpoint", proc)
        wait_until(
            lambda: _metrics(port).get('dstream_envelopes_out_total{task="metered"}') == 1234, "1234 delivered", proc
        )
        values = _metrics(port)
        assert values['dstream_envelopes_in_total{task="metered"}'] == 1234
        assert values['dstream_in_flight_envelopes{task="metered"}'] == 0
        assert values['dstream_checkpoints_persisted_total{task="metered"}'] >= 1
        assert values['dstream_state{state="running",task="metered"}'] == 1
        assert len(out.read_text().splitlines()) == 1234
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()


def _scrape_ok(port: int) -> bool:
    try:
        _metrics(port)
    except OSError:
        return False
    return True


def test_detach_ps_logs_stop(task_file: Callable[..., Path], tmp_path: Path) -> None:
    env = {"DSTREAM_RUNS_DIR": str(tmp_path / "runs")}
    path = task_file(SLOW.format(interval=20, count=0))
    started = run_cli("run", "slow", "-f", str(path), "--detach", env=env)
    assert started.returncode == 0, started.stderr
    assert "runs in the background" in started.stdout
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    try:
        _detached_run_checks(path, env, pid)
    finally:
        if _running(pid):  # a failed check must not leave the background run behind
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _detached_run_checks(path: Path, env: dict[str, str], pid: int) -> None:
    wait_until(
        lambda: '{"value":5}' in run_cli("logs", "slow", "--file", str(path), env=env).stdout,
        "the detached run to print",
    )
    listed = json.loads(run_cli("ps", "--json", env=env).stdout)
    (record,) = [r for r in listed["runs"] if r["task"] == "slow"]
    assert record["detached"] is True
    assert record["pid"] == pid
    again = run_cli("run", "slow", "-f", str(path), env=env)  # a second run of the same task is refused
    assert again.returncode == 1
    assert "already running" in again.stderr
    # So is a second detached one: refused at once, not left waiting on the first run's log.
    detached_again = run_cli("run", "slow", "-f", str(path), "--detach", env=env, timeout=30)
    assert detached_again.returncode == 1
    assert "already running" in detached_again.stderr
    stopped = run_cli("stop", "slow", "--json", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"task": "slow", "stopped": [record["pid"]], "not_stopped": []}
    assert json.loads(run_cli("ps", "--json", env=env).stdout)["runs"] == []
    log = run_cli("logs", "slow", "--file", str(path), env=env).stdout
    assert "task slow stopped:" in log


def test_lint_checks_configs_against_provider_schemas(task_file: Callable[..., Path]) -> None:
    path = task_file(
        """
        task "t" {
          input {
            provider_path = "counter-input-provider"
            config {
              interval = "fast"
              max_cout = 3
            }
          }
          output {
            provider_path = "file-output-provider"
            config { fsync = true }
          }
        }
        """
    )
    result = run_cli("lint", "-f", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(
        line.startswith(f"{path}:6:") and "'fast' is not accepted: time between envelopes: milliseconds" in line
        for line in lines
    ), lines
    assert any(line.startswith(f"{path}:7:") and "'max_cout' was unexpected" in line for line in lines), lines
    assert any(line.startswith(f"{path}:12:") and "'path' is a required property" in line for line in lines), lines
    assert run_cli("lint", "-f", str(path), "--no-schemas").returncode == 0


def test_spec_prints_a_providers_schema() -> None:
    result = run_cli("spec", "file-output-provider")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["required"] == ["path"]
    assert "fsync" in schema["properties"]
    missing = run_cli("spec", "no-such-provider")
    assert missing.returncode == 1


@pytest.mark.parametrize("kind", ["input", "transform", "output"])
def test_scaffolded_provider_passes_its_tests_and_the_conformance_suite(
    tmp_path: Path, script: Callable[[str, str], Path], kind: str
) -> None:
    name = f"acme-{kind}-provider"
    created = run_cli("providers", "new", name, "--kind", kind, "--dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    root = tmp_path / name
    assert {p.name for p in root.iterdir()} >= {"pyproject.toml", "Dockerfile", "provider.json", "README.md", "tests"}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    package = name.replace("-", "_")
    executable = script(
        f"run-{name}", f"import sys\nsys.path.insert(0, {str(root)!r})\nfrom {package} import main\nmain()\n"
    )
    configs = {
        "input": {"count": 0, "interval": 0.01},
        "transform": {"drop": ["name"]},
        "output": {"path": str(tmp_path / "o.jsonl")},
    }
    suite = run_cli(
        "test-provider", str(executable), "--config", json.dumps(configs[kind]), "--timeout", "20", "--json"
    )
    assert suite.returncode == 0, suite.stdout + suite.stderr
    results = {c["name"]: c["result"] for c in json.loads(suite.stdout)["checks"]}
    specific = {"input": ["checkpoints", "resume"], "transform": ["transform"], "output": ["acks"]}[kind]
    for check in ["handshake", "invalid config", "sigterm", *specific]:
        assert results[check] == "pass", suite.stdout


def test_conformance_suite_reports_a_non_conforming_provider(script: Callable[[str, str], Path]) -> None:
    sloppy = script(
        "sloppy-output-provider",
        "import json, signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: None)\nsys.stdin.readline()\n"
        'print(json.dumps({"status": "ready", "features": ["ack"]}), flush=True)\n'
        "for line in sys.stdin:\n    pass\ntime.sleep(60)\n",
    )
    suite = run_cli("test-provider", str(sloppy), "--timeout", "3", env={"COLUMNS": "200"})
    assert suite.returncode == 1
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in suite.stdout.splitlines()
        if line.count("│") >= 3
    }
    assert rows["handshake"] == "pass"
    assert rows["acks"] == "fail"  # it never acknowledges
    assert rows["invalid config"] == "fail"  # it accepts anything
    assert rows["sigterm"] == "fail"  # it ignores SIGTERM
    assert "checks failed" in suite.stderr


def test_conformance_suite_fails_a_transform_that_drops_checkpoints(script: Callable[[str, str], Path]) -> None:
    # A plain filter that forwards data and forgets every second checkpoint line.
    lossy = script(
        "lossy-transform-provider",
        "import json, sys\nsys.stdin.readline()\n"
        'print(json.dumps({"status": "ready", "features": ["transform"]}), flush=True)\n'
        "seen = 0\n"
        "for line in sys.stdin:\n"
        "    if '\"checkpoint\"' in line:\n"
        "        seen += 1\n"
        "        if seen % 2 == 0:\n"
        "            continue\n"
        "    sys.stdout.write(line)\n    sys.stdout.flush()\n",
    )
    suite = run_cli("test-provider", str(lossy), "--timeout", "3", "--json")
    assert suite.returncode == 1
    report = json.loads(suite.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert not report["passed"]
    assert checks["transform"]["result"] == "fail"
    assert "checkpoint 1 was not forwarded within 3s" in checks["transform"]["detail"]


STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z ")


def test_logs_tail_and_timestamps_as_docker_logs(task_file: Callable[..., Path], tmp_path: Path) -> None:
    env = {"DSTREAM_RUNS_DIR": str(tmp_path / "runs")}
    path = task_file(SLOW.format(interval=0, count=40))
    started = run_cli("run", "slow", "-f", str(path), "--detach", env=env)
    assert started.returncode == 0, started.stderr
    # -f returns once the run (and its log writer) is done: the whole log, no polling here.
    followed = run_cli("logs", "slow", "--file", str(path), "-f", env=env)
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    values = [line for line in lines if line.startswith('{"value"')]
    assert values == [json.dumps({"value": n}, separators=(",", ":")) for n in range(1, 41)]
    assert not any(STAMP.match(line) for line in lines)  # stored times are shown only with -t
    finished = [line for line in lines if "task slow finished:" in line]
    assert finished, lines
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} INFO ", finished[0])  # detached log lines carry the date

    last = run_cli("logs", "slow", "--file", str(path), "--tail", "3", env=env).stdout.splitlines()
    assert last == lines[-3:]
    stamped = run_cli("logs", "slow", "--file", str(path), "-n", "5", "-t", env=env).stdout.splitlines()
    assert len(stamped) == 5
    assert all(STAMP.match(line) for line in stamped), stamped
    assert [STAMP.sub("", line) for line in stamped] == lines[-5:]
    assert run_cli("logs", "slow", "--file", str(path), "--tail", "0", env=env).stdout == ""
    assert run_cli("logs", "slow", "--file", str(path), "--tail", "x", env=env).returncode == 2


def test_providers_list_shows_whole_names_at_80_columns_and_whole_values_when_piped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dstream.tooling import catalogue

    entries = catalogue.entries()
    monkeypatch.setenv("COLUMNS", "80")
    code, text = on_a_terminal(["providers", "list"])
    assert code == 0, text
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert all(any(f" {e.name} " in line for line in plain.splitlines()) for e in entries), plain
    assert max(len(line.rstrip()) for line in plain.splitlines()) <= 80
    piped = run_cli("providers", "list", "--wide", env={"COLUMNS": "80"})
    assert piped.returncode == 0, piped.stderr
    for e in entries:  # piped, as docker does: nothing is cut, each row on one line
        (row,) = [line for line in piped.stdout.splitlines() if f" {e.name} " in line]
        assert e.image() in row
