"""Render benchmarks/results/*.json into docs/performance.md (plus benchmarks/analysis.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _container(result: dict[str, Any], key: str, peer_name: str, goal: float) -> list[str]:
    lines = [
        f"| envelope | dstream env/s | dstream MB/s | {peer_name} env/s | {peer_name} MB/s | ratio | goal ≥ {goal} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result["rows"]:
        ours, peer = row["dstream"], row[key]
        lines.append(
            f"| {row['size']} B × {row['envelopes']:,} | {ours['envelopes_per_s']:,} | {ours['mb_per_s']} | "
            f"{peer['envelopes_per_s']:,} | {peer['mb_per_s']} | {row['ratio']} | {_mark(row['ratio'] >= goal)} |"
        )
    return lines


def _jq(jq: dict[str, Any]) -> list[str]:
    venv = unquote(jq.get("venv_binding", ""))
    names = {
        "venv": f"the venv's, built from the sdist with -O2 ({venv})" if "O2" in venv else f"the venv's ({venv})",
        "pypi_wheel": "PyPI's wheel (libjq built without -O2), for comparison",
        "o2_build": "the same jq binding built with -O2",  # results of the earlier benchmark
    }
    out = [
        f"## The jq transform vs the jq CLI ({jq['jq_cli']})",
        "",
        f"`{jq['program']}` over the same {jq['size']} B envelopes ({jq['envelopes']:,}, a checkpoint every 1000),",
        "both writing into the benchmark sink, which times first to last byte. *Alone*: the transform",
        "process reads a file, as `jq -c` does. *Container*: the provider image against Debian's jq CLI",
        "in a container on the same base image, both through `docker run -i` (CPU measured inside).",
        "*Three stages*: dstream, local providers (blast → jq transform → sink) against the OS pipe",
        "`blast | jq -c … | sink`.",
        "",
        "| setting | transform's jq binding | dstream env/s | jq CLI env/s | ratio | CPU µs/envelope (jq CLI) | goal ≥ 1.0 |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    alone = jq.get("alone", {})
    for key, label, peer in (("alone", "alone", "jq_cli"), ("pipeline", "three stages", "os_pipe_jq_cli")):
        rows = jq.get(key, {})
        for name, binding in names.items():
            if name in rows:
                ratio = rows[f"ratio_{name}"]
                cpu = rows[name].get("cpu_us_per_envelope")
                cpu_text = f"{cpu} ({rows[peer]['cpu_us_per_envelope']})" if cpu is not None else ""
                out.append(
                    f"| {label} | {binding} | {rows[name]['envelopes_per_s']:,} | "
                    f"{rows[peer]['envelopes_per_s']:,} | {ratio} | {cpu_text} | {_mark(ratio >= 1.0)} |"
                )
        if key == "alone" and "transform" in jq.get("container", {}):
            box = jq["container"]
            ours, peer_row = box["transform"], box["jq_cli_in_container"]
            out.append(
                f"| container | the image's (wheel tag {box['jq_wheel_tag']}) | {ours['envelopes_per_s']:,} | "
                f"{peer_row['envelopes_per_s']:,} | {box['ratio']} | {ours['cpu_us_per_envelope']} "
                f"({peer_row['cpu_us_per_envelope']}) | {_mark(box['ratio'] >= 1.0)} |"
            )
    out.append("")
    if "skipped" in jq.get("container", {}):
        out.append(f"- container: skipped: {jq['container']['skipped']}")
    for name, binding in names.items():
        if f"cpu_ratio_{name}" in alone:
            out.append(
                f"- CPU time per envelope, alone, with {binding}: {alone[name]['cpu_us_per_envelope']} µs against "
                f"the jq CLI's {alone['jq_cli']['cpu_us_per_envelope']} µs ({alone[f'cpu_ratio_{name}']}×)"
            )
    if "cpu_ratio" in jq.get("container", {}):
        box = jq["container"]
        out.append(
            f"- CPU time per envelope, in containers: {box['cpu_ratio']}× the jq CLI's; throughput "
            f"{box['ratio_to_host_jq_cli']}× the jq CLI run on the host (outside Docker)"
        )
    return [*out, ""]


def _postgres(pg: dict[str, Any]) -> list[str]:
    out = ["## PostgreSQL CDC vs `pg_recvlogical`", ""]
    if "skipped" in pg:
        return [*out, f"- skipped: {pg['skipped']}", ""]
    if "rows" not in pg:  # a result of the earlier benchmark (dstream alone)
        return [*out, f"- {pg['changes']:,} row changes, commit to file: {pg['changes_per_s']:,} changes/s", ""]
    out += [
        f"{pg['detail']}.",
        "",
        "| workload | plugin | changes | dstream changes/s | pg_recvlogical changes/s | ratio | goal ≥ 0.6 |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in pg["rows"]:
        ours, peer = row["dstream"], row["pg_recvlogical"]
        if "ratio" not in row:
            failed = ours.get("failed") or peer.get("failed")
            out.append(
                f"| {row['workload']} | {row.get('plugin', 'wal2json')} | {row['changes']:,} | failed: {failed} | | | |"
            )
            continue
        out.append(
            f"| {row['workload']} | {row.get('plugin', 'wal2json')} | {row['changes']:,} | {ours['changes_per_s']:,} "
            f"| {peer['changes_per_s']:,} "
            f"| {row['ratio']} | {_mark(row['ratio'] >= 0.6)} |"
        )
    out.append("")
    latency = pg.get("latency") or []
    for one in latency if isinstance(latency, list) else [latency]:
        if "failed" in one:
            out.append(f"- latency: failed: {one['failed']}")
            continue
        out.append(
            f"- commit to output at {one['rate_per_s']:,} changes/s ({one['changes']:,} single-row transactions, "
            f"{one['settings']}): p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms, max {one['max_ms']} ms; "
            f"goal p99 < 100 ms: {_mark(one['p99_ms'] < 100)}"
        )
    if latency:
        out.append("")
    return out


def render(data: dict[str, dict[str, Any]]) -> str:
    first = next(iter(data.values()), {})
    machine = first.get("machine", {})
    out = [
        "# Performance",
        "",
        "Measured by `make bench` (`python -m benchmarks.run`), all benchmarks in one run on one machine;",
        "raw results in `benchmarks/results/*.json`. The same standard-library providers",
        "(`benchmarks/providers/blast.py` → `sink.py`) run in every setting, so the only difference",
        "between dstream and its peer is the relay. dstream runs with checkpoints every 1000",
        "envelopes and acknowledgements on.",
        "",
        f"- date: {first.get('date', '?')}{' (quick run)' if first.get('quick') else ''}",
        f"- machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('memory_gb', '?')} GB, "
        f"Linux {machine.get('kernel', '?')}, Python {machine.get('python', '?')}, Docker engine {machine.get('docker', '?')}",
        "",
    ]
    if "container" in data:
        out += ["## Container relay vs `docker run … | docker run -i …`", "", "Both with `--log-driver none`.", ""]
        out += [*_container(data["container"], "docker_pipe", "docker pipe", 1.0), ""]
    if "pipeline" in data:
        pipe = data["pipeline"]
        out += [
            "## Three stages through containers vs three `docker run`s in a pipe",
            "",
            "blast → passthrough transform → sink; the docker pipe runs the same three images with",
            "`--log-driver none`. dstream relays every line twice (input → transform → output) and",
            "checks checkpoint order at the transform.",
            "",
        ]
        out += [*_container(pipe, "docker_pipe", "docker pipe", 1.0), ""]
    if "jq" in data:
        out += _jq(data["jq"])
    if "local" in data:
        out += ["## Local relay (provider_path) vs an OS pipe `blast | sink`", ""]
        out += [*_container(data["local"], "os_pipe", "OS pipe", 0.5), ""]
    if "latency" in data:
        lat = data["latency"]
        out += [
            "## Added latency at 1K envelopes/s",
            "",
            "Time from the input's write to the output's read, per envelope.",
            "",
            "| path | p50 ms | p99 ms |",
            "| --- | ---: | ---: |",
        ]
        for key, label in (
            ("os_pipe", "OS pipe"),
            ("dstream_local", "dstream, local processes"),
            ("docker_pipe", "docker pipe"),
            ("dstream_containers", "dstream, containers"),
        ):
            if key in lat:
                out.append(f"| {label} | {lat[key]['p50_ms']} | {lat[key]['p99_ms']} |")
        for key, label in (("added_dstream_local", "local"), ("added_dstream_containers", "containers")):
            if key in lat:
                added = lat[key]["p99_ms"]
                out.append(
                    f"| **added by dstream ({label})** | {lat[key]['p50_ms']} | {added} ({_mark(added < 1)}, goal < 1 ms) |"
                )
        out.append("")
    if "coldstart" in data:
        cold = data["coldstart"]
        out += [
            "## Cold start",
            "",
            "`dstream run` start to the first envelope at the output, two containers, images cached.",
            "",
            f"- median {cold['median_s']} s over {len(cold['seconds'])} runs ({', '.join(map(str, cold['seconds']))}); "
            f"goal < 1 s: {_mark(cold['median_s'] < 1)}",
            "",
        ]
    if "memory" in data:
        mem = data["memory"]
        flat = mem["last_quarter_mb"] <= mem["second_quarter_mb"] * 1.1
        out += [
            "## Orchestrator memory",
            "",
            f"- {mem['envelopes']:,} envelopes of 100 B through containers at {mem['throughput']['envelopes_per_s']:,}/s",
            f"- peak RSS {mem['peak_mb']} MB; mean {mem['second_quarter_mb']} MB in the second quarter of the run, "
            f"{mem['last_quarter_mb']} MB in the last ({'flat' if flat else 'growing'}); goal flat < 80 MB: "
            f"{_mark(flat and mem['peak_mb'] < 80)}",
            "",
        ]
    if "postgres" in data:
        out += _postgres(data["postgres"])
    analysis = HERE / "analysis.md"
    if analysis.exists():
        out += [analysis.read_text().rstrip(), ""]
    return "\n".join(out)


def write_report(results: Path, target: Path) -> None:
    data = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    order = ["container", "pipeline", "jq", "local", "latency", "coldstart", "memory", "postgres"]
    ordered = {k: data[k] for k in order if k in data}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(ordered))
