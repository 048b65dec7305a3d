"""The Pulumi engine's program: what it declares for queues, and for a topic with its
subscriptions. The pulumi CLI cannot be installed here, so the program runs under Pulumi's
own mocks (``pulumi.runtime.set_mocks``) with the real ``pulumi-azure-native`` resource
classes when those packages are installed (``pip install 'providers/azure[pulumi]'``, as
.github/workflows/servicebus.yml does), and against a recording stand-in always."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import pytest
from dstream_azure.pulumi_engine import Infrastructure, declare
from dstream_azure.servicebus_admin import EntitySettings

pytestmark = pytest.mark.unit

INFRA = Infrastructure(engine="pulumi", resource_group="rg", namespace="ns")
SETTINGS = EntitySettings(duplicate_window=300, lock_duration=90, max_delivery_count=7, subscriptions=["audit", "bi"])


@dataclass
class Declared:
    kind: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """A stand-in for ``pulumi_azure_native.servicebus``: records what the program declares."""

    def __init__(self) -> None:
        self.declared: list[Declared] = []

    def __getattr__(self, kind: str) -> Any:
        def make(name: str, **args: Any) -> Declared:
            item = Declared(kind, name, args)
            self.declared.append(item)
            return item

        return make


def test_queues_are_declared_with_the_sdk_paths_settings() -> None:
    rec = Recorder()
    declare(rec, INFRA, {"b_events": ["dbo.B"], "a_events": ["dbo.A"]}, SETTINGS, topic=False)
    assert [(d.kind, d.name) for d in rec.declared] == [("Queue", "a_events"), ("Queue", "b_events")]
    args = rec.declared[0].args
    assert args["queue_name"] == "a_events"
    assert (args["namespace_name"], args["resource_group_name"]) == ("ns", "rg")
    assert args["requires_duplicate_detection"] is True
    assert args["duplicate_detection_history_time_window"] == "PT300S"
    assert (args["lock_duration"], args["max_delivery_count"]) == ("PT90S", 7)


def test_a_topic_is_declared_with_its_subscriptions_not_as_a_queue() -> None:
    rec = Recorder()
    declare(rec, INFRA, {"events": ["dbo.A"]}, SETTINGS, topic=True)
    assert [(d.kind, d.name) for d in rec.declared] == [
        ("Topic", "events"),
        ("Subscription", "events/audit"),
        ("Subscription", "events/bi"),
    ]
    topic, audit, _ = rec.declared
    assert topic.args["topic_name"] == "events"
    assert topic.args["requires_duplicate_detection"] is True
    assert audit.args["subscription_name"] == "audit"
    assert audit.args["topic_name"] == "events"  # the topic resource's name: a dependency on it
    assert audit.args["lock_duration"] == "PT90S"


PULUMI = importlib.util.find_spec("pulumi") is not None and importlib.util.find_spec("pulumi_azure_native") is not None


@pytest.mark.skipif(not PULUMI, reason="needs the pulumi and pulumi-azure-native packages (the [pulumi] extra)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pulumi's grpc/asyncio internals
def test_the_program_under_pulumis_mocks_with_the_real_resource_classes() -> None:
    import pulumi
    from pulumi_azure_native import servicebus

    seen: list[tuple[str, str, dict[str, Any]]] = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            seen.append((args.typ, args.name, dict(args.inputs)))
            return f"{args.name}-id", {**args.inputs, "name": args.inputs.get("topicName", args.name)}

        def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
            return {}

    pulumi.runtime.set_mocks(Mocks(), preview=False)
    try:

        @pulumi.runtime.test  # type: ignore[misc]
        def run() -> Any:
            declared = declare(servicebus, INFRA, {"events": []}, SETTINGS, topic=True)
            return pulumi.Output.all(*[d.urn for d in declared])

        run()
    finally:
        pulumi.runtime.settings.configure(pulumi.runtime.Settings(project="p", stack="s"))
    kinds = [(typ, name) for typ, name, _ in seen]
    assert kinds == [
        ("azure-native:servicebus:Topic", "events"),
        ("azure-native:servicebus:Subscription", "events/audit"),
        ("azure-native:servicebus:Subscription", "events/bi"),
    ]
    topic, audit = seen[0][2], seen[1][2]
    assert topic["requiresDuplicateDetection"] is True
    assert topic["duplicateDetectionHistoryTimeWindow"] == "PT300S"
    assert (audit["subscriptionName"], audit["topicName"]) == ("audit", "events")
    assert audit["lockDuration"] == "PT90S"
    assert audit["maxDeliveryCount"] == 7
