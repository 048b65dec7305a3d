"""``infrastructure { engine = "pulumi" }``: the same entities, through the Pulumi Automation API.

A thin path: one Pulumi stack per dstream task (``<stack_prefix><task>``) declares, with
``pulumi-azure-native``, a Service Bus queue per wanted queue, or (with ``topic``) the topic
and each of its ``subscriptions``, with the settings ``init`` uses on the SDK path
(duplicate detection on, window, lock duration, delivery count, sessions).
``plan`` previews, ``init`` runs ``up``, ``destroy`` runs ``destroy``, ``status`` reads the
stack's outputs. The stack's state is the ownership record. It needs the ``pulumi`` CLI on
PATH and the ``pulumi`` and ``pulumi-azure-native`` packages
(``pip install 'dstream-azure-providers[pulumi]'``); without the CLI it stops with an
error saying so before doing anything.
"""

from __future__ import annotations

import importlib
import shutil
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from dstream.sdk import ProviderConfig, Resource

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import timedelta

    from dstream_azure.servicebus_admin import EntitySettings

QUEUE_TYPE = "servicebus_queue"
TOPIC_TYPE = "servicebus_topic"


class PulumiUnavailable(RuntimeError):
    pass


class Infrastructure(ProviderConfig):
    engine: Literal["sdk", "pulumi"] = Field(
        default="sdk",
        description='"sdk": the Service Bus administration API (default); "pulumi": Pulumi Automation API',
    )
    resource_group: str | None = Field(default=None, description="pulumi: the namespace's Azure resource group")
    namespace: str | None = Field(default=None, description="pulumi: the Service Bus namespace name")
    project: str = Field(default="dstream-servicebus", description="pulumi: project name")
    stack_prefix: str = Field(default="", description="pulumi: stack name is this prefix plus the task name")
    backend_url: str | None = Field(default=None, description="pulumi: state backend (default: the CLI's login)")


def require_cli(which: Callable[[str], str | None] = shutil.which) -> str:
    path = which("pulumi")
    if path is None:
        raise PulumiUnavailable(
            'infrastructure.engine = "pulumi" needs the pulumi CLI on PATH, and it is not installed '
            "(install it from https://www.pulumi.com/docs/iac/download-install/), or use "
            'engine = "sdk" (the default), which manages the same queues through the Service Bus '
            "administration API"
        )
    return path


def _modules() -> tuple[Any, Any]:
    try:
        auto = importlib.import_module("pulumi.automation")
        servicebus = importlib.import_module("pulumi_azure_native.servicebus")
    except ImportError as exc:
        raise PulumiUnavailable(
            f"the pulumi engine needs the pulumi Python packages ({exc.name} is missing): "
            "pip install 'dstream-azure-providers[pulumi]'"
        ) from None
    return auto, servicebus


def _iso(delta: timedelta) -> str:
    return f"PT{int(delta.total_seconds())}S"


def declare(
    servicebus: Any, infra: Infrastructure, wanted: dict[str, list[str]], settings: EntitySettings, topic: bool
) -> list[Any]:
    """Declare the resources (in a Pulumi program); returns them, for tests and exports."""
    where = {"namespace_name": infra.namespace, "resource_group_name": infra.resource_group}
    window = _iso(settings.window)
    lock = _iso(settings.lock)
    declared: list[Any] = []
    for name in sorted(wanted):
        if not topic:
            declared.append(
                servicebus.Queue(
                    name,
                    queue_name=name,
                    **where,
                    requires_duplicate_detection=True,
                    duplicate_detection_history_time_window=window,
                    max_delivery_count=settings.max_delivery_count,
                    lock_duration=lock,
                    requires_session=settings.requires_session,
                    dead_lettering_on_message_expiration=True,
                )
            )
            continue
        parent = servicebus.Topic(
            name,
            topic_name=name,
            **where,
            requires_duplicate_detection=True,
            duplicate_detection_history_time_window=window,
        )
        declared.append(parent)
        for sub in settings.subscriptions:
            declared.append(
                servicebus.Subscription(
                    f"{name}/{sub}",
                    subscription_name=sub,
                    topic_name=parent.name,
                    **where,
                    max_delivery_count=settings.max_delivery_count,
                    lock_duration=lock,
                    requires_session=settings.requires_session,
                    dead_lettering_on_message_expiration=True,
                )
            )
    return declared


def run(
    verb: str,
    infra: Infrastructure,
    wanted: dict[str, list[str]],
    task: str | None,
    settings: EntitySettings,
    topic: bool = False,
) -> Iterator[Resource]:
    require_cli()
    if not (infra.resource_group and infra.namespace):
        raise PulumiUnavailable("the pulumi engine needs infrastructure.resource_group and infrastructure.namespace")
    if not task:
        raise PulumiUnavailable("the pulumi engine needs the task name (one stack per task)")
    auto, servicebus = _modules()

    kind = TOPIC_TYPE if topic else QUEUE_TYPE
    output = "topics" if topic else "queues"

    def program() -> None:
        pulumi = importlib.import_module("pulumi")
        declare(servicebus, infra, wanted, settings, topic)
        pulumi.export(output, sorted(wanted))

    project = auto.ProjectSettings(
        name=infra.project,
        runtime="python",
        backend=auto.ProjectBackend(url=infra.backend_url) if infra.backend_url else None,
    )
    stack = auto.create_or_select_stack(
        stack_name=f"{infra.stack_prefix}{task}",
        project_name=infra.project,
        program=program,
        opts=auto.LocalWorkspaceOptions(project_settings=project),
    )
    outputs = stack.outputs()
    current = set(outputs[output].value) if output in outputs else set()
    if verb == "plan":
        stack.preview()
        for name in sorted(set(wanted) | current):
            action = "create" if name not in current else "delete" if name not in wanted else "none"
            yield Resource(kind, name, action, "present" if name in current else "absent", {"engine": "pulumi"})
    elif verb == "init":
        stack.up()
        for name in sorted(wanted):
            action = "none" if name in current else "create"
            yield Resource(kind, name, action, "present", {"engine": "pulumi"})
    elif verb == "destroy":
        stack.destroy()
        for name in sorted(current):
            yield Resource(kind, name, "delete", "absent", {"engine": "pulumi"})
    else:
        for name in sorted(set(wanted) | current):
            yield Resource(kind, name, "none", "present" if name in current else "absent", {"engine": "pulumi"})
