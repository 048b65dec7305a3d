"""The jq transform against the jq CLI, on the same program and the same 500 B lines, in one run.

- alone: the transform process alone (`jq-transform-provider`, local) against `jq -c PROGRAM`,
  each reading the same file of envelopes (with a checkpoint every 1000) and writing into the
  benchmark sink, which times first to last byte (so process start-up is not counted);
- container: the same, with the provider image (`docker run -i IMAGE`) as the transform;
- pipeline: dstream's three stages with local providers (blast → jq-transform-provider → sink)
  against the OS pipe `blast | jq -c PROGRAM | sink`.

The venv's jq binding and the image's are built from the sdist with -O2
(dstream/tooling/sourcebuilds.py); PyPI's wheel of the same version, which builds libjq
without optimisation, is measured beside them for comparison (scripts/dev/ensure-jq.sh --bindings).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ROOT / "benchmarks" / "providers"
PYPI_WHEEL = ROOT / "build" / "jq-pypi" / "site"
REGISTRY = os.environ.get("DSTREAM_REGISTRY", "127.0.0.1:5000")
IMAGE = f"{REGISTRY}/dstream/jq-transform-provider:0.1.0"
PROGRAM = "del(.data.pad) | .metadata.Seen = true"
SIZE = 500

PIPELINE_TASK = """
task "bench" {{
  max_in_flight = 200000
  input {{
    provider_path = "{blast}"
    config {{
      count = {count}
      size = {size}
      checkpoint_every = 1000
      rate = 0
    }}
  }}
  transform {{
    provider_path = "{jq}"
    config {{ program = {program} }}
    {container}
  }}
  output {{ provider_path = "{sink}" }}
}}
"""
JQ_CLI_IMAGE = "dstream-bench/jq-cli:1"  # local only: Debian's jq CLI on the provider's base
JQ_CLI_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends jq >/dev/null && rm -rf /var/lib/apt/lists/*
USER 10001:10001
"""
DOCKER_RUN = "docker run -i --rm --log-driver none --network none --entrypoint python3"


def _cpu_wrapper(argv: list[str]) -> str:
    """python3 -c code that runs ``argv`` inside an image and reports its CPU time on stderr
    (images have no shell `time`)."""
    return (
        f"import resource, subprocess, sys; subprocess.run({argv!r}); "
        "r = resource.getrusage(resource.RUSAGE_CHILDREN); print('CPU', r.ru_utime, r.ru_stime, file=sys.stderr)"
    )


def _provider() -> str:
    found = shutil.which("jq-transform-provider", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("jq-transform-provider is not installed in this venv (make venv)")
    return found


def _tools() -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "dev" / "ensure-jq.sh"), "--bindings"], check=True)


def _venv_binding() -> str:
    """How the venv's jq binding was built: from source here, or PyPI's wheel."""
    import importlib.metadata

    text = importlib.metadata.distribution("jq").read_text("direct_url.json") or "{}"
    url = str(json.loads(text).get("url", ""))
    return unquote(url.rsplit("/", 2)[-2]) if "source-wheels" in url else "pypi wheel (unoptimised libjq)"


def _image_binding() -> str | None:
    """The image's jq wheel tag (linux_* = built here, manylinux = PyPI's), or None without the image."""
    probe = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", IMAGE, "-c",
         "import importlib.metadata as m; print(m.distribution('jq').read_text('WHEEL').split('Tag: ')[1].split()[0])"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return probe.stdout.strip() if probe.returncode == 0 else None


def _jq_cli_image() -> None:
    """The jq CLI in a container on the same base, through the same `docker run -i` plumbing."""
    base = os.environ.get("DSTREAM_BASE_IMAGE") or "python:3.12-slim"
    cmd = ["docker", "build", "-q", "-t", JQ_CLI_IMAGE, "--build-arg", f"BASE_IMAGE={base}", "-"]
    subprocess.run(cmd, input=JQ_CLI_DOCKERFILE, capture_output=True, text=True, check=True)


def _timed(
    shell: Callable[..., str],
    inputs: str,
    transform: str,
    sink: str,
    count: int,
    measure: Callable[[str, int], dict[str, float]],
    cpu: Path,
    timed_inside: bool = False,
) -> dict[str, float]:
    """Throughput at the sink, and the CPU time (user + system) of the transform's process
    less its start-up (the same process given no envelopes): on a shared machine the CPU
    time per envelope is the steadier of the two. ``inputs``: the files fed to it, data last.
    ``timed_inside``: the transform reports its own CPU time (a container), else bash times it."""

    def run(feed: str, into: str) -> tuple[str, float]:
        timed = f"{transform} 2>{cpu}" if timed_inside else f"(TIMEFORMAT='CPU %U %S'; time {transform}) 2>{cpu}"
        stderr = shell(f"cat {feed} | {timed} | {into}")
        user, system = cpu.read_text().strip().splitlines()[-1].split()[1:3]
        return stderr, float(user) + float(system)

    stderr, busy = run(inputs, sink)
    _, idle = run(" ".join(inputs.split()[:-1]) or "/dev/null", "cat >/dev/null")
    return {**measure(stderr, count), "cpu_us_per_envelope": round((busy - idle) / count * 1e6, 2)}


def bench_jq(
    quick: bool,
    command: Callable[[int, int], str],
    shell: Callable[..., str],
    run_dstream: Callable[..., tuple[str, float]],
    measure: Callable[[str, int], dict[str, float]],
) -> dict[str, Any]:
    count = 20_000 if quick else 200_000
    _tools()
    provider = _provider()
    sink = f"BENCH_MODE=peer python3 {PROVIDERS / 'sink.py'}"
    bindings = {"venv": ""}
    if any(PYPI_WHEEL.glob("jq*.so")):
        bindings["pypi_wheel"] = str(PYPI_WHEEL)
    results: dict[str, Any] = {
        "goal": "the jq transform >= 1.0x the jq CLI on the same program and 500 B lines",
        "program": PROGRAM,
        "size": SIZE,
        "envelopes": count,
        "jq_cli": subprocess.run(["jq", "--version"], capture_output=True, text=True, check=True).stdout.strip(),
        "venv_binding": _venv_binding(),
    }
    image_binding = _image_binding()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "envelopes.jsonl"
        shell(f"printf '%s\\n' '{command(count, SIZE)}' | python3 {PROVIDERS / 'blast.py'} | tail -n +2 > {data}")
        run_cmd = json.dumps({"command": "run", "config": {"program": PROGRAM}})
        (Path(tmp) / "command.jsonl").write_text(run_cmd + "\n")
        cpu = Path(tmp) / "cpu"
        alone: dict[str, Any] = {"jq_cli": _timed(shell, f"{data}", f"jq -c '{PROGRAM}'", sink, count, measure, cpu)}
        for name, path in bindings.items():
            env = f"PYTHONPATH={path} " if path else ""
            alone[name] = _timed(shell, f"{tmp}/command.jsonl {data}", f"{env}{provider}", sink, count, measure, cpu)
            alone[f"ratio_{name}"] = round(alone[name]["envelopes_per_s"] / alone["jq_cli"]["envelopes_per_s"], 2)
            cpu_ratio = alone["jq_cli"]["cpu_us_per_envelope"] / alone[name]["cpu_us_per_envelope"]
            alone[f"cpu_ratio_{name}"] = round(cpu_ratio, 2)
        results["alone"] = alone
        if image_binding is not None:
            _jq_cli_image()
            cli = _cpu_wrapper(["jq", "-c", PROGRAM])
            ours = _cpu_wrapper(["jq-transform-provider"])
            peer = _timed(shell, f"{data}", f'{DOCKER_RUN} {JQ_CLI_IMAGE} -c "{cli}"', sink, count, measure, cpu,
                          timed_inside=True)  # fmt: skip
            row = _timed(shell, f"{tmp}/command.jsonl {data}", f'{DOCKER_RUN} {IMAGE} -c "{ours}"', sink, count,
                         measure, cpu, timed_inside=True)  # fmt: skip
            results["container"] = {
                "image": IMAGE, "jq_wheel_tag": image_binding, "transform": row, "jq_cli_in_container": peer,
                "ratio": round(row["envelopes_per_s"] / peer["envelopes_per_s"], 2),
                "cpu_ratio": round(peer["cpu_us_per_envelope"] / row["cpu_us_per_envelope"], 2),
                "ratio_to_host_jq_cli": round(row["envelopes_per_s"] / alone["jq_cli"]["envelopes_per_s"], 2),
            }  # fmt: skip
        else:
            results["container"] = {"skipped": f"{IMAGE} is not in the local engine (make images)"}
        peer = f"printf '%s\\n' '{command(count, SIZE)}' | python3 {PROVIDERS / 'blast.py'} | tail -n +2"
        pipeline: dict[str, Any] = {"os_pipe_jq_cli": measure(shell(f"{peer} | jq -c '{PROGRAM}' | {sink}"), count)}
        for name, path in bindings.items():
            container = f'container {{ env = {{ PYTHONPATH = "{path}" }} }}' if path else ""
            text = PIPELINE_TASK.format(
                blast=PROVIDERS / "blast.py", jq=provider, sink=PROVIDERS / "sink.py", count=count, size=SIZE,
                program=json.dumps(PROGRAM), container=container,
            )  # fmt: skip
            err, _ = run_dstream(Path(tmp), text)
            pipeline[name] = measure(err, count)
            rate = pipeline[name]["envelopes_per_s"] / pipeline["os_pipe_jq_cli"]["envelopes_per_s"]
            pipeline[f"ratio_{name}"] = round(rate, 2)
        results["pipeline"] = pipeline
    return results
