"""``run``, ``logs``, ``stop``, ``ps``: running tasks."""

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dstream import log
from dstream.cli.app import FileOption, JsonOption, PullPolicy, app, load_document, print_json
from dstream.errors import DStreamError

if TYPE_CHECKING:
    from dstream.task.runner import RunSummary


@app.command()
def run(
    task: Annotated[str, typer.Argument(help="The task to run.")],
    file: FileOption = None,
    pull: Annotated[PullPolicy, typer.Option(help="When to pull provider images.")] = PullPolicy.missing,
    update_lock: Annotated[
        bool, typer.Option("--update-lock", help="Accept registry digests that differ from dstream.lock.")
    ] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Live status line (default: on a terminal).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics and /healthz on this port.")
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            envvar="DSTREAM_METRICS_HOST",
            help="Address the metrics endpoint listens on (0.0.0.0: every interface).",
        ),
    ] = "127.0.0.1",
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background (then: dstream ps, logs, stop).")
    ] = False,
) -> None:
    """Run a task until its input ends or you stop it (Ctrl-C stops gracefully)."""
    from dstream.task import detach as detaching
    from dstream.task import runs
    from dstream.task.foreground import run_task
    from dstream.task.launch import LaunchOptions
    from dstream.task.statusline import human_size
    from dstream.tooling.lint import refuse_invalid_configs

    document = load_document(file)
    refuse_invalid_configs(document, task)  # before anything starts, as lint would say
    if detach:
        record = detaching.start(document, task, sys.argv[1:])
        typer.echo(f"task {task} runs in the background (pid {record.pid}); log: {record.log}")
        typer.echo(f"  dstream logs {task} -f  |  dstream stop {task}  |  dstream ps", err=True)
        return
    with runs.registered(document, task):
        summary = run_task(
            document,
            task,
            LaunchOptions(pull=pull.value, update_lock=update_lock, progress=progress),
            progress=progress,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
    how = "stopped" if summary.stopped else "finished"
    log.get().info(
        "task %s %s: %s envelopes (%s) in %.1fs%s%s%s",
        summary.task,
        how,
        f"{summary.envelopes:,}",
        human_size(summary.bytes),
        summary.seconds,
        f", {summary.dead_letters:,} dead-lettered" if summary.dead_letters else "",
        f", {summary.attempts} attempts" if summary.attempts > 1 else "",
        _per_stage(summary),
    )
    if summary.resumed and not summary.stopped and not summary.envelopes:
        log.get().info(
            "nothing new: the input ended where the last run's checkpoint left it. "
            "To read it again from the start: dstream state reset %s",
            summary.task,
        )


@app.command()
def ps(
    as_json: JsonOption = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not cut values to fit the terminal.")] = False,
) -> None:
    """Running tasks on this machine, and the provider containers of dstream runs."""
    from dstream.task.runs import records

    runs = [vars(r) for r in records()]
    containers: list[dict[str, str]] = []
    try:
        from dstream.runtime.docker import DockerEngine
        from dstream.runtime.leftovers import describe_containers

        containers = describe_containers(DockerEngine())
    except DStreamError as exc:
        log.get().debug("no container listing: %s", exc)
    if as_json:
        print_json({"runs": runs, "containers": containers})
        return
    from rich.table import Table

    from dstream.cli import tables

    if runs:
        table = Table("task", "pid", "started", "file", "log", title="runs", title_justify="left")
        for run_ in runs:
            table.add_row(run_["task"], str(run_["pid"]), run_["started"], run_["file"], run_["log"] or "")
        tables.show(table, no_trunc)
    if containers:
        table = Table(
            "task", "run", "role", "container", "image", "status", "dstream", title="containers", title_justify="left"
        )
        for row in containers:
            table.add_row(
                row["task"], row["run_id"], row["role"], row["name"], row["image"], row["status"], row["owner"]
            )
        tables.show(table, no_trunc)
    if not runs and not containers:
        typer.echo("no dstream runs or containers", err=True)


@app.command()
def logs(
    task: str,
    file: Annotated[
        Path | None, typer.Option("--file", envvar="DSTREAM_FILE", help="Task file (default: ./dstream.hcl).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    tail: Annotated[
        str, typer.Option("--tail", "-n", help="Number of lines to show from the end of the log, or all.")
    ] = "all",
    timestamps: Annotated[
        bool, typer.Option("--timestamps", "-t", help="Show the time each line was written (RFC 3339, UTC).")
    ] = False,
) -> None:
    """Print the log of a task started with --detach (as docker logs)."""
    from dstream.task import logs as run_logs

    if tail != "all" and not (tail.isdigit()):
        raise typer.BadParameter("a number of lines, or all", param_hint="--tail")
    document = None
    with contextlib.suppress(DStreamError):
        document = load_document(file)
    path = run_logs.log_path(task, document)

    def out(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    run_logs.show(path, out, None if tail == "all" else int(tail), timestamps, follow)


@app.command()
def stop(
    task: str,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a graceful stop.")] = 60.0,
    as_json: JsonOption = False,
) -> None:
    """Stop a running task gracefully (SIGTERM: drain, checkpoint, exit)."""
    from dstream.task import runs

    failed, stopped_pids = [], []
    for record, stopped in runs.stop(task, timeout):
        if stopped:
            stopped_pids.append(record.pid)
            if not as_json:
                typer.echo(f"stopped task {task} (pid {record.pid})")
        else:
            failed.append(record.pid)
    if as_json:
        print_json({"task": task, "stopped": stopped_pids, "not_stopped": failed})
    if failed:
        raise DStreamError(f"task {task} (pid {', '.join(map(str, failed))}) did not stop within {timeout:g}s")


def _per_stage(summary: "RunSummary") -> str:
    """What each transform did and what reached the output, when that differs from what the
    input read: "; transform-1: 4 in, 3 out (1 filtered); the output got 3"."""
    roles = list(summary.stages)
    if not roles:
        return ""
    read = previous = summary.stages[roles[0]]
    parts = []
    for role in roles[1:]:
        out = summary.stages[role]
        rejected = summary.stage_dead_letters.get(role, 0)
        dropped = previous - out - rejected
        notes = [f"{dropped:,} filtered" if dropped > 0 else f"{-dropped:,} added" if dropped < 0 else ""]
        notes.append(f"{rejected:,} dead-lettered" if rejected else "")
        said = ", ".join(n for n in notes if n)
        parts.append(f"{role}: {previous:,} in, {out:,} out" + (f" ({said})" if said else ""))
        previous = out
    if previous == read and not parts:
        return ""
    return "; " + "; ".join([*parts, f"the output got {previous:,}"])
