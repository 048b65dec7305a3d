"""init/plan/destroy decisions: what is enabled, and that destroy touches only what this task
enabled (ownership recorded in extended properties)."""

from __future__ import annotations

from datetime import datetime

import pytest
from dstream_mssql_cdc.catalog import CaptureInstance
from dstream_mssql_cdc.infra import (
    DATABASE_PROPERTY,
    DatabaseInfo,
    SourceTable,
    TableState,
    Tag,
    database_owner,
    instance_tag,
    owner,
    plan_destroy,
    plan_enable,
)

pytestmark = pytest.mark.unit

ON = DatabaseInfo("shop", True, "16.0.4135.4")
OFF = DatabaseInfo("shop", False, "16.0.4135.4")
ORDERS = SourceTable(101, "dbo", "Orders")
CUSTOMERS = SourceTable(202, "dbo", "Customers")
ORDERS_CI = CaptureInstance("dbo_Orders", "dbo", "Orders", 101, 0x2A00000100001, datetime(2024, 5, 1), 901)
CUSTOMERS_CI = CaptureInstance("dbo_Customers", "dbo", "Customers", 202, 0x2A00000100001, datetime(2024, 5, 1), 902)


def tag(table: SourceTable | None, name: str, task: str, change_table_id: int | None = None) -> Tag:
    value: dict[str, object] = {"task": task}
    if change_table_id is not None:
        value["change_table_id"] = change_table_id
    if table is None:
        return Tag(0, "", "", name, value)
    return Tag(table.object_id, table.schema, table.name, name, value)


def rows(plan: object) -> list[tuple[str, str, str, str]]:
    return [(s.resource.type, s.resource.name, s.resource.action, s.resource.state) for s in plan.steps]  # type: ignore[attr-defined]


def test_init_with_enable_cdc_enables_the_database_and_the_tables_without_capture_instance() -> None:
    tables = [TableState("dbo.Orders", ORDERS), TableState("Customers", CUSTOMERS, (CUSTOMERS_CI,))]
    plan = plan_enable(OFF, tables, [], enable=True, task="orders")
    assert plan.problems == []
    assert rows(plan) == [
        ("cdc_database", "shop", "create", "disabled"),
        ("capture_instance", "dbo_Orders", "create", "absent"),
        ("capture_instance", "dbo_Customers", "none", "present"),
    ]
    assert [s.op for s in plan.steps] == ["enable_db", "enable_table", None]
    assert plan.steps[1].table == ORDERS
    assert plan.steps[2].resource.details["owner"] is None  # enabled by someone else


def test_without_enable_cdc_init_reports_what_is_missing_and_how_to_enable_it() -> None:
    tables = [TableState("dbo.Orders", ORDERS), TableState("dbo.Gone", None)]
    plan = plan_enable(OFF, tables, [], enable=False, task="orders")
    assert all(s.op is None for s in plan.steps)
    assert rows(plan) == [
        ("cdc_database", "shop", "none", "disabled"),
        ("capture_instance", "dbo_Orders", "none", "absent"),
        ("table", "dbo.Gone", "none", "absent"),
    ]
    text = "; ".join(plan.problems)
    assert "CDC is not enabled on database shop: set enable_cdc = true" in text
    assert "EXEC sys.sp_cdc_enable_db" in text
    assert "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'Orders'" in text
    assert "table dbo.Gone does not exist" in text


def test_ownership_needs_the_task_and_the_same_change_table() -> None:
    mine = tag(ORDERS, instance_tag("dbo_Orders"), "orders", 901)
    assert owner(ORDERS_CI, [mine]) == "orders"
    recreated = CaptureInstance("dbo_Orders", "dbo", "Orders", 101, 1, None, 977)  # same name, new change table
    assert owner(recreated, [mine]) is None
    assert owner(CUSTOMERS_CI, [mine]) is None
    assert database_owner([tag(None, DATABASE_PROPERTY, "orders")]) == "orders"
    assert database_owner([mine]) is None


def test_destroy_disables_only_what_this_task_enabled() -> None:
    tags = [
        tag(ORDERS, instance_tag("dbo_Orders"), "orders", 901),
        tag(CUSTOMERS, instance_tag("dbo_Customers"), "another-task", 902),
        tag(None, DATABASE_PROPERTY, "orders"),
    ]
    plan = plan_destroy(ON, (ORDERS_CI, CUSTOMERS_CI), tags, ["dbo.Orders", "dbo.Customers"], "orders")
    assert rows(plan) == [
        ("capture_instance", "dbo_Orders", "delete", "absent"),
        ("capture_instance", "dbo_Customers", "none", "present"),
        ("cdc_database", "shop", "none", "enabled"),
    ]
    assert [s.op for s in plan.steps] == ["disable_table", None, None]
    assert plan.steps[0].table == ORDERS
    assert plan.steps[0].instance == "dbo_Orders"
    assert plan.steps[1].resource.details["owner"] == "another-task"
    assert "remain: CDC stays enabled" in plan.steps[2].resource.details["note"]


def test_destroy_disables_the_database_when_this_task_enabled_it_and_nothing_else_remains() -> None:
    tags = [tag(ORDERS, instance_tag("dbo_Orders"), "orders", 901), tag(None, DATABASE_PROPERTY, "orders")]
    plan = plan_destroy(ON, (ORDERS_CI,), tags, ["dbo.Orders"], "orders")
    assert rows(plan) == [
        ("capture_instance", "dbo_Orders", "delete", "absent"),
        ("cdc_database", "shop", "delete", "disabled"),
    ]
    assert [s.op for s in plan.steps] == ["disable_table", "disable_db"]


def test_destroy_leaves_what_others_enabled_and_cleans_up_stale_records() -> None:
    tags = [
        tag(ORDERS, instance_tag("dbo_Orders"), "orders", 555),  # the instance was recreated by someone else
        tag(CUSTOMERS, instance_tag("dbo_Customers_old"), "orders", 777),  # disabled by hand already
    ]
    plan = plan_destroy(ON, (ORDERS_CI, CUSTOMERS_CI), tags, ["Orders"], "orders")
    assert rows(plan) == [
        ("capture_instance", "dbo_Orders", "none", "present"),
        ("capture_instance", "dbo_Customers_old", "none", "absent"),
        ("capture_instance", "dbo_Orders", "none", "present"),
        ("cdc_database", "shop", "none", "enabled"),
    ]
    assert [s.op for s in plan.steps] == ["drop_tag", "drop_tag", None, None]
    assert plan.steps[3].resource.details["note"] == "not enabled by this task: left alone"


def test_destroy_without_a_task_name_touches_nothing() -> None:
    tags = [tag(ORDERS, instance_tag("dbo_Orders"), "orders", 901), tag(None, DATABASE_PROPERTY, "orders")]
    plan = plan_destroy(ON, (ORDERS_CI,), tags, [], "")
    assert all(s.op is None for s in plan.steps)


def test_init_allows_snapshot_isolation_when_the_snapshot_needs_it() -> None:
    tables = [TableState("dbo.Orders", ORDERS, (ORDERS_CI,))]
    plan = plan_enable(ON, tables, [], enable=True, task="orders", snapshots=True)
    assert rows(plan)[:2] == [
        ("cdc_database", "shop", "none", "enabled"),
        ("snapshot_isolation", "shop", "update", "off"),
    ]
    assert plan.steps[1].op == "allow_snapshot"
    on = DatabaseInfo("shop", True, "16.0", snapshot_isolation=True)
    assert rows(plan_enable(on, tables, [], enable=True, task="orders", snapshots=True))[1][2] == "none"
    refused = plan_enable(ON, tables, [], enable=False, task="orders", snapshots=True)
    assert any(
        "SET ALLOW_SNAPSHOT_ISOLATION ON" in p and 'snapshot_isolation = "read_committed"' in p
        for p in refused.problems
    )
    assert [r[0] for r in rows(plan_enable(ON, tables, [], enable=True, task="orders"))] == [
        "cdc_database",
        "capture_instance",
    ]
