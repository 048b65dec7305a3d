"""The dstream benchmarks, side by side with what a user would use otherwise, in one run.

    python -m benchmarks.run [--quick] [--only NAME ...]      (make bench)

Results: benchmarks/results/<name>.json, summarised in docs/performance.md.
The same standard-library providers (benchmarks/providers: blast → sink) run in every
setting, so the only difference between dstream and its peer is the relay:

- container: dstream (provider_ref, checkpoints and acks on) vs `docker run … | docker run -i …`
- pipeline:  three stages (blast → passthrough transform → sink) vs three `docker run`s in a pipe
- jq:        the jq transform vs the jq CLI, same program and lines: alone, and as the middle of
             three local stages vs `blast | jq | sink`
- local:     dstream (provider_path) vs an OS pipe `blast | sink`
- latency:   1K envelopes/s stamped at write, read times at the sink; minus a direct pipe
- coldstart: `dstream run` start to the first envelope at the output, images cached
- memory:    orchestrator peak RSS over a 10M-envelope run
- postgres:  PostgreSQL CDC → file, changes/s from commit to file (when the provider exists)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROVIDERS = ROOT / "benchmarks" / "providers"
REGISTRY = os.environ.get("DSTREAM_REGISTRY", "127.0.0.1:5000")
BLAST_IMAGE = f"{REGISTRY}/dstream-bench/blast:1"
SINK_IMAGE = f"{REGISTRY}/dstream-bench/sink:1"
PASSTHROUGH_IMAGE = f"{REGISTRY}/dstream-bench/passthrough:1"
DSTREAM = [sys.executable, "-m", "dstream"]

TASK = """
task "bench" {{
  max_in_flight = 200000
  handshake_timeout = "60s"
  input {{
    {input}
    config {{
      count = {count}
      size = {size}
      checkpoint_every = {every}
      rate = {rate}
    }}
    {input_container}
  }}
  output {{
    {output}
    {output_container}
  }}
}}
"""


def command(count: int, size: int, every: int = 1000, rate: float = 0) -> str:
    cfg = {"count": count, "size": size, "checkpoint_every": every, "rate": rate}
    return json.dumps({"command": "run", "config": cfg})


def parse_report(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        if "BENCH {" in line:
            return dict(json.loads(line[line.index("BENCH ") + 6 :]))
    raise RuntimeError(f"no BENCH report in:\n{stderr[-2000:]}")


def rate_of(report: dict[str, Any], count: int) -> dict[str, float]:
    seconds = max((report["last_ns"] - report["first_ns"]) / 1e9, 1e-9)
    return {
        "seconds": round(seconds, 3),
        "envelopes_per_s": round(count / seconds),
        "mb_per_s": round(report["bytes"] / seconds / 1e6, 1),
    }


def run_dstream(workdir: Path, text: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    hcl = workdir / "dstream.hcl"
    hcl.write_text(text)
    shutil.rmtree(workdir / ".dstream", ignore_errors=True)
    started = time.monotonic()
    proc = subprocess.run(
        [*DSTREAM, "run", "bench", "-f", str(hcl)],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dstream run failed:\n{proc.stderr[-3000:]}")
    return proc.stderr, time.monotonic() - started


def shell(cmd: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-2000:]}")
    return proc.stderr


# -- images -----------------------------------------------------------------------------


def ensure_images() -> None:
    from dstream.runtime.docker import DockerEngine
    from dstream.tooling.images import base_tag

    engine = DockerEngine()
    for name, image in (("blast", BLAST_IMAGE), ("sink", SINK_IMAGE), ("passthrough", PASSTHROUGH_IMAGE)):
        context = Path(tempfile.mkdtemp())
        shutil.copy(PROVIDERS / f"{name}.py", context / f"{name}.py")
        (context / "Dockerfile").write_text(
            "ARG PROVIDER_BASE\nFROM ${PROVIDER_BASE}\n"
            f'COPY {name}.py /opt/{name}.py\nENTRYPOINT ["python3", "/opt/{name}.py"]\n'
        )
        for _ in engine.build(context, image, {"PROVIDER_BASE": base_tag()}, {}):
            pass
        repository, _, tag = image.rpartition(":")
        engine.push(repository, tag, lambda event: None)
        shutil.rmtree(context)


# -- benchmarks -------------------------------------------------------------------------


def _throughput(quick: bool, peer_pipe: str, source: str, sink: str, peer_key: str) -> list[dict[str, Any]]:
    """dstream against ``peer_pipe`` (blast | sink, {cmd} standing for the blast command)."""
    count = 100_000 if quick else 1_000_000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (100, 500, 4096):
            peer_err = shell(f"printf '%s\\n' '{command(count, size)}' | {peer_pipe}")
            peer = rate_of(parse_report(peer_err), count)
            text = TASK.format(
                input=source, output=sink,
                count=count, size=size, every=1000, rate=0, input_container="", output_container="",
            )  # fmt: skip
            err, wall = run_dstream(Path(tmp), text)
            ours = rate_of(parse_report(err), count)
            rows.append(
                {"size": size, "envelopes": count, "dstream": ours, peer_key: peer,
                 "ratio": round(ours["envelopes_per_s"] / peer["envelopes_per_s"], 2), "dstream_wall_s": round(wall, 2)}
            )  # fmt: skip
    return rows


def bench_container(quick: bool) -> dict[str, Any]:
    peer_pipe = (
        f"docker run -i --rm --log-driver none --network none {BLAST_IMAGE} "
        f"| docker run -i --rm --log-driver none --network none -e BENCH_MODE=peer {SINK_IMAGE}"
    )
    rows = _throughput(
        quick, peer_pipe, f'provider_ref = "{BLAST_IMAGE}"', f'provider_ref = "{SINK_IMAGE}"', "docker_pipe"
    )
    return {"goal": "container relay >= 1.0x the docker CLI pipe (checkpoints and acks on)", "rows": rows}


def bench_pipeline(quick: bool) -> dict[str, Any]:
    from benchmarks.pipeline import bench_pipeline as three_stages

    images = {"blast": BLAST_IMAGE, "sink": SINK_IMAGE, "passthrough": PASSTHROUGH_IMAGE}

    def measure(stderr: str, count: int) -> dict[str, float]:
        return rate_of(parse_report(stderr), count)

    return three_stages(quick, images, command, shell, run_dstream, measure)


def bench_jq(quick: bool) -> dict[str, Any]:
    from benchmarks.jq import bench_jq as jq_vs_cli

    def measure(stderr: str, count: int) -> dict[str, float]:
        return rate_of(parse_report(stderr), count)

    return jq_vs_cli(quick, command, shell, run_dstream, measure)


def bench_local(quick: bool) -> dict[str, Any]:
    blast, sink = PROVIDERS / "blast.py", PROVIDERS / "sink.py"
    peer_pipe = f"python3 {blast} | BENCH_MODE=peer python3 {sink}"
    rows = _throughput(quick, peer_pipe, f'provider_path = "{blast}"', f'provider_path = "{sink}"', "os_pipe")
    return {"goal": "local relay >= 0.5x a raw OS pipe", "rows": rows}


def _percentiles(latencies: list[int]) -> dict[str, float]:
    ms = sorted(x / 1e6 for x in latencies)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3),
        "samples": len(ms),
    }


def bench_latency(quick: bool) -> dict[str, Any]:
    count = 2000 if quick else 10_000
    env = {"BENCH_LATENCY": "1"}
    results: dict[str, Any] = {"goal": "p99 added latency < 1 ms at 1K envelopes/s", "rate_per_s": 1000}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = command(count, 200, every=100, rate=1000)
        direct = parse_report(
            shell(
                f"printf '%s\\n' '{cmd}' | python3 {PROVIDERS / 'blast.py'} | BENCH_MODE=peer python3 {PROVIDERS / 'sink.py'}",
                env,
            )
        )
        results["os_pipe"] = _percentiles(direct["latencies_ns"])
        text = TASK.format(
            input=f'provider_path = "{PROVIDERS / "blast.py"}"', output=f'provider_path = "{PROVIDERS / "sink.py"}"',
            count=count, size=200, every=100, rate=1000, input_container="",
            output_container='container { env = { BENCH_LATENCY = "1" } }',
        )  # fmt: skip
        err, _ = run_dstream(Path(tmp), text)
        results["dstream_local"] = _percentiles(parse_report(err)["latencies_ns"])
        docker_err = shell(
            f"printf '%s\\n' '{cmd}' | docker run -i --rm --log-driver none --network none {BLAST_IMAGE} "
            f"| docker run -i --rm --log-driver none --network none -e BENCH_MODE=peer -e BENCH_LATENCY=1 {SINK_IMAGE}"
        )
        results["docker_pipe"] = _percentiles(parse_report(docker_err)["latencies_ns"])
        text = TASK.format(
            input=f'provider_ref = "{BLAST_IMAGE}"', output=f'provider_ref = "{SINK_IMAGE}"',
            count=count, size=200, every=100, rate=1000, input_container="",
            output_container='container { env = { BENCH_LATENCY = "1" } }',
        )  # fmt: skip
        err, _ = run_dstream(Path(tmp), text)
        results["dstream_containers"] = _percentiles(parse_report(err)["latencies_ns"])
    for mode, base in (("dstream_local", "os_pipe"), ("dstream_containers", "docker_pipe")):
        results[f"added_{mode}"] = {
            key: round(results[mode][key] - results[base][key], 3) for key in ("p50_ms", "p99_ms")
        }
    return results


def bench_coldstart(quick: bool) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        text = TASK.format(
            input=f'provider_ref = "{BLAST_IMAGE}"', output=f'provider_ref = "{SINK_IMAGE}"',
            count=1, size=100, every=1, rate=0, input_container="", output_container="",
        )  # fmt: skip
        for _ in range(3 if quick else 7):
            started_ns = time.time_ns()
            err, _ = run_dstream(Path(tmp), text)
            report = parse_report(err)
            runs.append(round((report["first_ns"] - started_ns) / 1e9, 3))
    return {
        "goal": "cold start < 1 s (run start to first envelope at the output, images cached)",
        "seconds": runs,
        "median_s": statistics.median(runs),
    }


def bench_memory(quick: bool) -> dict[str, Any]:
    count = 1_000_000 if quick else 10_000_000
    with tempfile.TemporaryDirectory() as tmp:
        hcl = Path(tmp) / "dstream.hcl"
        hcl.write_text(
            TASK.format(
                input=f'provider_ref = "{BLAST_IMAGE}"',
                output=f'provider_ref = "{SINK_IMAGE}"',
                count=count,
                size=100,
                every=1000,
                rate=0,
                input_container="",
                output_container="",
            )
        )
        proc = subprocess.Popen(
            [*DSTREAM, "run", "bench", "-f", str(hcl)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        watched = psutil.Process(proc.pid)
        samples = []
        while proc.poll() is None:
            try:
                samples.append(watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)  # RSS sampling period
        _, err = proc.communicate()
    report = parse_report(err)
    quarter = max(1, len(samples) // 4)
    return {
        "goal": "flat orchestrator RSS < 80 MB over 10M envelopes",
        "envelopes": count,
        "peak_mb": round(max(samples) / 1e6, 1),
        # The first quarter includes start-up; flat means the second and last quarters agree.
        "second_quarter_mb": round(statistics.mean(samples[quarter : 2 * quarter]) / 1e6, 1),
        "last_quarter_mb": round(statistics.mean(samples[-quarter:]) / 1e6, 1),
        "samples": len(samples),
        "throughput": rate_of(report, count),
    }


def bench_postgres(quick: bool) -> dict[str, Any]:
    try:
        from benchmarks import pg_cdc
    except ImportError:
        return {"skipped": "the PostgreSQL CDC benchmark is not available"}
    return pg_cdc.run(quick)


BENCHMARKS = {
    "container": bench_container,
    "pipeline": bench_pipeline,
    "jq": bench_jq,
    "local": bench_local,
    "latency": bench_latency,
    "coldstart": bench_coldstart,
    "memory": bench_memory,
    "postgres": bench_postgres,
}


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:  # noqa: PTH123
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, check=False
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": docker.stdout.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10x fewer envelopes (a smoke run)")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    if any(n in names for n in ("container", "pipeline", "latency", "coldstart", "memory")):
        print("building the benchmark images", file=sys.stderr)
        ensure_images()
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick}
    for name in names:
        print(f"== {name}", file=sys.stderr)
        started = time.monotonic()
        result = BENCHMARKS[name](args.quick)
        result.update(info, benchmark=name, elapsed_s=round(time.monotonic() - started, 1))
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k not in ("machine",)}, indent=1), file=sys.stderr)
    from benchmarks.report import write_report

    write_report(RESULTS, ROOT / "docs" / "performance.md")


if __name__ == "__main__":
    main()
