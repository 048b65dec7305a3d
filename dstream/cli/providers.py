"""``providers list|new|build|push``, ``spec`` and ``test-provider``: for provider authors."""

from pathlib import Path
from typing import Annotated

import typer

from dstream.cli.app import JsonOption, Kind, app, print_json, providers_app
from dstream.errors import DStreamError


@app.command()
def spec(
    ref: Annotated[str, typer.Argument(help="A provider image/artifact reference, catalogue name or path.")],
) -> None:
    """Print a provider's config JSON schema (from its image label or the catalogue), without running it."""
    import json

    from dstream.tooling.schemas import SPEC_LABEL, find_schema

    schema, source = find_schema(ref)
    if schema is None:
        raise DStreamError(f"no config schema found for {ref} (no {SPEC_LABEL} label, not in the catalogue)")
    typer.echo(json.dumps(schema, indent=2))
    typer.echo(f"(from {source})", err=True)


RegistryOption = Annotated[
    str | None, typer.Option("--registry", help="Registry host[:port] (default: $DSTREAM_REGISTRY or the catalogue's).")
]


@providers_app.command("list")
def providers_list(
    as_json: JsonOption = False,
    wide: Annotated[bool, typer.Option("--wide", "-w", help="Also the image of each provider.")] = False,
) -> None:
    """The provider catalogue: names, kinds and verbs (--wide: images; --json: everything)."""
    from rich.table import Table

    from dstream.cli import tables
    from dstream.tooling import catalogue

    entries = catalogue.entries()
    if as_json:
        print_json({"providers": [e.to_json() for e in entries]})
        return
    table = Table()
    table.add_column("name", no_wrap=True, min_width=tables.whole_width([e.name for e in entries]))
    table.add_column("kind")
    table.add_column("verbs", overflow="fold")
    if wide:
        table.add_column("image", overflow="fold")
    for e in entries:
        table.add_row(e.name, e.kind, ",".join(e.verbs), *([e.image()] if wide else []))
    tables.show(table)


def _names(names: list[str] | None, all_: bool) -> list[str]:
    from dstream.tooling import catalogue

    if all_:
        return [e.name for e in catalogue.entries()]
    if not names:
        raise typer.BadParameter("name a provider, or pass --all")
    return names


@providers_app.command("new")
def providers_new(
    name: Annotated[str, typer.Argument(help="e.g. acme-input-provider")],
    kind: Annotated[Kind, typer.Option("--kind", help="input, transform or output")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the project.")] = Path(),
) -> None:
    """Scaffold a provider project (package, tests, Dockerfile, catalogue entry) that works as generated."""
    from dstream.tooling.scaffold import scaffold

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
    from dstream.tooling.images import Builder

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
    from dstream.tooling.images import Builder

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
    config: Annotated[
        str,
        typer.Option(
            "--config",
            help="The provider config: @FILE (a JSON file), or inline JSON without secrets "
            "(a command line is readable by every local user).",
        ),
    ] = "{}",
    config_env: Annotated[
        str | None, typer.Option("--config-env", help="Read the provider config (JSON) from this environment variable.")
    ] = None,
    kind: Annotated[
        Kind | None, typer.Option("--kind", help="input, transform or output (default: from its handshake).")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for each answer.")] = 30.0,
    network: Annotated[str | None, typer.Option("--network", help="Container network (e.g. host).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the conformance suite against a provider and print a pass/fail table."""
    from dstream.tooling.conformance import provider_config, run_suite

    try:
        parsed = provider_config(config, config_env)
    except DStreamError as exc:
        raise typer.BadParameter(str(exc)) from None  # a usage error: exit code 2
    checks = run_suite(ref, parsed, kind.value if kind else None, timeout, network)
    failed = [c.name for c in checks if c.result == "fail"]
    if as_json:
        rows = [{"name": c.name, "result": c.result, "detail": c.detail} for c in checks]
        print_json({"provider": ref, "passed": not failed, "checks": rows})
        raise typer.Exit(1 if failed else 0)
    from rich.console import Console
    from rich.table import Table

    table = Table("check", "result", "detail", title=f"dstream test-provider {ref}", title_justify="left")
    colours = {"pass": "green", "fail": "red", "skip": "yellow"}
    for check in checks:
        table.add_row(check.name, f"[{colours[check.result]}]{check.result}[/]", check.detail)
    Console().print(table)
    if failed:
        raise DStreamError(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}")
