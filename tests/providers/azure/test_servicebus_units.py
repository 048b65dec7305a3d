"""asb-output-provider and asb-input-provider logic against in-memory stand-ins for the SDK
(sbfakes.py): messages and batching, broker limits, emulator detection, lifecycle with
ownership (user_metadata or the broker-side ledger), releasing on stop, the pulumi program."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from azure.servicebus.amqp import AmqpMessageBodyType
from dstream_azure import emulator, lifecycle
from dstream_azure.asb_input import AsbInputProvider
from dstream_azure.asb_output import AsbOutputProvider, QueueMissing
from dstream_azure.ledger import LEDGER_TOPIC
from dstream_azure.limits import LimitError
from dstream_azure.naming import servicebus_name
from dstream_azure.routing import Router, RoutingConfig
from dstream_azure.servicebus import EnvelopeTooLarge, TargetSender, build_message, send_batched
from dstream_azure.servicebus_admin import EntitySettings, QueueAdmin, TopicAdmin, admin_client
from pydantic import SecretStr, ValidationError

from dstream import protocol
from dstream.sdk import Checkpoint, Context, Envelope, Raw
from tests.providers.azure.sbfakes import (
    AZURE_SB,
    FAKE_SB,
    Entity,
    FakeAdminClient,
    FakeClock,
    FakeLink,
    FakeReceiver,
    FakeSender,
    FakeServiceBusClient,
    Received,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.unit


def env(data: Any, **metadata: Any) -> Envelope:
    return Envelope(protocol.data(data, metadata).rstrip(b"\n"))


def message(raw: bytes, message_id: str = "id", **kw: Any) -> Any:
    return build_message(raw, None, json.loads(raw).get("metadata", {}), message_id, **kw)


# -- messages and batching -------------------------------------------------------------------------


def test_messages_carry_the_envelope_and_its_properties() -> None:
    meta = {"TableName": "dbo.Orders", "OperationType": "Insert", "LSN": "0a", "Seq": 7, "Extra": {"k": 1}}
    raw = protocol.data({"id": 1}, meta).rstrip(b"\n")
    built = build_message(raw, "dbo.Orders", meta, "the-id", session_id="s1")
    assert b"".join(built.body) == raw
    assert built.application_properties == {"TableName": "dbo.Orders", "OperationType": "Insert", "LSN": "0a", "Seq": 7}
    assert (built.message_id, built.session_id, built.subject) == ("the-id", "s1", "dbo.Orders")
    assert built.content_type == "application/json"


def test_batching_fills_sdk_batches_in_order() -> None:
    sender = FakeSender(limit=4000)
    raws = [protocol.data({"n": i, "pad": "x" * 200}, {"Sequence": i}).rstrip(b"\n") for i in range(50)]
    sent = send_batched(sender, [message(r, f"id{i}") for i, r in enumerate(raws)])
    assert sent == len(sender.sent) > 2
    assert sender.bodies() == raws  # nothing lost, nothing reordered
    assert all(len(batch) > 1 for batch in sender.sent[:-1])


def test_a_message_larger_than_a_batch_goes_alone_in_order_and_the_error_states_the_link_limit() -> None:
    sender = FakeSender(limit=4000, link_limit=100 * 1024 * 1024)  # Premium: 1 MB batches, 100 MB messages
    small = [protocol.data({"n": i}).rstrip(b"\n") for i in range(3)]
    large = protocol.data({"pad": "x" * 10_000}).rstrip(b"\n")
    send_batched(sender, [message(small[0], "a"), message(small[1], "b"), message(large, "L"), message(small[2], "c")])
    assert sender.bodies() == [small[0], small[1], large, small[2]]
    assert sender.sent[1] == [large]  # on its own
    tight = FakeSender(limit=4000, link_limit=8000)
    with pytest.raises(EnvelopeTooLarge, match=r"10\d\d\d bytes is over this entity's message size limit \(8000 bytes"):
        send_batched(tight, [message(large)])


def test_an_entity_that_refuses_batches_gets_single_messages_in_order(caplog: pytest.LogCaptureFixture) -> None:
    sdk = FakeSender(limit=4000, refuse_batches=True)
    target = TargetSender(sdk, "partitioned")
    raws = [protocol.data({"n": i}).rstrip(b"\n") for i in range(5)]
    with caplog.at_level(logging.WARNING):
        target.send([message(r, f"id{i}") for i, r in enumerate(raws)])
        target.send([message(raws[0], "again")])
    assert sdk.sent == [[r] for r in raws] + [[raws[0]]]
    assert "refuses batches of distinct message ids" in caplog.text


# -- asb-output-provider against an in-memory client ---------------------------------------------


def asb_output(client: FakeServiceBusClient, checkpoint: Any = None, **config: Any) -> AsbOutputProvider:
    ctx = Context("test")
    ctx.task = "orders"
    ctx.checkpoint = checkpoint
    cfg = AsbOutputProvider.Config.model_validate({"connection_string": FAKE_SB, **config})
    provider = AsbOutputProvider(cfg, ctx)  # type: ignore[arg-type]
    provider._client = client  # type: ignore[assignment]
    return provider


def test_asb_output_routes_each_table_to_its_queue_in_order() -> None:
    client = FakeServiceBusClient()
    provider = asb_output(client, tables=["dbo.Orders", "dbo.Customers"])
    batch = [env({"i": i}, TableName="dbo.Orders" if i % 2 else "Customers", LSN=f"{i:04x}") for i in range(10)]
    provider.write(batch)
    assert set(client.senders) == {"Orders_cdc_events", "Customers_cdc_events"}
    orders = [json.loads(raw)["data"]["i"] for raw in client.senders["Orders_cdc_events"].bodies()]
    assert orders == [1, 3, 5, 7, 9]
    provider.close()


def test_asb_output_ids_tell_identical_lines_apart_and_repeat_on_a_replay() -> None:
    def ids(checkpoint: Any) -> list[str]:
        client = FakeServiceBusClient()
        sent: list[str] = []
        provider = asb_output(client, checkpoint, queue="q")
        for msgs in provider.messages([env({"x": 1}), env({"x": 1}), env({"x": 2})]).values():
            sent += [m.message_id for m in msgs]
        return sent

    first = ids({"offset": 3})
    assert len(set(first)) == 3
    assert ids({"offset": 3}) == first  # the same attempt again after a crash: the broker drops the copies
    assert ids({"offset": 9}) != first


def test_asb_output_says_how_to_create_a_missing_queue() -> None:
    provider = asb_output(FakeServiceBusClient(missing={"Orders_cdc_events"}), tables=["Orders"])
    with pytest.raises(QueueMissing, match=r"queue Orders_cdc_events does not exist: run `dstream init orders`"):
        provider.write([env(1, TableName="Orders")])


def test_asb_output_creates_a_missing_queue_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeServiceBusClient(missing={"Orders_cdc_events"})
    provider = asb_output(client, create_missing=True)
    created: list[tuple[str, str]] = []

    class Admin:
        client = FakeServiceBusClient()

        def create(self, name: str, task: str) -> bool:
            created.append((name, task))
            client.missing.discard(name)
            return True

    monkeypatch.setattr(provider, "_admin", Admin)
    provider.write([env(1, TableName="Orders")])
    assert created == [("Orders_cdc_events", "orders")]
    assert len(client.senders["Orders_cdc_events"].sent) == 1


# -- broker limits -----------------------------------------------------------------------------------


def config(**settings: Any) -> Any:
    return AsbOutputProvider.Config.model_validate({"connection_string": FAKE_SB, "queue": "q", **settings})


def test_the_duplicate_detection_window_defaults_to_what_the_broker_allows() -> None:
    assert config().entity_settings().duplicate_window == 300  # the emulator's maximum, PT5M
    assert config(connection_string=AZURE_SB).entity_settings().duplicate_window == 600


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"duplicate_detection_window": "10m"}, r"duplicate_detection_window = 10m is outside what the Service Bus "
         r"emulator accepts for DuplicateDetectionHistoryTimeWindow \(5s to 5m, its Config-schema.json\): set it to "
         r"at most 5m"),
        ({"lock_duration": "10m"}, r"lock_duration = 10m is outside .* a queue's LockDuration \(5s to 5m"),
        ({"queue": None, "topic": "t", "subscriptions": ["s"], "lock_duration": "30s"},
         r"a subscription's LockDuration \(1m to 5m"),
        ({"max_delivery_count": 20}, r"MaxDeliveryCount \(1 to 10, its Config-schema.json\)"),
        ({"connection_string": AZURE_SB, "duplicate_detection_window": "10s"},
         r"Azure Service Bus \(Standard and Premium\) accepts for DuplicateDetectionHistoryTimeWindow \(20s to 7d"),
        ({"connection_string": AZURE_SB, "duplicate_detection_window": "8d"}, r"set it to at most 7d"),
        ({"subscriptions": ["s"]}, "subscriptions are created on a topic"),
    ],
)  # fmt: skip
def test_settings_outside_the_brokers_limits_are_config_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**settings)


def test_a_valid_window_passes_and_the_admin_connection_decides_the_broker() -> None:
    assert config(duplicate_detection_window="5m").entity_settings().duplicate_window == 300
    # Data on the emulator, management on Azure (or the other way round): the admin string decides.
    assert config(admin_connection_string=AZURE_SB, duplicate_detection_window="10m").entity_settings()


# -- the emulator's connection strings and management API -----------------------------------------


def test_the_emulator_is_recognised_exactly_as_the_sdk_does() -> None:
    assert emulator.is_emulator("Endpoint=sb://x;usedevelopmentemulator=true;")  # the key: any case
    assert not emulator.is_emulator("Endpoint=sb://x;UseDevelopmentEmulator=True")  # the value: "true" only
    assert not emulator.is_emulator("Endpoint=sb://x;UseDevelopmentEmulator=TRUE;")
    assert not emulator.is_emulator(AZURE_SB)


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "[::1]", "servicebus-emulator", "sb-emulator", "host.docker.internal", "emulator",
     "192.168.1.20", "10.0.0.5", "sb.local", "sb.ci.internal"],
)  # fmt: skip
def test_plain_http_goes_to_the_emulators_documented_hosts(host: str) -> None:
    assert emulator.plain_http(
        f"Endpoint=sb://{host}:5300;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
    )


def test_an_emulator_connection_string_for_a_public_host_is_refused() -> None:
    conn = "Endpoint=sb://example.servicebus.windows.net;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
    with pytest.raises(emulator.EmulatorError, match="not a local or container host"):
        emulator.plain_http(conn)
    with pytest.raises(ValidationError, match="not a local or container host"):
        config(connection_string=conn)
    assert not emulator.plain_http(AZURE_SB)  # a real namespace: TLS, as always


def test_the_admin_client_speaks_plain_http_and_the_emulators_api_version() -> None:
    seen: list[tuple[str, str]] = []
    feed = b'<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Queues</title><id>q</id></feed>'

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(200)
            self.send_header("Content-Type", "application/atom+xml")
            self.send_header("Content-Length", str(len(feed)))
            self.end_headers()
            self.wfile.write(feed)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = f"Endpoint=sb://127.0.0.1:{server.server_port};SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
        with admin_client(SecretStr(conn), retry_total=0) as client:
            assert list(client.list_queues()) == []
    finally:
        server.shutdown()
    ((path, auth),) = seen
    assert path.startswith("/$Resources/queues")
    assert "api-version=2021-05" in path  # the emulator samples' version, not the SDK's newer default
    assert auth.startswith("SharedAccessSignature ")


# -- lifecycle with ownership ----------------------------------------------------------------------


def router(**config: Any) -> Router:
    return Router(RoutingConfig(connection_string="x", **config), servicebus_name)


def rows(resources: Iterator[Any]) -> dict[str, tuple[str, str]]:
    return {r.name: (r.action, r.state) for r in resources}


def owned(task: str) -> str:
    return json.dumps(lifecycle.ownership_metadata(task))


@pytest.mark.parametrize("keeps_user_metadata", [True, False], ids=["azure", "broker-drops-user-metadata"])
def test_lifecycle_creates_with_duplicate_detection_and_destroys_exactly_its_own(keeps_user_metadata: bool) -> None:
    client = FakeAdminClient(
        Entity("customers_CDC_events", None),
        Entity("Refunds_cdc_events", owned("other-task")),
        keeps_user_metadata=keeps_user_metadata,
    )
    admin = QueueAdmin(client, EntitySettings(duplicate_window=300))  # type: ignore[arg-type]
    other = QueueAdmin(client, EntitySettings())  # type: ignore[arg-type]
    wanted = router(tables=["dbo.Orders", "dbo.Customers", "Refunds", "Archive"]).wanted()
    list(lifecycle.init(other, {"Archive_cdc_events": ["Archive"]}, "other-task"))  # another task's queue

    assert rows(lifecycle.plan(admin, wanted, "t")) == {
        "Orders_cdc_events": ("create", "absent"),
        "Customers_cdc_events": ("none", "present"),  # exists with other casing: same queue
        "Refunds_cdc_events": ("none", "present"),
        "Archive_cdc_events": ("none", "present"),
    }
    list(lifecycle.init(admin, wanted, "t"))
    created = [c for c in client.created if c["name"] == "Orders_cdc_events"]
    assert created[0]["requires_duplicate_detection"] is True
    assert created[0]["duplicate_detection_history_time_window"] == timedelta(minutes=5)
    assert json.loads(created[0]["user_metadata"]) == {"dstream_managed_by": "dstream", "dstream_task": "t"}
    plan = {r.name: r.details for r in lifecycle.plan(QueueAdmin(client), wanted, "t")}  # type: ignore[arg-type]
    assert plan["Orders_cdc_events"]["managed_by"] == "this task"  # from user_metadata, or the ledger
    assert plan["Archive_cdc_events"]["managed_by"] == "task other-task"
    assert plan["Customers_cdc_events"]["managed_by"] == "not created by dstream"
    assert (LEDGER_TOPIC in client.topics) is not keeps_user_metadata

    destroyed = rows(lifecycle.destroy(QueueAdmin(client), wanted, "t"))  # type: ignore[arg-type]
    assert destroyed["Orders_cdc_events"] == ("delete", "absent")
    assert {destroyed[n] for n in ("Customers_cdc_events", "Refunds_cdc_events", "Archive_cdc_events")} == {
        ("none", "present")
    }
    assert client.deleted == ["Orders_cdc_events"]
    after = {r.name: r.details for r in lifecycle.plan(QueueAdmin(client), wanted, "t")}  # type: ignore[arg-type]
    assert after["Archive_cdc_events"]["managed_by"] == "task other-task"  # its record is kept


def test_plan_and_init_warn_about_an_existing_queue_without_duplicate_detection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeAdminClient(Entity("Orders_cdc_events", None, requires_duplicate_detection=False))
    admin = QueueAdmin(client)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        (row,) = lifecycle.plan(admin, {"Orders_cdc_events": ["Orders"]}, "t")
        (init_row,) = lifecycle.init(admin, {"Orders_cdc_events": ["Orders"]}, "t")
    assert "duplicate detection is off" in row.details["warning"]
    assert "duplicate detection is off" in init_row.details["warning"]
    assert "a replay after a crash will leave duplicate messages" in caplog.text


def test_a_topic_is_created_with_its_subscriptions_and_the_ledger_is_no_topic_of_the_task() -> None:
    client = FakeAdminClient(keeps_user_metadata=False)
    settings = EntitySettings(duplicate_window=300, lock_duration=60, subscriptions=["audit", "billing"])
    admin = TopicAdmin(client, settings)  # type: ignore[arg-type]
    assert rows(lifecycle.init(admin, {"events": []}, "t")) == {"events": ("create", "present")}
    subs = {c["name"]: c for c in client.created if c["kind"] == "subscription" and not c["name"].startswith("dstream")}
    assert set(subs) == {"events/audit", "events/billing"}
    assert subs["events/audit"]["lock_duration"] == timedelta(minutes=1)
    assert set(TopicAdmin(client, settings).existing()) == {"events"}  # type: ignore[arg-type]
    assert rows(lifecycle.destroy(TopicAdmin(client, settings), {"events": []}, "t")) == {  # type: ignore[arg-type]
        "events": ("delete", "absent")
    }
    assert client.list_subscriptions(LEDGER_TOPIC) == []


def test_init_refuses_a_basic_namespace() -> None:
    admin = QueueAdmin(FakeAdminClient(sku="Basic"))  # type: ignore[arg-type]
    with pytest.raises(LimitError, match="Basic tier, which has no duplicate detection"):
        admin.check_namespace(AZURE_SB)
    QueueAdmin(FakeAdminClient(sku="Premium")).check_namespace(AZURE_SB)  # type: ignore[arg-type]


def test_lifecycle_needs_the_task_name_to_record_ownership() -> None:
    admin = QueueAdmin(FakeAdminClient())  # type: ignore[arg-type]
    with pytest.raises(lifecycle.LifecycleError, match="did not say which task"):
        list(lifecycle.init(admin, {"q": []}, None))


# -- asb-input-provider against an in-memory receiver ----------------------------------------------


def asb_input(receiver: FakeReceiver, **config: Any) -> AsbInputProvider:
    cfg = AsbInputProvider.Config.model_validate(
        {"connection_string": FAKE_SB, "queue": "q", "max_batch": 2, "max_idle": 0.01, "commit_wait": 0, **config}
    )
    provider = AsbInputProvider(cfg, Context("t"))  # type: ignore[arg-type]
    provider._receiver = receiver
    return provider


def test_asb_input_completes_only_what_was_committed_and_releases_the_rest() -> None:
    envelope = b'{"data":{"n":1},"metadata":{}}'
    messages = [
        Received([envelope], message_id="env", _delivery_id=1),
        Received(b'{"plain": 2}', body_type=AmqpMessageBodyType.VALUE, message_id="value", _delivery_id=2,
                 application_properties={b"TableName": b"Orders"}),
        Received([b"not json"], message_id="poison", _delivery_id=3),
        Received([b'{"data":{"n":4}}'], message_id="last", _delivery_id=4),
    ]  # fmt: skip
    receiver = FakeReceiver(messages)
    provider = asb_input(receiver)
    items = list(provider.read(None))
    raws = [i for i in items if isinstance(i, Raw)]
    assert raws[0].line == envelope
    assert json.loads(raws[1].line) == {"data": {"plain": 2}, "metadata": {"MessageId": "value", "TableName": "Orders"}}
    assert [(mid, why[:9]) for mid, why in receiver.dead] == [("poison", "not JSON:")]
    checkpoints = [i.position for i in items if isinstance(i, Checkpoint)]
    assert checkpoints[-1]["seq"] == 3
    assert receiver.completed == []  # nothing is settled before dstream commits
    provider.on_committed({"run": "another run", "seq": 3})
    assert receiver.completed == []  # never settle on a position from elsewhere
    provider.on_committed({**checkpoints[0]})
    assert provider.wait_settled(timeout=10)  # completions run off the read loop
    assert receiver.completed == ["env", "value"]
    provider.close()
    # Stopped without its commit: released (no delivery counted), not abandoned.
    assert receiver.settled == [(4, b"tag", "released")]
    assert receiver.abandoned == []
    assert receiver.closed


def test_asb_input_abandons_what_it_cannot_release() -> None:
    receiver = FakeReceiver([Received([b'{"data":1}'], message_id="a")], link_works=False)
    provider = asb_input(receiver)
    list(provider.read(None))
    provider.close()
    assert receiver.settled == []
    assert receiver.abandoned == ["a"]


def test_the_private_release_path_is_in_the_installed_sdk() -> None:
    """Row 5: ``released`` uses ReceiveClient.settle_messages (private; read in 7.14.0-7.15.0). An SDK
    without it must fail here, not silently abandon on every stop (which counts deliveries)."""
    import inspect

    from azure.servicebus._pyamqp.client import ReceiveClient
    from dstream_azure import servicebus

    assert servicebus.RELEASE_AVAILABLE
    params = list(inspect.signature(ReceiveClient.settle_messages).parameters)
    assert params[:4] == ["self", "delivery_id", "delivery_tag", "outcome"]


def test_asb_input_abandons_when_the_sdk_has_no_release_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from dstream_azure import servicebus

    monkeypatch.setattr(servicebus, "RELEASE_AVAILABLE", False)
    receiver = FakeReceiver([Received([b'{"data":1}'], message_id="a")])
    provider = asb_input(receiver)
    list(provider.read(None))
    provider.close()
    assert receiver.settled == []
    assert receiver.abandoned == ["a"]


def test_a_message_is_never_released_through_a_link_it_did_not_come_on() -> None:
    """Delivery ids belong to one link: after the receiver reconnects, the old id names another message."""
    receiver = FakeReceiver([Received([b'{"data":1}'], message_id="a")])
    provider = asb_input(receiver)
    list(provider.read(None))
    receiver._handler = FakeLink(receiver)  # the SDK opened a new link (a reconnect)
    provider.close()
    assert receiver.settled == []
    assert receiver.abandoned == ["a"]


def test_held_message_locks_are_renewed_on_a_timer_while_the_read_loop_is_blocked() -> None:
    """Row 6: the output is slow (the read loop sits in a yield) for ten lock durations; a timer keeps
    the held messages' locks, so their completion after the commit succeeds."""
    clock = FakeClock()
    receiver = FakeReceiver(
        [Received([b'{"data":1}'], message_id="a"), Received([b'{"data":2}'], message_id="b")],
        clock=clock,
        lock_duration=10,
    )
    provider = asb_input(receiver)
    provider.timer = False
    provider.message_locks.utcnow = clock.utcnow
    clock.every(1.0, provider.message_locks.tick)
    reader = provider.read(None)
    items = [next(reader) for _ in range(3)]  # two messages and their checkpoint: now held
    clock.advance(5)
    assert receiver.renewed == []  # half the lock left: not yet
    clock.advance(100)  # the read loop is blocked downstream all this time
    assert receiver.renewed.count("a") >= 10
    checkpoint = items[-1]
    assert isinstance(checkpoint, Checkpoint)
    provider.on_committed(checkpoint.position)
    assert provider.wait_settled(timeout=10)
    assert receiver.completed == ["a", "b"]  # the locks held: nothing comes again
    renewals = len(receiver.renewed)
    clock.advance(100)
    assert len(receiver.renewed) == renewals  # completed: no longer renewed
    reader.close()
    provider.close()


def test_azure_lock_durations_are_checked_against_the_documented_maximum_only() -> None:
    assert config(connection_string=AZURE_SB, lock_duration="1s").entity_settings().lock_duration == 1
    with pytest.raises(ValidationError, match=r"a queue's LockDuration \(up to 5m, Microsoft's"):
        config(connection_string=AZURE_SB, lock_duration="6m")


# -- the emulator's quotas (overview-emulator.md, "Usage quotas") -----------------------------------


def test_the_emulators_connection_and_subscription_quotas_are_checked_before_the_broker_refuses() -> None:
    input_config = AsbInputProvider.Config.model_validate
    base = {"connection_string": FAKE_SB, "queue": "q", "sessions": "next"}
    assert input_config({**base, "max_sessions": 9}).max_sessions == 9  # 9 session receivers + 1 accepting
    with pytest.raises(ValidationError, match=r"max_sessions = 10 needs 11 connections; .* at most 10"):
        input_config({**base, "max_sessions": 10})
    assert input_config({**base, "connection_string": AZURE_SB, "max_sessions": 50}).max_sessions == 50
    with pytest.raises(ValidationError, match=r"51 subscriptions; .* at most 50 per topic"):
        AsbOutputProvider.Config.model_validate(
            {"connection_string": FAKE_SB, "topic": "t", "subscriptions": [f"s{i}" for i in range(51)]}
        ).entity_settings()
    client = FakeServiceBusClient()
    provider = asb_output(client)
    provider.write([env({"i": i}, TableName=f"T{i}", LSN="1", Seq=i) for i in range(10)])  # 10 senders: the quota
    with pytest.raises(LimitError, match=r"routing to 11 queues needs 11 connections"):
        provider.write([env({"i": 10}, TableName="T10", LSN="1", Seq=10)])
    assert len(client.senders) == 10
