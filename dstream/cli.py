"""The ``dstream`` command line: thin commands that call one service function each.

Every :class:`~dstream.errors.DStreamError` is caught once, in :func:`main`, printed as
one paragraph on stderr and turned into its exit code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dstream import __version__, log
from dstream.errors import ConfigError, DStreamError

app = typer.Typer(
    name="dstream",
    help="Pipe JSON-line envelopes between provider containers, with checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
state_app = typer.Typer(help="Show or reset a task's stored checkpoint.", no_args_is_help=True)
app.add_typer(state_app, name="state")
providers_app = typer.Typer(help="List, build and push provider images.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")

FileOption = Annotated[
    Path | None, typer.Option("--file", "-f", help="Task file (default: ./dstream.hcl).", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print raw JSON lines instead of a table.")]


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class PullPolicy(str, Enum):
    missing = "missing"
    always = "always"
    never = "never"


class Kind(str, Enum):
    input = "input"
    output = "output"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dstream {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    log_format: Annotated[LogFormat, typer.Option("--log-format", help="Log lines as text or JSON.")] = LogFormat.text,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    log.setup(log_level, log_format.value)


def _load(file: Path | None) -> Any:
    from dstream.config import load

    return load(file)


@app.command()
def lint(
    file: FileOption = None,
    schemas: Annotated[
        bool, typer.Option("--schemas/--no-schemas", help="Also check each config against its provider's schema.")
    ] = True,
) -> None:
    """Check a task file; print each problem as FILE:LINE: message."""
    from dstream.config import check

    document, problems = check(file)
    if schemas and document is not None:  # None exactly when there are problems
        from dstream.schemas import check_document

        problems, notes = check_document(document)
        for note in notes:
            typer.echo(note, err=True)
    for problem in problems:
        typer.echo(problem)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{file or 'dstream.hcl'}: ok", err=True)


@app.command()
def spec(
    ref: Annotated[str, typer.Argument(help="A provider image/artifact reference, catalogue name or path.")],
) -> None:
    """Print a provider's config JSON schema (from its image label or the catalogue), without running it."""
    import json

    from dstream.schemas import SPEC_LABEL, find_schema

    schema, source = find_schema(ref)
    if schema is None:
        raise DStreamError(f"no config schema found for {ref} (no {SPEC_LABEL} label, not in the catalogue)")
    typer.echo(json.dumps(schema, indent=2))
    typer.echo(f"(from {source})", err=True)


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
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background (then: dstream ps, logs, stop).")
    ] = False,
) -> None:
    """Run a task until its input ends or you stop it (Ctrl-C stops gracefully)."""
    from dstream import background
    from dstream.launch import LaunchOptions
    from dstream.runner import run_task

    document = _load(file)
    document.task(task)
    if detach:
        record = background.start(document, task, sys.argv[1:])
        typer.echo(f"task {task} runs in the background (pid {record.pid}); log: {record.log}")
        typer.echo(f"  dstream logs {task} -f  |  dstream stop {task}  |  dstream ps", err=True)
        return
    with background.registered(document, task):
        summary = run_task(
            document,
            task,
            LaunchOptions(pull=pull.value, update_lock=update_lock),
            progress=progress,
            metrics_port=metrics_port,
        )
    how = "stopped" if summary.stopped else "finished"
    log.get().info(
        "task %s %s: %d envelopes (%s) in %.1fs%s%s",
        summary.task,
        how,
        summary.envelopes,
        _size(summary.bytes),
        summary.seconds,
        f", {summary.dead_letters} dead-lettered" if summary.dead_letters else "",
        f", {summary.attempts} attempts" if summary.attempts > 1 else "",
    )


def _lifecycle(verb: str, task: str, file: Path | None, as_json: bool) -> None:
    import asyncio

    from dstream import protocol
    from dstream.lifecycle import json_lines, render_table, run_verb

    document = _load(file)
    outcomes = asyncio.run(run_verb(document, task, verb))
    if as_json:
        for line in json_lines(outcomes):
            sys.stdout.buffer.write(protocol.encode(line))
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console().print(render_table(outcomes, verb, task))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reasons = "; ".join(f"{o.role}: {o.reason}" for o in failed)
        raise DStreamError(f"{verb} failed for task {task}: {reasons}")


@app.command()
def init(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Create what the task's providers need (queues, slots, containers …)."""
    _lifecycle("init", task, file, as_json)


@app.command()
def plan(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Show what init would create or change, without doing it."""
    _lifecycle("plan", task, file, as_json)


@app.command()
def status(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Show the state of the task's infrastructure."""
    _lifecycle("status", task, file, as_json)


@app.command()
def destroy(task: str, file: FileOption = None, as_json: JsonOption = False) -> None:
    """Remove what init created for the task."""
    _lifecycle("destroy", task, file, as_json)


@state_app.command("show")
def state_show(task: str, file: FileOption = None) -> None:
    """Print the task's stored checkpoint (what the next run resumes from)."""
    import json
    import time

    from dstream.state import open_store

    document = _load(file)
    document.task(task)
    store = open_store(document)
    try:
        stored = store.load(task)
    finally:
        store.close()
    if stored is None:
        typer.echo(json.dumps({"task": task, "checkpoint": None, "store": store.location}))
        typer.echo(f"task {task} has no checkpoint yet: the next run starts from the beginning", err=True)
        return
    updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stored.updated_at))
    out = {
        "task": task,
        "checkpoint": stored.checkpoint,
        "run_id": stored.run_id,
        "updated_at": updated,
        "writes": stored.sequence,
        "store": store.location,
    }
    typer.echo(json.dumps(out, indent=2))


@state_app.command("reset")
def state_reset(
    task: str,
    file: FileOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Forget the task's checkpoint: the next run starts from the beginning."""
    from dstream.state import open_store

    document = _load(file)
    document.task(task)
    if not yes:
        if not sys.stdin.isatty():
            raise DStreamError(f"refusing to reset task {task} without confirmation: pass --yes")
        typer.confirm(f"Forget the checkpoint of task {task}? Its next run starts from the beginning", abort=True)
    store = open_store(document)
    try:
        existed = store.reset(task)
    finally:
        store.close()
    typer.echo(f"task {task}: checkpoint {'removed' if existed else 'was already empty'} ({store.location})")


@app.command()
def lock(file: FileOption = None) -> None:
    """Resolve every provider_ref to its registry digest and write dstream.lock."""
    from dstream.distribution.lock import LOCK_FILE
    from dstream.distribution.resolve import lock_document

    document = _load(file)
    rows = lock_document(document)
    for ref, digest, change in rows:
        typer.echo(f"{change:>9}  {ref}  {digest}")
    if not rows:
        typer.echo("no provider_ref in the task file: nothing to lock", err=True)
    else:
        typer.echo(f"wrote {document.base_dir / LOCK_FILE}", err=True)


@app.command()
def ps(as_json: JsonOption = False) -> None:
    """Running tasks on this machine, and the provider containers of dstream runs."""
    from dstream import background, protocol

    runs = [vars(r) for r in background.records()]
    containers: list[dict[str, str]] = []
    try:
        from dstream.runtime.docker import DockerEngine, describe_containers

        containers = describe_containers(DockerEngine())
    except DStreamError as exc:
        log.get().debug("no container listing: %s", exc)
    if as_json:
        sys.stdout.buffer.write(protocol.encode({"runs": runs, "containers": containers}))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if runs:
        table = Table("task", "pid", "started", "file", "log", title="runs", title_justify="left")
        for run_ in runs:
            table.add_row(run_["task"], str(run_["pid"]), run_["started"], run_["file"], run_["log"] or "")
        console.print(table)
    if containers:
        table = Table(
            "task", "run", "role", "container", "image", "status", "dstream", title="containers", title_justify="left"
        )
        for row in containers:
            table.add_row(
                row["task"], row["run_id"], row["role"], row["name"], row["image"], row["status"], row["owner"]
            )
        console.print(table)
    if not runs and not containers:
        typer.echo("no dstream runs or containers", err=True)


@app.command()
def logs(
    task: str,
    file: Annotated[Path | None, typer.Option("--file", help="Task file (default: ./dstream.hcl).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
) -> None:
    """Print the log of a task started with --detach."""
    from dstream import background

    document = None
    with contextlib.suppress(DStreamError):
        document = _load(file)
    path = background.log_path(task, document)

    def out(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    if follow:
        background.follow(path, task, out)
    else:
        out(path.read_bytes())


@app.command()
def stop(
    task: str,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a graceful stop.")] = 60.0,
) -> None:
    """Stop a running task gracefully (SIGTERM: drain, checkpoint, exit)."""
    from dstream import background

    failed = []
    for record, stopped in background.stop(task, timeout):
        if stopped:
            typer.echo(f"stopped task {task} (pid {record.pid})")
        else:
            failed.append(record.pid)
    if failed:
        raise DStreamError(f"task {task} (pid {', '.join(map(str, failed))}) did not stop within {timeout:g}s")


RegistryOption = Annotated[
    str | None, typer.Option("--registry", help="Registry host[:port] (default: $DSTREAM_REGISTRY or the catalogue's).")
]


@providers_app.command("list")
def providers_list(as_json: JsonOption = False) -> None:
    """The provider catalogue: names, images and verbs."""
    from dstream import catalogue, protocol

    entries = catalogue.entries()
    if as_json:
        sys.stdout.buffer.write(protocol.encode([e.to_json() for e in entries]))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "image", "verbs")
    for e in entries:
        table.add_row(e.name, e.kind, e.image(), ",".join(e.verbs))
    Console().print(table)


def _names(names: list[str] | None, all_: bool) -> list[str]:
    from dstream import catalogue

    if all_:
        return [e.name for e in catalogue.entries()]
    if not names:
        raise typer.BadParameter("name a provider, or pass --all")
    return names


@providers_app.command("new")
def providers_new(
    name: Annotated[str, typer.Argument(help="e.g. acme-input-provider")],
    kind: Annotated[Kind, typer.Option("--kind", help="input or output")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the project.")] = Path(),
) -> None:
    """Scaffold a provider project (package, tests, Dockerfile, catalogue entry) that works as generated."""
    from dstream.scaffold import scaffold

    root = scaffold(name, kind.value, directory)
    typer.echo(f"created {root}")
    typer.echo(f"  cd {root} && pip install -e . && python -m pytest tests && dstream test-provider {name}", err=True)


@providers_app.command("build")
def providers_build(
    names: Annotated[list[str] | None, typer.Argument(help="Provider names from the catalogue.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every provider in the catalogue.")] = False,
    registry: RegistryOption = None,
) -> None:
    """docker build a provider image from images/NAME/Dockerfile (base image: $DSTREAM_BASE_IMAGE)."""
    from dstream.images import Builder

    builder = Builder(echo=lambda line: typer.echo(line, err=True))
    builder.rebuild_base = True
    for name in _names(names, all_):
        typer.echo(builder.build(name, registry))


@providers_app.command("push")
def providers_push(
    names: Annotated[list[str] | None, typer.Argument(help="Provider names from the catalogue.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every provider in the catalogue.")] = False,
    registry: RegistryOption = None,
    build: Annotated[
        bool, typer.Option("--build", help="Build (base included) before pushing, even if present.")
    ] = False,
    orchestrator: Annotated[bool, typer.Option("--orchestrator", help="Also the dstream image (for deploy).")] = False,
) -> None:
    """docker push a provider image (building it first if needed); prints the pinned reference."""
    from dstream.images import Builder

    builder = Builder(echo=lambda line: typer.echo(line, err=True))
    builder.rebuild_base = build
    for name in _names(names, all_) if names or all_ or not orchestrator else []:
        typer.echo(builder.push(name, registry, build=build))
    if orchestrator:
        typer.echo(builder.push_orchestrator(registry, build=build))


@app.command("test-provider")
def conformance_cmd(
    ref: Annotated[
        str, typer.Argument(help="A provider image/artifact reference, or an executable (path or PATH name).")
    ],
    config: Annotated[str, typer.Option("--config", help="The provider config, as JSON.")] = "{}",
    kind: Annotated[Kind | None, typer.Option("--kind", help="input or output (default: from its features).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for each answer.")] = 30.0,
    network: Annotated[str | None, typer.Option("--network", help="Container network (e.g. host).")] = None,
) -> None:
    """Run the conformance suite against a provider and print a pass/fail table."""
    import json

    from dstream.conformance import run_suite

    try:
        parsed = json.loads(config)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--config") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter('must be a JSON object, e.g. {"path": "/tmp/x"}', param_hint="--config")
    checks = run_suite(ref, parsed, kind.value if kind else None, timeout, network)
    from rich.console import Console
    from rich.table import Table

    table = Table("check", "result", "detail", title=f"dstream test-provider {ref}", title_justify="left")
    colours = {"pass": "green", "fail": "red", "skip": "yellow"}
    for check in checks:
        table.add_row(check.name, f"[{colours[check.result]}]{check.result}[/]", check.detail)
    Console().print(table)
    failed = [c.name for c in checks if c.result == "fail"]
    if failed:
        raise DStreamError(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}")


class PrintFormat(str, Enum):
    kubernetes = "kubernetes"


@app.command("deploy")
def deploy_cmd(
    task: Annotated[str | None, typer.Argument(help="The task to deploy.")] = None,
    file: FileOption = None,
    replicas: Annotated[int, typer.Option("--replicas", help="Orchestrator replicas (active + standbys).")] = 1,
    image: Annotated[
        str | None, typer.Option("--image", help="The dstream image (default: REGISTRY/dstream/dstream:VERSION).")
    ] = None,
    network: Annotated[str, typer.Option("--network", help="Swarm network of the orchestrators.")] = "host",
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Host directory for SQLite state and file leases.")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List deployed tasks.")] = False,
    print_: Annotated[PrintFormat | None, typer.Option("--print", help="Print manifests instead of deploying.")] = None,
) -> None:
    """Run a task as a Docker Swarm service of dstream orchestrators (or print Kubernetes manifests)."""
    from dstream import deploy
    from dstream.images import orchestrator_image

    if list_:
        rows = deploy.deployments()
        from rich.console import Console
        from rich.table import Table

        table = Table("task", "service", "image", "replicas", "created")
        for row in rows:
            table.add_row(row["task"], row["service"], row["image"], row["replicas"], row["created"])
        Console().print(table)
        return
    if task is None:
        raise typer.BadParameter("name the task to deploy (or pass --list)")
    document = _load(file)
    chosen = image or orchestrator_image()
    if print_ is not None:
        typer.echo(deploy.kubernetes_manifests(document, task, replicas, chosen), nl=False)
        return
    result = deploy.deploy(document, task, replicas, chosen, network=network or None, state_dir=state_dir)
    typer.echo(
        f"deployed {task} as Swarm service {result.service} ({result.replicas} replica(s), image {result.image})"
    )
    if result.secrets:
        typer.echo(f"secrets passed as Swarm secrets: {', '.join(result.secrets)}", err=True)


@app.command()
def undeploy(task: str) -> None:
    """Remove a deployed task: its service, containers, config and secrets."""
    from dstream import deploy

    removed = deploy.undeploy(task)
    typer.echo(
        f"undeployed {task}: {removed['services']} service, {removed['containers']} leftover container(s), "
        f"{removed['configs']} config(s), {removed['secrets']} secret(s)"
    )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _load_secret_files() -> None:
    """In a deployed orchestrator, secrets arrive as files (Swarm/Kubernetes secrets) in
    $DSTREAM_SECRETS_DIR; each becomes the environment variable of its name."""
    folder = os.environ.get("DSTREAM_SECRETS_DIR")
    if not folder or not Path(folder).is_dir():
        return
    for entry in Path(folder).iterdir():
        if entry.is_file() and entry.name.isidentifier() and entry.name not in os.environ:
            os.environ[entry.name] = entry.read_text().rstrip("\n")


def main() -> None:
    _load_secret_files()
    try:
        app()  # standalone: Typer reports usage errors itself and exits
    except DStreamError as exc:
        if isinstance(exc, ConfigError) and len(exc.problems) > 1:
            for problem in exc.problems:
                sys.stderr.write(problem + "\n")
        else:
            sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
