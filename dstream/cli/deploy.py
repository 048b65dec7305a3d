"""``deploy`` and ``undeploy``: Docker Swarm services (or Kubernetes manifests)."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from dstream.cli.app import FileOption, app, load_document


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
    from dstream.tooling import deploy
    from dstream.tooling.images import orchestrator_image

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
    document = load_document(file)
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
    from dstream.tooling import deploy

    removed = deploy.undeploy(task)
    typer.echo(
        f"undeployed {task}: {removed['services']} service, {removed['containers']} leftover container(s), "
        f"{removed['configs']} config(s), {removed['secrets']} secret(s)"
    )
