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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from dstream_azure.blob_output import AzureBlobOutputProvider, chunks, part_name
from dstream_azure.inputs import Poison, Unsettled, to_envelope_lines
from dstream_azure.naming import NamingError, parse_table, render, servicebus_name, storage_name
from dstream_azure.pulumi_engine import PulumiUnavailable, require_cli
from dstream_azure.queue_output import EnvelopeTooLarge, pack
from dstream_azure.routing import Router, RoutingConfig, RoutingError

from dstream import protocol
from dstream.sdk import Context, Envelope
from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable

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
    # Several plain lines in one message share its id: each says which line it was.
    two = to_envelope_lines('{"a": 1}\n{"a": 2}', {"MessageId": "m"}).split(b"\n")
    assert [json.loads(x)["metadata"] for x in two] == [{"MessageId": "m", "MessageLine": i} for i in (0, 1)]
    with pytest.raises(Poison, match="not JSON"):
        to_envelope_lines("hello", {})
    with pytest.raises(Poison, match="empty"):
        to_envelope_lines("  \n", {})


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
