"""The Azure providers' logic that needs no server: naming, routing, message ids, batching,
lifecycle diffing, packing, the held-message tracker, the Service Bus providers against
in-memory stand-ins for the SDK clients, the pulumi engine's missing-CLI error, and that
no provider ever prints a connection string's secret."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from azure.servicebus import ServiceBusMessageBatch
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import MessagingEntityNotFoundError
from dstream_azure import lifecycle
from dstream_azure.asb_input import AsbInputProvider
from dstream_azure.asb_output import AsbOutputProvider, QueueMissing
from dstream_azure.blob_output import AzureBlobOutputProvider, chunks, part_name
from dstream_azure.inputs import Poison, Unsettled, to_envelope_lines
from dstream_azure.naming import NamingError, parse_table, render, servicebus_name, storage_name
from dstream_azure.pulumi_engine import PulumiUnavailable, require_cli
from dstream_azure.queue_output import EnvelopeTooLarge, pack
from dstream_azure.routing import Router, RoutingConfig, RoutingError, seconds
from dstream_azure.servicebus import EnvelopeTooLarge as AsbTooLarge
from dstream_azure.servicebus import (
    QueueAdmin,
    admin_client,
    build_message,
    message_id,
    send_batched,
    uses_local_emulator,
)
from pydantic import SecretStr

from dstream import protocol
from dstream.sdk import Checkpoint, Context, Envelope, Raw
from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.unit

FAKE_SB = "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;UseDevelopmentEmulator=true"


def env(data: Any, **metadata: Any) -> Envelope:
    return Envelope(protocol.data(data, metadata).rstrip(b"\n"))


# -- naming ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "schema", "table"),
    [
        ("Orders", "", "Orders"),
        ("dbo.Orders", "dbo", "Orders"),
        ("[dbo].[Orders]", "dbo", "Orders"),
        ('"public"."x"', "public", "x"),
    ],
)
def test_table_names_parse_with_or_without_schema(name: str, schema: str, table: str) -> None:
    ref = parse_table(name)
    assert (ref.schema, ref.table) == (schema, table)


def test_patterns_render_both_upstream_queue_name_styles() -> None:
    ref = parse_table("dbo.Order Items")
    assert servicebus_name(render("{table}_cdc_events", ref)) == "Order-Items_cdc_events"
    kebab = render("{host}-{database}-{table}", ref, host="sql01.corp", database="Sales_DB", case="kebab")
    assert kebab == "sql01-corp-sales-db-order-items"
    assert render("{schema}.{table}", ref, case="lower") == "dbo.order items"


def test_servicebus_names_are_sanitised_and_long_names_stay_unique() -> None:
    assert servicebus_name("__Orders$$events!!") == "Orders-events"
    assert servicebus_name("a.b-c_d") == "a.b-c_d"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(servicebus_name(long_a)) == 260
    assert servicebus_name(long_a) != servicebus_name(long_b)
    with pytest.raises(NamingError):
        servicebus_name("$$$")


def test_storage_names_follow_the_storage_rules() -> None:
    assert storage_name("Orders_cdc_events") == "orders-cdc-events"
    assert storage_name("--A__B--") == "a-b"
    assert len(storage_name("q" * 100)) == 63
    assert storage_name("q" * 100) != storage_name("q" * 99 + "r")
    with pytest.raises(NamingError, match="shorter than 3"):
        storage_name("x_")


def test_unknown_pattern_placeholders_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        RoutingConfig(connection_string="x", queue_name_pattern="{tabel}_events")


@pytest.mark.parametrize(
    ("value", "expected"), [(30, 30.0), ("30s", 30.0), ("10m", 600.0), ("500ms", 0.5), ("1h", 3600.0)]
)
def test_durations(value: Any, expected: float) -> None:
    assert seconds(value) == expected


# -- routing ----------------------------------------------------------------------------------


def router(**config: Any) -> Router:
    return Router(RoutingConfig(connection_string="x", **config), servicebus_name)


def test_routing_by_table_name_with_the_default_pattern() -> None:
    r = router(tables=["dbo.Orders", "dbo.Customers"])
    assert r.wanted() == {"Orders_cdc_events": ["dbo.Orders"], "Customers_cdc_events": ["dbo.Customers"]}
    assert r.route({"TableName": "dbo.Orders"}) == ("Orders_cdc_events", "dbo.Orders")
    assert r.route({"TableName": "Customers"}) == ("Customers_cdc_events", "Customers")
    assert r.route({"table": "Orders"})[0] == "Orders_cdc_events"  # upstream lowercase metadata


def test_a_table_without_schema_takes_the_configured_schema() -> None:
    r = router(tables=["sales.Orders", "dbo.Customers"], queue_name_pattern="{schema}-{table}")
    assert r.route({"TableName": "Orders"})[0] == "sales-Orders"
    assert r.route({"TableName": "hr.Orders"})[0] == "hr-Orders"
    assert r.route({"TableName": "Unknown"})[0] == "Unknown"  # no schema known: the hyphen is trimmed


def test_fixed_queue_and_missing_tables() -> None:
    assert router(queue="all events", tables=["a"]).route({}) == ("all-events", None)
    assert router(queue="q", tables=["a", "b"]).wanted() == {"q": ["a", "b"]}
    with pytest.raises(RoutingError, match=r"no metadata\.TableName"):
        router(tables=["a"]).route({"Other": 1})
    assert router(default_table="misc").route({})[0] == "misc_cdc_events"


def test_group_keeps_order_within_each_target() -> None:
    r = router()
    batch = [env(i, TableName="A" if i % 3 else "B") for i in range(9)]
    groups = r.group(batch)
    assert [e.data for e, _ in groups["A_cdc_events"]] == [1, 2, 4, 5, 7, 8]
    assert [e.data for e, _ in groups["B_cdc_events"]] == [0, 3, 6]


# -- Service Bus messages and batching ---------------------------------------------------------


def test_message_ids_come_from_the_position_and_are_stable() -> None:
    meta = {
        "TableName": "Orders",
        "LSN": "00000027000000a8",
        "Seq": "0001",
        "OperationID": 4,
        "OperationType": "Update",
    }
    raw = protocol.data({"id": 1}, meta)
    first = message_id("Orders", meta, raw)
    assert first == message_id("Orders", dict(reversed(meta.items())), protocol.data({"id": 999}, meta))
    assert len(first) == 32
    before = {**meta, "OperationID": 3}  # the update's before-image: a different message
    assert message_id("Orders", before, raw) != first
    assert message_id("Customers", meta, raw) != first
    assert message_id("Orders", {**meta, "Seq": "0002"}, raw) != first
    # No position: the content decides, whatever the key order or spacing.
    a, b = b'{"data": {"x": 1, "y": 2}}', b'{"data":{"y":2,"x":1}}'
    assert message_id(None, {}, a) == message_id(None, {}, b)
    assert message_id(None, {}, a) != message_id(None, {}, b'{"data":{"x":2}}')
    assert message_id("t", {"Pos": 1}, a, keys=["Pos"]) != message_id("t", {"Pos": 2}, a, keys=["Pos"])


def test_messages_carry_the_envelope_and_its_properties() -> None:
    meta = {"TableName": "dbo.Orders", "OperationType": "Insert", "LSN": "0a", "Seq": 7, "Extra": {"k": 1}}
    raw = protocol.data({"id": 1}, meta).rstrip(b"\n")
    message = build_message(raw, "dbo.Orders", meta)
    assert b"".join(message.body) == raw
    assert message.application_properties == {
        "TableName": "dbo.Orders",
        "OperationType": "Insert",
        "LSN": "0a",
        "Seq": 7,
    }
    assert message.subject == "dbo.Orders"
    assert message.content_type == "application/json"


@dataclass
class FakeSender:
    limit: int
    sent: list[list[bytes]] = field(default_factory=list)
    closed: bool = False

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch:
        return ServiceBusMessageBatch(max_size_in_bytes=max_size_in_bytes or self.limit)

    def send_messages(self, batch: ServiceBusMessageBatch) -> None:
        self.sent.append([b"".join(m.body) for m in batch._messages])

    def close(self) -> None:
        self.closed = True


def test_batching_fills_sdk_batches_in_order_and_rejects_oversized_envelopes() -> None:
    sender = FakeSender(limit=4000)
    raws = [protocol.data({"n": i, "pad": "x" * 200}, {"Sequence": i}).rstrip(b"\n") for i in range(50)]
    sent = send_batched(sender, [build_message(r, None, json.loads(r)["metadata"]) for r in raws])
    assert sent == len(sender.sent) > 2
    assert [raw for batch in sender.sent for raw in batch] == raws  # nothing lost, nothing reordered
    assert all(len(batch) > 1 for batch in sender.sent[:-1])
    huge = protocol.data({"pad": "x" * 5000}).rstrip(b"\n")
    with pytest.raises(AsbTooLarge, match="over the entity's message size limit"):
        send_batched(FakeSender(limit=4000), [build_message(raws[0], None, {}), build_message(huge, None, {})])


# -- Service Bus output against an in-memory client --------------------------------------------


class FakeServiceBusClient:
    def __init__(self, missing: set[str] | None = None) -> None:
        self.senders: dict[str, FakeSender] = {}
        self.missing = missing or set()

    def get_queue_sender(self, queue_name: str) -> Any:
        if queue_name in self.missing:
            return MissingSender()
        return self.senders.setdefault(queue_name, FakeSender(limit=256 * 1024))

    get_topic_sender = get_queue_sender

    def close(self) -> None:
        pass


class MissingSender(FakeSender):
    def __init__(self) -> None:
        super().__init__(limit=1024)

    def send_messages(self, batch: ServiceBusMessageBatch) -> None:
        raise MessagingEntityNotFoundError(message="entity not found")


def asb_output(client: FakeServiceBusClient, **config: Any) -> AsbOutputProvider:
    ctx = Context("test")
    ctx.task = "orders"
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
    orders = [json.loads(raw)["data"]["i"] for b in client.senders["Orders_cdc_events"].sent for raw in b]
    assert orders == [1, 3, 5, 7, 9]
    provider.close()


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


# -- lifecycle diffing ---------------------------------------------------------------------------


@dataclass
class QueueProps:
    name: str
    user_metadata: str | None = None


class FakeAdminClient:
    """ServiceBusAdministrationClient's queue calls, in memory (names are case-insensitive)."""

    def __init__(self, *queues: QueueProps) -> None:
        self.queues = {q.name.lower(): q for q in queues}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def list_queues(self) -> list[QueueProps]:
        return list(self.queues.values())

    def create_queue(self, name: str, **kwargs: Any) -> None:
        self.created.append({"name": name, **kwargs})
        self.queues[name.lower()] = QueueProps(name, kwargs.get("user_metadata"))

    def delete_queue(self, name: str) -> None:
        self.deleted.append(name)
        del self.queues[name.lower()]


def rows(resources: Iterator[Any]) -> dict[str, tuple[str, str]]:
    return {r.name: (r.action, r.state) for r in resources}


def test_servicebus_lifecycle_creates_with_duplicate_detection_and_destroys_only_its_own() -> None:
    owned_elsewhere = QueueProps("Refunds_cdc_events", json.dumps(lifecycle.ownership_metadata("other-task")))
    client = FakeAdminClient(QueueProps("customers_CDC_events"), owned_elsewhere)
    admin = QueueAdmin(client)  # type: ignore[arg-type]
    wanted = router(tables=["dbo.Orders", "dbo.Customers", "Refunds"]).wanted()

    assert rows(lifecycle.plan(admin, wanted, "t")) == {
        "Orders_cdc_events": ("create", "absent"),
        "Customers_cdc_events": ("none", "present"),  # exists with other casing: same queue
        "Refunds_cdc_events": ("none", "present"),
    }
    assert rows(lifecycle.init(admin, wanted, "t")) == {
        "Orders_cdc_events": ("create", "present"),
        "Customers_cdc_events": ("none", "present"),
        "Refunds_cdc_events": ("none", "present"),
    }
    (created,) = client.created
    assert created["requires_duplicate_detection"] is True
    assert created["duplicate_detection_history_time_window"] == timedelta(minutes=10)
    assert json.loads(created["user_metadata"]) == {"dstream_managed_by": "dstream", "dstream_task": "t"}
    assert rows(lifecycle.plan(admin, wanted, "t")) == dict.fromkeys(wanted, ("none", "present"))

    destroyed = rows(lifecycle.destroy(admin, wanted, "t"))
    assert destroyed["Orders_cdc_events"] == ("delete", "absent")
    assert destroyed["Customers_cdc_events"] == ("none", "present")
    assert destroyed["Refunds_cdc_events"] == ("none", "present")
    assert client.deleted == ["Orders_cdc_events"]


def test_lifecycle_needs_the_task_name_to_record_ownership() -> None:
    admin = QueueAdmin(FakeAdminClient())  # type: ignore[arg-type]
    with pytest.raises(lifecycle.LifecycleError, match="did not say which task"):
        list(lifecycle.init(admin, {"q": []}, None))


def test_the_admin_client_speaks_plain_http_to_a_local_emulator_only() -> None:
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
    assert auth.startswith("SharedAccessSignature ")
    assert uses_local_emulator(conn)
    assert not uses_local_emulator(conn.replace("127.0.0.1", "example.servicebus.windows.net"))
    assert not uses_local_emulator(conn.replace("UseDevelopmentEmulator=true", ""))


# -- Storage queue packing and blob blocks ---------------------------------------------------------


def test_packing_respects_the_count_and_the_encoded_size_limit() -> None:
    lines = [orjson.dumps({"data": {"n": i, "s": "<&>" * 10}}) for i in range(100)]
    bodies = pack(lines, 7, "text")
    assert [b.encode() for body in bodies for b in body.split("\n")] == lines
    assert max(len(body.split("\n")) for body in bodies) == 7
    small = pack(lines, 1000, "text", limit=1000)
    assert all(
        len(body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").encode()) <= 1000 for body in small
    )
    b64 = pack(lines, 1000, "base64", limit=1000)
    assert all(len(base64.b64encode(body.encode())) <= 1000 for body in b64)
    assert "\n".join(b64).encode().split(b"\n") == lines
    with pytest.raises(EnvelopeTooLarge, match="64 KiB"):
        pack([b'{"data":"' + b"x" * 70_000 + b'"}'], 1, "text")


def test_blob_blocks_end_at_line_boundaries_and_parts_keep_the_extension() -> None:
    lines = [b"x" * 90 + b"\n" for _ in range(25)]
    blocks = chunks(lines, limit=1000)
    assert b"".join(blocks) == b"".join(lines)
    assert all(block.endswith(b"\n") and len(block) <= 1000 for block in blocks)
    assert part_name("Orders/2026/01/02/03.jsonl", 0) == "Orders/2026/01/02/03.jsonl"
    assert part_name("Orders/2026/01/02/03.jsonl", 2) == "Orders/2026/01/02/03.2.jsonl"
    assert part_name("a.b/noext", 1) == "a.b/noext.1"


def test_blob_names_use_the_table_and_utc_hour() -> None:
    cfg = AzureBlobOutputProvider.Config.model_validate(
        {
            "connection_string": "UseDevelopmentStorage=true",
            "container": "lake",
            "path_pattern": "{schema}/{table}/{date}T{HH}.jsonl",
        }
    )
    provider = AzureBlobOutputProvider(cfg, Context("t"))  # type: ignore[arg-type]
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC).timetuple()
    assert provider.blob_for({"TableName": "dbo.Orders"}, when) == "dbo/Orders/2026-01-02T03.jsonl"
    assert provider.blob_for({"TableName": "../x/y"}, when) == "_/_x_y/2026-01-02T03.jsonl"  # no path injection
    assert provider.blob_for({}, when) == "events/2026-01-02T03.jsonl"


# -- the held-message tracker and message bodies ---------------------------------------------------


def test_unsettled_messages_are_settled_in_receive_order_up_to_the_commit() -> None:
    held: Unsettled[str] = Unsettled()
    seqs = [held.add(m, deadline=100.0 + i, period=30.0) for i, m in enumerate("abcde")]
    assert seqs == [1, 2, 3, 4, 5]
    assert [h.message for h in held.take_upto(3)] == ["a", "b", "c"]
    assert held.take_upto(2) == []
    assert held.any_upto(4)
    assert not held.any_upto(3)
    assert [h.message for h in held.expiring(now=94.0)] == ["d"]  # within a third of its 30 s lock
    assert [h.message for h in held.take_all()] == ["d", "e"]
    assert len(held) == 0


def test_message_bodies_become_envelopes() -> None:
    envelope = b'{"data":{"a":1},"metadata":{"TableName":"T"}}'
    assert to_envelope_lines(envelope.decode(), {}) == envelope
    assert to_envelope_lines(envelope + b"\n" + envelope + b"\n", {}) == envelope + b"\n" + envelope
    wrapped = json.loads(to_envelope_lines('{"plain": true}', {"Queue": "q"}))
    assert wrapped == {"data": {"plain": True}, "metadata": {"Queue": "q"}}
    assert json.loads(to_envelope_lines("[1, 2]", {}))["data"] == [1, 2]
    with pytest.raises(Poison, match="not JSON"):
        to_envelope_lines("hello", {})
    with pytest.raises(Poison, match="empty"):
        to_envelope_lines("  \n", {})


# -- Service Bus input against an in-memory receiver -----------------------------------------------


@dataclass
class Received:
    body: Any
    body_type: AmqpMessageBodyType = AmqpMessageBodyType.DATA
    message_id: str = "m"
    application_properties: dict[bytes, Any] = field(default_factory=dict)
    locked_until_utc: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(seconds=60))


class FakeReceiver:
    def __init__(self, messages: list[Received]) -> None:
        self.pending = list(messages)
        self.completed: list[str] = []
        self.abandoned: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self.renewed: list[str] = []
        self.closed = False

    def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Received]:
        out, self.pending = self.pending[:max_message_count], self.pending[max_message_count:]
        return out

    def complete_message(self, m: Received) -> None:
        self.completed.append(m.message_id)

    def abandon_message(self, m: Received) -> None:
        self.abandoned.append(m.message_id)

    def dead_letter_message(self, m: Received, reason: str, error_description: str) -> None:
        self.dead.append((m.message_id, error_description))

    def renew_message_lock(self, m: Received) -> datetime:
        self.renewed.append(m.message_id)
        return datetime.now(UTC) + timedelta(seconds=60)

    def close(self) -> None:
        self.closed = True


def asb_input(receiver: FakeReceiver, **config: Any) -> AsbInputProvider:
    cfg = AsbInputProvider.Config.model_validate(
        {"connection_string": FAKE_SB, "queue": "q", "max_batch": 2, "max_idle": 0.01, "commit_wait": 0, **config}
    )
    provider = AsbInputProvider(cfg, Context("t"))  # type: ignore[arg-type]
    provider._receiver = receiver
    return provider


def test_asb_input_completes_only_what_was_committed_and_abandons_the_rest() -> None:
    envelope = b'{"data":{"n":1},"metadata":{}}'
    messages = [
        Received([envelope], message_id="env"),
        Received(
            b'{"plain": 2}',
            body_type=AmqpMessageBodyType.VALUE,
            message_id="value",
            application_properties={b"TableName": b"Orders"},
        ),
        Received([b"not json"], message_id="poison"),
        Received([b'{"data":{"n":4}}'], message_id="last"),
    ]
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
    assert receiver.completed == ["env", "value"]
    provider.close()
    assert receiver.abandoned == ["last"]  # stopped without its commit: released at once
    assert receiver.closed


def test_asb_input_renews_locks_that_are_about_to_expire() -> None:
    receiver = FakeReceiver([Received([b'{"data":1}'], message_id="a")])  # locked for 60 s
    provider = asb_input(receiver)
    reader = provider.read(None)
    next(reader)  # the Raw: the message is now held
    provider.renew_due(now=time.monotonic() + 10)
    assert receiver.renewed == []  # 50 s left of 60: not yet
    provider.renew_due(now=time.monotonic() + 45)
    assert receiver.renewed == ["a"]
    reader.close()
    provider.close()


# -- pulumi engine -----------------------------------------------------------------------------------


def test_pulumi_engine_says_the_cli_is_missing() -> None:
    with pytest.raises(PulumiUnavailable, match="needs the pulumi CLI on PATH"):
        require_cli(lambda name: None)
    assert require_cli(lambda name: "/opt/pulumi/bin/pulumi") == "/opt/pulumi/bin/pulumi"


PULUMI_TASK = """
task "asb" {{
  input {{ provider_path = "counter-input-provider" }}
  output {{
    provider_path = "asb-output-provider"
    config {{
      connection_string = "{conn}"
      tables            = ["dbo.Orders"]
      infrastructure {{
        engine         = "pulumi"
        resource_group = "rg"
        namespace      = "ns"
      }}
    }}
  }}
}}
"""


def test_pulumi_engine_missing_cli_through_the_cli(task_file: Callable[..., Path]) -> None:
    hcl = task_file(PULUMI_TASK.format(conn=FAKE_SB))
    bin_dir = str(Path(sys.executable).parent)
    result = run_cli("plan", "asb", "-f", str(hcl), env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.returncode == 1
    assert "needs the pulumi CLI on PATH, and it is not installed" in result.stderr


# -- secrets --------------------------------------------------------------------------------------------


CANARY = base64.b64encode(b"dstream-canary-secret-0123456789").decode()


@pytest.mark.parametrize(
    ("provider", "connection_string", "verb", "extra"),
    [
        (
            "azure-queue-output-provider",
            f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={CANARY};QueueEndpoint=http://127.0.0.1:1/acct;",
            "run",
            {"queue": "events"},
        ),
        ("asb-output-provider", FAKE_SB.replace("c2VjcmV0", CANARY), "plan", {"tables": ["t1"]}),
        ("asb-output-provider", FAKE_SB.replace("c2VjcmV0", CANARY), "run", {"queue": "events"}),
    ],
)
def test_providers_never_print_the_connection_strings_secret(
    provider: str, connection_string: str, verb: str, extra: dict[str, Any]
) -> None:
    config = {"connection_string": connection_string, "retry_total": 0, **extra}
    command = protocol.command_envelope(verb, config, None, "t")
    stdin = command + protocol.data({"n": 1}) + protocol.checkpoint({"n": 1})
    result = subprocess.run(
        [str(Path(sys.executable).with_name(provider))],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "DSTREAM_LOG_LEVEL": "DEBUG"},
    )
    assert result.returncode == 1  # it failed: nothing listens on port 1
    assert b"Connection refused" in result.stderr
    assert CANARY.encode() not in result.stderr
    assert CANARY.encode() not in result.stdout
